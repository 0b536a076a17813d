"""``python -m segment.models fetch hed|imagenet``: download and convert encoder weights for offline
use."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from segment.models.weights import resolve_encoder_weights


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segment.models", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and convert weights into the local caches")
    fetch.add_argument("source", choices=["hed", "imagenet"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _, record = resolve_encoder_weights(args.source, fallback=False)
    except (RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.source}: {record.detail} (sha256 {record.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
