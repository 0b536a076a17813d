"""How often the report's 95% intervals cover the true ratio, cell by cell, and how wide they are:
tests/test_coverage.py's simulated studies (the committed CamVid design, each cell's mean and
spread as estimated from docs/results/camvid_study), read through the report's own code path.

    python benchmarks/interval_coverage.py [--studies 1000] [--cases "all together" ...]

Prints one markdown table: per case, per cell (a fixed rate, or each arm at its best rate) and per
headline level, the share of intervals that held the true ratio and their median width (high /
low). No training; about 30 s per case on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_coverage import CASES, LEVELS, coverage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    print(f"# coverage of 95% intervals, {args.studies} simulated studies per case\n")
    levels = " | ".join(f"val/loss <= {level:g}" for level in LEVELS)
    print(f"| case | cell | {levels} |\n|---|---|" + "---|" * len(LEVELS))
    for name in args.cases:
        table = coverage(CASES[name], args.studies)
        for cell in ("1e-4", "3e-4", "1e-3", "3e-3", "tuned"):
            found = table.get(cell, {})
            texts = [
                f"{found[level][0] / found[level][1]:.1%} (x{found[level][2]:.2f})"
                if level in found
                else "-"
                for level in LEVELS
            ]
            label = "best rates" if cell == "tuned" else f"at {cell}"
            print(f"| {name} | {label} | " + " | ".join(texts) + " |", flush=True)


if __name__ == "__main__":
    main()
