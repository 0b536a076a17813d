"""The report's intervals cover the true ratio as often as they claim, at the seed counts people
run.

1,000 simulated studies of the study's own design (4 rates x 2 arms, 5 seeds at two rates and 3 at
the other two, three levels), from a known log-normal model near the committed CamVid study:
crossings on the quarter-epoch grid of 4 validations per epoch (ties) and runs capped at 25 epochs
(censored). No training: each study is the cells the report's statistics read.
benchmarks/interval_coverage.py prints the same measurement, and the percentile bootstrap's, which
fails it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from segment.analysis.stats import Cell, Family, compare, tuned

RATES = (1e-4, 3e-4, 1e-3, 3e-3)
SEEDS = (5, 3, 5, 3)
CAP = 25.0
# geometric-mean epochs per rate (scratch, pretrained) and the spread of log-epochs, per level
LEVELS = {
    1.0: ((5.4, 3.5, 2.9, 2.4), (4.0, 2.2, 1.5, 2.0), 0.30),
    0.7: ((9.7, 6.5, 7.0, 11.4), (6.9, 4.2, 3.2, 4.2), 0.15),
    0.5: ((19.8, 14.2, 13.2, 21.1), (13.5, 8.8, 6.2, 10.1), 0.12),
}


def _grid(epochs: np.ndarray) -> np.ndarray:
    """The validation that first shows it: every quarter epoch."""
    return np.ceil(epochs * 4) / 4


def _true_log_means(means: tuple[float, ...], sd: float) -> np.ndarray:
    """E[log epochs] per rate on the validation grid (what the cell means estimate), uncapped."""
    draws = np.random.default_rng(1).standard_normal(400_000)
    return np.array([np.log(_grid(np.exp(math.log(m) + sd * draws))).mean() for m in means])


def _study(generator: np.random.Generator, level: float, rho: float | None):
    """One simulated study at one level: the two arms' cells per rate (paired by seed with
    correlation ``rho``, or None: independent runs of unknown data order)."""
    slow_means, fast_means, sd = LEVELS[level]
    slow, fast = [], []
    for rate, n, ms, mf in zip(RATES, SEEDS, slow_means, fast_means, strict=True):
        z1 = generator.standard_normal(n)
        z2 = generator.standard_normal(n)
        if rho is not None:
            z2 = rho * z1 + math.sqrt(1 - rho**2) * z2
        cells = []
        for mean, z in ((ms, z1), (mf, z2)):
            epochs = _grid(np.exp(math.log(mean) + sd * z))
            times = {seed: (min(t, CAP), bool(t <= CAP)) for seed, t in enumerate(epochs)}
            order = {seed: ("v2", seed) for seed in times} if rho is not None else {}
            cells.append(Cell(times, order, rate))
        slow.append(cells[0])
        fast.append(cells[1])
    return slow, fast


def _coverage(rho: float | None, studies: int = 1000) -> dict[str, tuple[int, int]]:
    """Hits and intervals per kind: fixed-rate at 3 and at 5 seeds, tuned."""
    generator = np.random.default_rng(20261206)
    counts = {"fixed, 3 seeds": [0, 0], "fixed, 5 seeds": [0, 0], "tuned": [0, 0]}
    truths = {
        level: (_true_log_means(s, sd), _true_log_means(f, sd))
        for level, (s, f, sd) in LEVELS.items()
    }
    for _ in range(studies):
        for level, (true_slow, true_fast) in truths.items():
            slow, fast = _study(generator, level, rho)
            family = Family([*slow, *fast])
            for i, n in enumerate(SEEDS):
                estimate = compare(slow[i], fast[i], family)
                if estimate is not None and np.isfinite(estimate.low):
                    truth = math.exp(true_slow[i] - true_fast[i])
                    counts[f"fixed, {n} seeds"][0] += estimate.low <= truth <= estimate.high
                    counts[f"fixed, {n} seeds"][1] += 1
            estimate = tuned(slow, fast, family)
            if estimate is not None and np.isfinite(estimate.low):
                truth = math.exp(true_slow.min() - true_fast.min())
                counts["tuned"][0] += estimate.low <= truth <= estimate.high
                counts["tuned"][1] += 1
    return {kind: (hits, total) for kind, (hits, total) in counts.items()}


@pytest.mark.parametrize(
    "rho", [None, -0.6, 0.5], ids=["independent runs", "paired, rho -0.6", "paired, rho 0.5"]
)
def test_intervals_cover_the_true_ratio_at_3_and_5_seeds(rho: float | None) -> None:
    coverage = _coverage(rho)
    for kind, (hits, total) in coverage.items():
        share = hits / total
        assert total > 0.95 * 1000 * (3 if kind == "tuned" else 3 * 2 / 2), (kind, total)
        assert share >= 0.93, (kind, share)
        if kind != "tuned":  # no needless width where the interval claims 95%
            assert share <= 0.97, (kind, share)
