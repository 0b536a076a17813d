"""Small-sample statistics for paired seed sweeps: paired log-ratio intervals, the sign test, the rate chosen per
arm with a bootstrap that chooses again, and Kaplan-Meier curves.

Why a t-interval on log ratios: two arms trained with the same seed share their data order
and (for the decoder) their initialisation, so the unit of analysis is the per-seed ratio
``slower / faster``. Ratios are multiplicative, so their logs are averaged (the geometric
mean ratio) and the interval is Student's t on the log scale: exact when the log ratios are
normal, and honest at n = 3-5 (its critical value, 4.30 at n = 3 and 2.78 at n = 5, widens
the interval as it must). Beside it, the exact sign test assumes nothing about the shape of
the ratios: with n pairs all on one side its one-sided p is 0.5^n (0.125 at n = 3, 0.031 at
n = 5), so at n = 3 no direction is ever established by it alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["RatioEstimate", "TunedEstimate", "best_rate", "kaplan_meier", "mean_std", "paired_ratio", "tuned_ratio"]

# (time, reached) per seed: when a run reached a level, or when it was last seen without it
Times = Mapping[Any, tuple[float, bool]]


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

    @property
    def sign_p(self) -> float:
        """Exact one-sided sign test that the per-seed ratios lean the way the estimate does (ties left out)."""
        above = sum(r > 1 for r in self.ratios)
        below = sum(r < 1 for r in self.ratios)
        if above + below == 0:
            return 1.0
        return float(stats.binomtest(max(above, below), above + below, 0.5, alternative="greater").pvalue)

    @property
    def only_parametric(self) -> bool:
        """The t-interval excludes 1 but the sign test cannot establish the direction at the 5% level."""
        excludes = np.isfinite(self.low) and (self.low > 1 or self.high < 1)
        return bool(excludes and self.sign_p >= 0.05)


def _interval(logs: np.ndarray, confidence: float) -> tuple[float, float]:
    if len(logs) < 2:
        return float("nan"), float("nan")
    if np.ptp(logs) == 0:  # identical ratios: the interval is the point (scipy would give NaN)
        return float(np.exp(logs[0])), float(np.exp(logs[0]))
    low, high = stats.ttest_1samp(logs, 0.0).confidence_interval(confidence)
    return float(np.exp(low)), float(np.exp(high))


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
    bound = ">=" if slow_censored else "<=" if fast_censored else ""
    low, high = (float("nan"), float("nan")) if bound else _interval(logs, confidence)
    return RatioEstimate(point, low, high, bound, len(ratios), tuple(float(r) for r in ratios))


def best_rate(cells: Mapping[Any, Times], seeds: Sequence[Any] | None = None) -> Any:
    """The rate whose median time over ``seeds`` (all of each cell's by default) is lowest.

    A run that never reached the level counts as never (infinite time); rates are compared
    on the seeds each has, ties go to the first rate in ``cells``' order. None without data.
    """
    medians = {}
    for rate, times in cells.items():
        picked = [times[s] for s in (seeds if seeds is not None else times) if s in times]
        if picked:
            medians[rate] = float(np.median([t if reached else np.inf for t, reached in picked]))
    return min(medians, key=lambda rate: medians[rate]) if medians else None


@dataclass(frozen=True)
class TunedEstimate:
    """Each arm at its own best rate: the paired ratio there, and a bootstrap interval that chooses again.

    Attributes:
        slower_rate, faster_rate: The rates chosen on all seeds (median time to the level).
        estimate: The paired ratio at those rates (its t-interval ignores the choice).
        low, high: Percentile interval of the geometric-mean ratio over seed resamples, the
            rates chosen again inside each resample (or kept fixed: ``reselect=False``).
        chosen: Share of resamples in which each ``(slower rate, faster rate)`` pair was chosen.
        resamples: Resamples that gave a ratio.
    """

    slower_rate: Any
    faster_rate: Any
    estimate: RatioEstimate | None
    low: float
    high: float
    chosen: dict[tuple[Any, Any], float] = field(default_factory=dict)
    resamples: int = 0


def _ratio_at(slower: Times, faster: Times, seeds: Sequence[Any]) -> float | None:
    """Log of the geometric-mean ratio over the resampled seeds both cells have (censored: their last time)."""
    logs = [np.log(slower[s][0] / faster[s][0]) for s in seeds if s in slower and s in faster]
    return float(np.mean(logs)) if logs else None


def tuned_ratio(slower: Mapping[Any, Times], faster: Mapping[Any, Times], resamples: int = 4000,
                confidence: float = 0.95, reselect: bool = True, seed: int = 0) -> TunedEstimate | None:  # fmt: skip
    """The slower arm at its best rate over the faster arm at its best rate, paired by seed.

    Choosing each arm's best rate on the same runs that then measure the ratio flatters it:
    the chosen rate is partly the one whose seeds happened to be fast. So the interval comes
    from resampling seeds (with replacement, from every seed either arm has) and choosing
    both rates again inside each resample, which carries the uncertainty of the choice into
    it. (Choosing on half the seeds and measuring on the other half would leave one to two
    seeds per half at n = 3-5.) With so few seeds a percentile bootstrap undercovers; read the
    interval as a lower bound on the uncertainty, beside the sign test.

    Args:
        slower, faster: ``{rate: {seed: (time, reached)}}`` per arm.
        resamples: Bootstrap resamples (a fixed ``seed``: the report repeats exactly).
        confidence: Of the percentile interval.
        reselect: Choose the rates again in each resample (False: keep the full-sample
            choice, the interval that ignores the selection; for comparison).
    """
    fast_rate, slow_rate = best_rate(faster), best_rate(slower)
    if fast_rate is None or slow_rate is None:
        return None
    common = sorted(set(slower[slow_rate]) & set(faster[fast_rate]), key=str)
    estimate = paired_ratio([slower[slow_rate][s] for s in common], [faster[fast_rate][s] for s in common])
    universe = sorted({s for cells in (slower, faster) for times in cells.values() for s in times}, key=str)
    generator = np.random.default_rng(seed)
    draws, chosen = [], {}
    for _ in range(resamples):
        picked = [universe[i] for i in generator.integers(0, len(universe), len(universe))]
        rates = (best_rate(slower, picked), best_rate(faster, picked)) if reselect else (slow_rate, fast_rate)
        if None in rates:
            continue
        value = _ratio_at(slower[rates[0]], faster[rates[1]], picked)
        if value is not None:
            draws.append(value)
            chosen[rates] = chosen.get(rates, 0) + 1
    if not draws:
        return TunedEstimate(slow_rate, fast_rate, estimate, float("nan"), float("nan"))
    tail = 100 * (1 - confidence) / 2
    low, high = np.exp(np.percentile(draws, [tail, 100 - tail]))
    shares = {rates: count / len(draws) for rates, count in sorted(chosen.items(), key=lambda kv: -kv[1])}
    return TunedEstimate(slow_rate, fast_rate, estimate, float(low), float(high), shares, len(draws))


def kaplan_meier(times: Sequence[float], reached: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of runs that reached a level by each time, with right-censored runs (1 - Kaplan-Meier survival).

    Args:
        times: Per run, when it reached the level, or when it was last seen without it.
        reached: Per run, whether it reached the level.

    Returns:
        ``(t, fraction)``: event times (with 0 first) and the fraction reached just after each.
    """
    times_arr, events = np.asarray(times, dtype=float), np.asarray(reached, dtype=bool)
    if not events.any():
        return np.array([0.0]), np.array([0.0])
    survival = stats.ecdf(stats.CensoredData(uncensored=times_arr[events], right=times_arr[~events])).sf
    at_events = np.isin(survival.quantiles, times_arr[events])  # scipy also lists the censoring times
    return (np.append(0.0, survival.quantiles[at_events]),
            np.append(0.0, 1 - survival.probabilities[at_events]))  # fmt: skip
