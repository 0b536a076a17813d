"""Small-sample statistics for seed sweeps: mean +- std and bootstrap ratio intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_ratio", "mean_std"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs for no values."""
    if len(values) == 0:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def bootstrap_ratio(
    numerator: Sequence[float],
    denominator: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Ratio of means ``mean(numerator) / mean(denominator)`` with a percentile bootstrap interval.

    The two groups (e.g. epochs-to-threshold of two models over seeds) are resampled
    independently, with replacement, ``resamples`` times. With 3 seeds per group the
    interval is coarse (a resample holds at most 3 distinct values): read it as the spread
    the seeds allow, not as a precise 95% interval.

    Returns:
        ``(point estimate, lower bound, upper bound)``.
    """
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("bootstrap_ratio needs at least one value in each group")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, a.size, (resamples, a.size))].mean(1)
    means_b = b[rng.integers(0, b.size, (resamples, b.size))].mean(1)
    ratios = means_a / means_b
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(a.mean() / b.mean()), float(low), float(high)
