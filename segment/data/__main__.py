"""``python -m segment.data check data=<name> [overrides]``: validate and summarise a dataset."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from segment.build import build_data
from segment.config.compose import compose_train
from segment.data.check import check_datamodule


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``check [hydra overrides]``; prints the report; exit code 1 on any problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: python -m segment.data check data=<name> [key=value ...]", file=sys.stderr)
        return 2
    report = check_datamodule(build_data(compose_train(argv[1:])))
    print(report.to_markdown())
    if report.problems:
        print(f"\n{len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"\n{report.name}: no problems in {sum(report.counts.values())} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
