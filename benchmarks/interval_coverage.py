"""How often the report's 95% intervals cover the true ratio, by simulation: the report's method
and, for the record, the re-selecting percentile bootstrap it replaced.

    python benchmarks/interval_coverage.py [--studies 1000] [--resamples 500]

The simulated studies are tests/test_coverage.py's (the study's design, a known log-normal model
near the committed CamVid study, ties on the validation grid, runs censored at a cap). No training;
about a minute.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_coverage import LEVELS, SEEDS, _coverage, _study, _true_log_means  # noqa: E402


def _bootstrap_tuned(
    slow, fast, resamples: int, generator: np.random.Generator
) -> tuple[float, float]:
    """The replaced method: resample seeds with replacement, choose both rates again (lowest median
    time), take the percentile interval of the geometric-mean ratio."""
    universe = sorted({s for cells in (slow, fast) for c in cells for s in c.times})

    def best(cells, picked):
        medians = [
            np.median(
                [c.times[s][0] if c.times[s][1] else np.inf for s in picked if s in c.times]
                or [np.inf]
            )
            for c in cells
        ]
        return cells[int(np.argmin(medians))]

    draws = []
    for _ in range(resamples):
        picked = [universe[i] for i in generator.integers(0, len(universe), len(universe))]
        a, b = best(slow, picked), best(fast, picked)
        logs = [
            math.log(a.times[s][0] / b.times[s][0]) for s in picked if s in a.times and s in b.times
        ]
        if logs:
            draws.append(np.mean(logs))
    low, high = np.exp(np.percentile(draws, [2.5, 97.5]))
    return float(low), float(high)


def bootstrap_coverage(studies: int, resamples: int) -> float:
    generator, hits, total = np.random.default_rng(20261206), 0, 0
    truths = {
        level: (_true_log_means(s, sd), _true_log_means(f, sd))
        for level, (s, f, sd) in LEVELS.items()
    }
    for _ in range(studies):
        for level, (true_slow, true_fast) in truths.items():
            slow, fast = _study(generator, level, None)
            low, high = _bootstrap_tuned(slow, fast, resamples, generator)
            hits += low <= math.exp(true_slow.min() - true_fast.min()) <= high
            total += 1
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument(
        "--resamples", type=int, default=500, help="bootstrap resamples per interval"
    )
    args = parser.parse_args()
    print(
        f"# coverage of 95% intervals over {args.studies} simulated studies (seeds per rate: "
        f"{SEEDS})\n"
    )
    print("| method | runs | interval | covered |\n|---|---|---|---|")
    for rho, runs in ((None, "independent"), (-0.6, "paired, rho -0.6"), (0.5, "paired, rho 0.5")):
        for kind, (hits, total) in _coverage(rho, args.studies).items():
            print(
                f"| pooled t (the report's) | {runs} | {kind} | {hits / total:.1%} of {total} |",
                flush=True,
            )
    share = bootstrap_coverage(args.studies, args.resamples)
    print(f"| re-selecting percentile bootstrap (replaced) | independent | tuned | {share:.1%} |")


if __name__ == "__main__":
    main()
