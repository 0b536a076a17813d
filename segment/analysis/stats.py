"""Small-sample statistics for paired seed sweeps: mean +- std, paired log-ratio intervals, Kaplan-Meier.

Why a t-interval on log ratios: two arms trained with the same seed share their data order
and (for the decoder) their initialisation, so the unit of analysis is the per-seed ratio
``slower / faster``. Ratios are multiplicative, so their logs are averaged (the geometric
mean ratio) and the interval is Student's t on the log scale: exact when the log ratios are
normal, and honest at n = 3-5 (its critical value, 4.30 at n = 3 and 2.78 at n = 5, widens
the interval as it must). A percentile bootstrap at n = 5 can only reshuffle five values
(126 distinct resamples) and reports roughly their range, which undercovers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["RatioEstimate", "kaplan_meier", "mean_std", "paired_ratio"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs for no values."""
    if len(values) == 0:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


@dataclass(frozen=True)
class RatioEstimate:
    """A paired speedup estimate.

    Attributes:
        point: Geometric mean of the per-seed ratios (or a bound on it, see ``bound``).
        low, high: Its two-sided interval (NaN where none can be given).
        bound: ``""`` (an estimate), ``">="`` (slower-arm seeds that never got there count at
            their censoring time: the ratio is at least this), ``"<="`` (the reverse).
        seeds: Number of seed pairs used.
        ratios: The per-seed ratios (bounds for censored seeds), in seed order.
    """

    point: float
    low: float
    high: float
    bound: str
    seeds: int
    ratios: tuple[float, ...]


def paired_ratio(
    slower: Sequence[tuple[float, bool]], faster: Sequence[tuple[float, bool]], confidence: float = 0.95
) -> RatioEstimate | None:
    """Geometric mean of per-seed ratios ``slower / faster`` with a t-interval on their logs.

    Args:
        slower, faster: Per seed (same order), ``(time, reached)``: the time a run reached the
            level, or, with ``reached`` False, the time it was last seen without reaching it
            (right-censored).
        confidence: Of the two-sided interval.

    Returns:
        None when the seeds censored in both arms, or censored in both directions, leave no
        estimate or bound; a bound (no interval) when censoring in one arm decides it.
    """
    if len(slower) != len(faster):
        raise ValueError(f"paired_ratio needs one value per seed in both arms; got {len(slower)} and {len(faster)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    if not slower:
        return None
    slow_censored = any(not reached for _, reached in slower)
    fast_censored = any(not reached for _, reached in faster)
    both = any(not a and not b for (_, a), (_, b) in zip(slower, faster, strict=True))
    if both or (slow_censored and fast_censored):
        return None
    ratios = np.array([s / f for (s, _), (f, _) in zip(slower, faster, strict=True)], dtype=float)
    logs = np.log(ratios)
    point = float(np.exp(logs.mean()))
    if slow_censored or fast_censored:
        return RatioEstimate(point, float("nan"), float("nan"), ">=" if slow_censored else "<=", len(ratios),
                             tuple(float(r) for r in ratios))  # fmt: skip
    if len(logs) < 2:
        return RatioEstimate(point, float("nan"), float("nan"), "", 1, (float(ratios[0]),))
    half = stats.t.ppf(0.5 + confidence / 2, df=len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    return RatioEstimate(point, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)), "",
                         len(logs), tuple(float(r) for r in ratios))  # fmt: skip


def kaplan_meier(times: Sequence[float], reached: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of runs that reached a level by each time, with right-censored runs (1 - Kaplan-Meier survival).

    Args:
        times: Per run, when it reached the level, or when it was last seen without it.
        reached: Per run, whether it reached the level.

    Returns:
        ``(t, fraction)``: event times (with 0 first) and the fraction reached just after each.
    """
    times_arr, events = np.asarray(times, dtype=float), np.asarray(reached, dtype=bool)
    grid, fraction, surviving = [0.0], [0.0], 1.0
    for t in np.unique(times_arr[events]):
        at_risk = np.sum(times_arr >= t)
        happened = np.sum((times_arr == t) & events)
        surviving *= 1 - happened / at_risk
        grid.append(float(t))
        fraction.append(1 - surviving)
    return np.array(grid), np.array(fraction)
