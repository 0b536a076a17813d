"""``python -m segment.analysis report <sweep>``: (re)write a study's report
(segment/analysis/report.py; also ``python -m segment.analysis.report <sweep>``), and ``python -m
segment.analysis export <sweep> <dest> [--merge]``: a sweep's run files, ready to travel
(segment/analysis/export.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segment.analysis import report
from segment.analysis.export import export


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segment.analysis")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("report", help="(re)write a study's report.md and figures")
    command.add_argument("sweep", type=Path, help="a multirun folder")
    command = commands.add_parser("export", help="copy a sweep's run files, machine paths replaced")
    command.add_argument("sweep", type=Path, help="a multirun folder")
    command.add_argument("dest", type=Path, help="where the copy goes: a new or empty folder")
    command.add_argument(
        "--merge", action="store_true", help="add to a folder that holds files (none replaced)"
    )
    args = parser.parse_args(argv)
    if args.command == "report":
        return report.main([str(args.sweep)])
    try:
        folders = export(args.sweep, args.dest, merge=args.merge)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {len(folders)} run folders to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
