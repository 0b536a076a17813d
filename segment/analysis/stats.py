"""Small-sample statistics for seed sweeps: epochs to a level compared between arms, with
intervals that hold cell by cell at the 3-5 seeds people run (tests/test_coverage.py proves it by
simulation, through the report's own code path).

The model: log-epochs to a level are normal within a cell (an arm at a rate), each cell with its
own spread. Spreads differ several-fold between cells (a net from scratch at a high rate is much
noisier than one at a low rate), so nothing is pooled across cells: one spread for all would make
the noisy cells' intervals too narrow and the quiet cells' too wide.

- A fixed-rate comparison (:func:`compare`): the difference of two cell means of log-epochs. Where
  both runs of every seed saw the same data in the same order (their records' ``data_order``, else
  the same commit), a paired t on the per-seed differences; otherwise Welch's t with the
  Welch-Satterthwaite degrees of freedom. Its p comes from the same t, so "the interval excludes 1"
  and "p < 0.05" always agree; the exact permutation p (every relabelling) stands beside it.
- The validation grid: a crossing is only known to the validation that showed it, so each log-time
  carries a rounding variance of at least ``(resolution / time)**2 / 12``; a cell's variance is
  never taken below that. Ties on the grid therefore give a finite interval, never a zero-width
  one.
- Each arm at its best rate (:func:`tuned`): the rate with the lowest mean log-epochs (ties: the
  rate with more seeds, then the lower rate). Its interval holds for every candidate pair of rates
  at once (Sidak over the slower x faster contrasts, each with its cells' own spreads), so choosing
  the pair on the same runs costs no coverage; the tuned ratio ``min_i S_i - min_j F_j`` lies
  between ``min_i max_j`` of the lower and of the upper limits. Its p is the level at which that
  interval just reaches 1; beside it a permutation p that repeats the choice of rates in every
  relabelling (arm labels permuted within each rate).
- Censoring: a cell where some runs never reached the level is estimated by a censored log-normal
  fit (model-based, no interval); one where none did gives a bound.
- Seeds needed (:func:`seeds_needed`): for a stated effect (``study.plan.ratio``, the smallest
  speedup worth knowing), at the upper 80% confidence bound of the cell's own spread.
- The trend over training-set sizes (:func:`size_trend`): the least-squares slope of the per-size
  log-ratios on log-size, a fixed linear combination of the per-size estimates, each with its own
  standard error (recovered from its interval), and Welch-Satterthwaite degrees of freedom.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

__all__ = [
    "CONFIDENCE",
    "Cell",
    "Estimate",
    "Trend",
    "compare",
    "mean_difference",
    "mean_interval",
    "kaplan_meier",
    "mean_std",
    "permutation_floor",
    "seeds_needed",
    "size_trend",
    "tuned",
]

CONFIDENCE = 0.95
MAX_SEEDS = 100  # seeds_needed says "more than this" beyond it
PERMUTATIONS = 20_000  # Monte Carlo relabellings of the tuned permutation test (fixed seed)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs for no values."""
    if len(values) == 0:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


@dataclass(frozen=True)
class Cell:
    """The runs of one arm at one rate at one level: ``{seed: (epochs, reached)}``, the key that
    fixes each seed's data order (runs are paired only where both keys match), the arm's rate and
    the validation grid's step in the cell's unit (0: times are exact)."""

    times: Mapping[Any, tuple[float, bool]]
    order: Mapping[Any, Any] = field(default_factory=dict)
    rate: Any = None
    resolution: float = 0.0

    @property
    def seeds(self) -> list[Any]:
        return sorted(self.times, key=str)

    @functools.cached_property
    def logs(self) -> np.ndarray:
        return np.log([self.times[s][0] for s in self.seeds])

    @property
    def censored(self) -> int:
        return sum(not reached for _, reached in self.times.values())

    @functools.cached_property
    def _fit(self) -> tuple[float, float]:
        """Mean and spread of log-epochs: plain where every run reached the level, a censored
        log-normal fit where some did not (model-based), the censoring times' mean (a bound, no
        spread) where none did."""
        if not self.censored or self.censored == len(self.times):
            spread = float(self.logs.std(ddof=1)) if len(self.logs) > 1 else float("nan")
            return float(self.logs.mean()), spread if not self.censored else float("nan")
        reached = [t for t, ok in self.times.values() if ok]
        right = [t for t, ok in self.times.values() if not ok]
        data = stats.CensoredData(uncensored=np.log(reached), right=np.log(right))
        mean, spread = stats.norm.fit(data)
        return float(mean), float(spread)

    @property
    def mean(self) -> float:
        """Mean log-epochs (see :attr:`_fit`)."""
        return self._fit[0]

    @property
    def rounding(self) -> float:
        """The variance of one log-time that the validation grid alone leaves: a crossing shown at
        ``t`` happened somewhere in the grid step before it, ``(resolution / t)**2 / 12``
        (averaged over the cell's times)."""
        times = np.exp(self.logs)
        return float(np.mean((self.resolution / times) ** 2) / 12) if len(times) else 0.0

    @property
    def variance(self) -> float:
        """The cell's variance of log-epochs, never below the grid's rounding (NaN: unknown)."""
        return max(self._fit[1] ** 2, self.rounding)


@dataclass(frozen=True)
class Estimate:
    """Slower / faster in epochs: a ratio of geometric means.

    ``low``/``high``: its 95% interval (NaN where none; ``reason`` says why); ``bound``: ``">="``
    where the slower cell never reached the level (counted at its last validation), ``"<="`` the
    reverse; ``model``: ``"censored fit"`` where some runs of a cell did not reach it; ``values``:
    per seed, the slower and the faster arm's epochs; ``rates``: the cells'; ``p``: from the
    interval's own model; ``spread``: the per-seed spread of the log-ratio the interval used and
    its degrees of freedom (paired: of the differences; unpaired: ``sqrt(s1**2 + s2**2)``).
    """

    point: float
    low: float = float("nan")
    high: float = float("nan")
    paired: bool = False
    seeds: tuple[int, int] = (0, 0)
    bound: str = ""
    model: str = ""
    values: tuple[tuple[Any, float | None, float | None], ...] = ()
    rates: tuple[Any, Any] = (None, None)
    p_of: Callable[[], float] | None = field(default=None, repr=False, compare=False)
    spread: tuple[float, float] = (float("nan"), 0.0)
    reason: str = ""
    tuned: bool = False
    cells: tuple[Sequence[Cell], Sequence[Cell]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def holds(self) -> bool:
        """The interval excludes 1: the direction is established."""
        return bool(np.isfinite(self.low) and (self.low > 1 or self.high < 1))

    @functools.cached_property
    def p(self) -> float:
        """The p of the interval's own model: below 0.05 exactly where the interval excludes 1."""
        return self.p_of() if self.p_of else float("nan")

    @functools.cached_property
    def exact_p(self) -> float:
        """The permutation p beside the interval's: exact (every relabelling of the two cells'
        seeds) at a fixed rate; for the best rates, Monte Carlo over relabellings within each rate
        with the rates chosen again in each."""
        if not self.cells:
            return float("nan")
        slow, fast = self.cells
        if self.tuned:
            return _tuned_permutation_p(tuple(slow), tuple(fast))
        return _permutation_p(slow[0], fast[0], self.paired)

    def needed(self, ratio: float = 1.25) -> tuple[int, int] | None:
        """Seeds per arm for 80% power to exclude 1 when the true ratio is ``ratio``, and for a
        95% interval of +-25%, at the upper 80% bound of this comparison's spread."""
        sd, df = self.spread
        return seeds_needed(sd, df, self.paired, ratio) if np.isfinite(sd) and df > 0 else None


def permutation_floor(seeds: tuple[int, int], paired: bool) -> float:
    """The smallest two-sided p the exact permutation test can give: ``2 / 2**n`` for n pairs,
    ``2 / C(n1 + n2, n1)`` for independent runs."""
    if paired:
        return 2 / 2 ** seeds[0]
    return 2 / math.comb(sum(seeds), seeds[0])


def _pairs(slow: Cell, fast: Cell) -> list[Any] | None:
    """The seeds to pair by, or None: pairing needs every seed of both cells to share its order
    key."""
    seeds = slow.seeds
    if seeds != fast.seeds or len(seeds) < 2:
        return None
    keys = [(slow.order.get(s), fast.order.get(s)) for s in seeds]
    return seeds if all(a is not None and a == b for a, b in keys) else None


def _permutation_p(slow: Cell, fast: Cell, paired: bool) -> float:
    x, y = slow.logs, fast.logs
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    result = stats.permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a, axis) - np.mean(b, axis),
        permutation_type="samples" if paired else "independent",
        n_resamples=np.inf,
        vectorized=True,
        alternative="two-sided",
    )
    return float(result.pvalue)


def _tuned_statistic(slow: Sequence[np.ndarray], fast: Sequence[np.ndarray]) -> np.ndarray:
    """``min_i mean S_i - min_j mean F_j`` per row of stacked log-times."""
    return np.min([s.mean(-1) for s in slow], axis=0) - np.min([f.mean(-1) for f in fast], axis=0)


def _tuned_permutation_p(slow: tuple[Cell, ...], fast: tuple[Cell, ...]) -> float:
    """Arm labels permuted within each rate both arms ran, the best rates chosen again in every
    relabelling; censored runs count at their last validation. ``(1 + hits) / (1 + draws)``."""
    generator = np.random.default_rng(0)
    partners = {c.rate: c for c in fast}
    shared = {c.rate for c in slow} & set(partners)
    draws_slow = [c.logs[None, :] for c in slow if c.rate not in shared]
    draws_fast = [c.logs[None, :] for c in fast if c.rate not in shared]
    for cell in (c for c in slow if c.rate in shared):
        both = np.concatenate([cell.logs, partners[cell.rate].logs])
        shuffled = generator.permuted(np.tile(both, (PERMUTATIONS, 1)), axis=1)
        draws_slow.append(shuffled[:, : len(cell.logs)])
        draws_fast.append(shuffled[:, len(cell.logs) :])
    observed = float(_tuned_statistic([c.logs for c in slow], [c.logs for c in fast])[()])
    permuted = _tuned_statistic(draws_slow, draws_fast)
    hits = int(np.sum(np.abs(permuted) >= abs(observed) - 1e-12))
    return (1 + hits) / (1 + PERMUTATIONS)


@functools.cache
def _spread_quantiles(paired: bool) -> np.ndarray:
    """``sqrt(V / df)`` at 400 evenly spaced quantiles of ``V ~ chi2(df)``, for the degrees of
    freedom of 2..MAX_SEEDS seeds per arm (rows)."""
    seeds = np.arange(2, MAX_SEEDS + 1)
    dfs = seeds - 1.0 if paired else 2.0 * seeds - 2.0
    quantiles = (np.arange(400) + 0.5) / 400
    return np.sqrt(stats.chi2.ppf(quantiles[None, :], dfs[:, None]) / dfs[:, None])


def seeds_needed(
    sd: float,
    df: float,
    paired: bool = False,
    ratio: float = 1.25,
    power: float = 0.8,
    precision: float = 1.25,
) -> tuple[int, int]:
    """Seeds per arm for ``power`` to exclude a ratio of 1 when the true ratio is ``ratio`` (the
    smallest speedup worth knowing, not the observed one), and for a 95% interval of
    +-``precision`` (a factor), at the upper 80% confidence bound of the per-seed spread ``sd`` of
    the log-ratio (estimated with ``df`` degrees of freedom). ``MAX_SEEDS + 1`` means more than
    ``MAX_SEEDS``. Non-increasing in ``ratio``, non-decreasing in ``sd``."""
    if not (np.isfinite(sd) and sd > 0):
        return 2, 2
    upper = sd * math.sqrt(df / stats.chi2.ppf(0.2, df)) if df > 0 else sd
    delta = abs(math.log(ratio)) if ratio > 0 and np.isfinite(ratio) else 0.0
    seeds = np.arange(2, MAX_SEEDS + 1)
    dfs = seeds - 1.0 if paired else 2.0 * seeds - 2.0
    se = upper / np.sqrt(seeds)
    critical = stats.t.ppf(0.5 + CONFIDENCE / 2, dfs)
    shift = (delta / se)[:, None]
    # the t-test's power E_V[Phi(shift - c s) + Phi(-shift - c s)], s = sqrt(V / df), V ~ chi2(df),
    # averaged over evenly spaced quantiles of V: monotone in shift by construction (scipy's
    # noncentral t is not, far in its tails, where it may also give NaN)
    reach = critical[:, None] * _spread_quantiles(paired)
    powers = (stats.norm.cdf(shift - reach) + stats.norm.cdf(-shift - reach)).mean(axis=1)
    tight = critical * se <= math.log(precision)

    def first(ok: np.ndarray) -> int:
        failing = np.flatnonzero(~ok)  # the first n after the last failure: monotone in n
        if not len(failing):
            return int(seeds[0])
        return int(seeds[failing[-1]] + 1) if failing[-1] + 1 < len(seeds) else MAX_SEEDS + 1

    return first(powers >= power) if delta else MAX_SEEDS + 1, first(tight)


def _values(slow: Cell, fast: Cell) -> tuple[tuple[Any, float | None, float | None], ...]:
    return tuple(
        (s, slow.times.get(s, (None,))[0], fast.times.get(s, (None,))[0])
        for s in sorted(set(slow.times) | set(fast.times), key=str)
    )


def _welch(slow: Cell, fast: Cell) -> tuple[float, float, float]:
    """Standard error, Welch-Satterthwaite degrees of freedom and per-seed spread of an unpaired
    difference."""
    a, b = slow.variance / len(slow.times), fast.variance / len(fast.times)
    if not a + b > 0:
        return 0.0, 0.0, 0.0
    df = (a + b) ** 2 / (a**2 / (len(slow.times) - 1) + b**2 / (len(fast.times) - 1))
    return math.sqrt(a + b), df, math.sqrt(slow.variance + fast.variance)


def compare(slow: Cell, fast: Cell) -> Estimate | None:
    """The slower cell over the faster one at one level (see the module's text)."""
    if not slow.times or not fast.times:
        return None
    seeds = (len(slow.times), len(fast.times))
    common = {"seeds": seeds, "values": _values(slow, fast), "rates": (slow.rate, fast.rate)}
    all_slow, all_fast = slow.censored == len(slow.times), fast.censored == len(fast.times)
    if all_slow and all_fast:
        return None
    point = math.exp(slow.mean - fast.mean)
    if all_slow or all_fast:
        return Estimate(point, bound=">=" if all_slow else "<=", **common)
    if slow.censored or fast.censored:
        return Estimate(point, model="censored fit", reason="some runs never got there", **common)
    if min(seeds) < 2:
        return Estimate(point, reason="one seed: no spread to measure", **common)
    paired = _pairs(slow, fast) is not None
    if paired:
        d = slow.logs - fast.logs
        variance = max(float(d.var(ddof=1)), slow.rounding + fast.rounding)
        df, spread = len(d) - 1.0, math.sqrt(variance)
        se = spread / math.sqrt(len(d))
    else:
        se, df, spread = _welch(slow, fast)
    if not se > 0:
        return Estimate(point, paired=paired, reason="every seed ties: no spread", **common)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * se
    log = math.log(point)
    return Estimate(
        point,
        math.exp(log - half),
        math.exp(log + half),
        paired,
        p_of=lambda: float(2 * stats.t.sf(abs(log) / se, df)),
        spread=(spread, df),
        cells=((slow,), (fast,)),
        **common,
    )


def _best(cells: Sequence[Cell]) -> Cell:
    """The stated rule: the lowest mean log-epochs; ties: more seeds, then the lower rate."""
    return min(cells, key=lambda c: (round(c.mean, 12), -len(c.times), float(c.rate)))


def _contrasts(slow: Sequence[Cell], fast: Sequence[Cell]) -> tuple[np.ndarray, ...]:
    """Every slower x faster contrast of cell means: difference, standard error (each cell's own
    variance) and Welch degrees of freedom; a cell that never got there adds no variance (its
    mean is a bound) and a censored side gets no limit."""
    shape = (len(slow), len(fast))
    d, se, df = np.empty(shape), np.empty(shape), np.empty(shape)
    for i, j in itertools.product(range(len(slow)), range(len(fast))):
        terms = []
        for cell in (slow[i], fast[j]):
            if cell.censored < len(cell.times):
                terms.append((cell.variance / len(cell.times), len(cell.times) - 1))
        total = sum(v for v, _ in terms)
        d[i, j] = slow[i].mean - fast[j].mean
        se[i, j] = math.sqrt(total) if np.isfinite(total) else np.inf
        usable = [(v, n) for v, n in terms if n > 0 and v > 0]
        df[i, j] = total**2 / sum(v**2 / n for v, n in usable) if usable else 1.0
    return d, se, df


def _tuned_bounds(
    slow: Sequence[Cell], fast: Sequence[Cell], contrasts: tuple[np.ndarray, ...], alpha: float
) -> tuple[float, float]:
    """The simultaneous (Sidak) interval of ``min_i S_i - min_j F_j`` at level ``1 - alpha``."""
    d, se, df = contrasts
    per_contrast = 1 - (1 - alpha) ** (1 / d.size)
    half = stats.t.ppf(1 - per_contrast / 2, df) * se
    low = np.where([[not f.censored for f in fast]] * len(slow), d - half, -np.inf)
    high = np.where([[not s.censored] * len(fast) for s in slow], d + half, np.inf)
    low, high = np.nan_to_num(low, nan=-np.inf), np.nan_to_num(high, nan=np.inf)
    return float(low.max(axis=1).min()), float(high.max(axis=1).min())


def tuned(slow: Sequence[Cell], fast: Sequence[Cell]) -> Estimate | None:
    """Each arm at its best rate (see the module's text); the pair chosen is in ``rates``."""
    slow = [c for c in slow if c.times]
    fast = [c for c in fast if c.times]
    reach_slow = [c for c in slow if c.censored < len(c.times)]
    reach_fast = [c for c in fast if c.censored < len(c.times)]
    if not reach_fast or not slow:
        return None
    if not reach_slow:  # no rate of the slower arm got there: at least this much slower
        point = math.exp(min(c.mean for c in slow) - _best(reach_fast).mean)
        return Estimate(point, bound=">=", rates=(None, _best(reach_fast).rate), tuned=True)
    best_slow, best_fast = _best(reach_slow), _best(reach_fast)
    point = math.exp(best_slow.mean - best_fast.mean)
    seeds = (len(best_slow.times), len(best_fast.times))
    common = {
        "seeds": seeds,
        "values": _values(best_slow, best_fast),
        "rates": (best_slow.rate, best_fast.rate),
        "tuned": True,
    }
    if best_slow.censored or best_fast.censored:
        return Estimate(point, model="censored fit", reason="some runs never got there", **common)
    if min(seeds) < 2:
        return Estimate(point, reason="one seed: no spread to measure", **common)
    contrasts = _contrasts(slow, fast)
    low, high = _tuned_bounds(slow, fast, contrasts, 1 - CONFIDENCE)
    if not high > low:
        return Estimate(point, reason="every seed ties: no spread", **common)
    _, se, df = contrasts
    i, j = slow.index(best_slow), fast.index(best_fast)
    return Estimate(
        point,
        math.exp(low),
        math.exp(high),
        p_of=lambda: _tuned_p(slow, fast, contrasts, math.log(point)),
        spread=(float(se[i, j] * math.sqrt(min(seeds))), float(df[i, j])),
        cells=(tuple(slow), tuple(fast)),
        **common,
    )


def _tuned_p(
    slow: Sequence[Cell], fast: Sequence[Cell], contrasts: tuple[np.ndarray, ...], log: float
) -> float:
    """The level at which the best-rates interval (:func:`_tuned_bounds`) just reaches 1."""

    def gap(exponent: float) -> float:  # > 0 once the interval at 1 - 10**exponent excludes 1
        lower, upper = _tuned_bounds(slow, fast, contrasts, 10**exponent)
        return lower if log > 0 else -upper

    if gap(-1e-9) <= 0:
        return 1.0
    if gap(-12) > 0:
        return 1e-12
    return float(10 ** optimize.brentq(gap, -12, -1e-9, xtol=1e-4))


def kaplan_meier(times: Sequence[float], reached: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of runs that reached a level by each time, with right-censored runs
    (1 - Kaplan-Meier survival): event times (with 0 first) and the fraction reached after each."""
    times_arr, events = np.asarray(times, dtype=float), np.asarray(reached, dtype=bool)
    if not events.any():
        return np.array([0.0]), np.array([0.0])
    survival = stats.ecdf(
        stats.CensoredData(uncensored=times_arr[events], right=times_arr[~events])
    ).sf
    at_events = np.isin(survival.quantiles, times_arr[events])  # scipy also lists censoring times
    return (
        np.append(0.0, survival.quantiles[at_events]),
        np.append(0.0, 1 - survival.probabilities[at_events]),
    )


def _t(df: float) -> float:
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% t interval (n - 1 degrees of freedom); NaN limits below two values or
    without spread."""
    mean, sd = mean_std(values)
    if len(values) < 2 or not sd > 0:
        return mean, float("nan"), float("nan")
    half = _t(len(values) - 1) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def mean_difference(
    first: Mapping[Any, float], second: Mapping[Any, float], paired: bool
) -> tuple[float, float, float]:
    """``mean(second) - mean(first)`` with its 95% interval: a paired t on the per-seed
    differences (the seeds both hold), else Welch's t; NaN limits where a side has one value or
    nothing varies."""
    if paired:
        seeds = sorted(set(first) & set(second), key=str)
        return mean_interval([second[s] - first[s] for s in seeds])
    a, b = np.asarray(list(first.values()), float), np.asarray(list(second.values()), float)
    difference = float(b.mean() - a.mean()) if len(a) and len(b) else float("nan")
    if min(len(a), len(b)) < 2:
        return difference, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if not va + vb > 0:
        return difference, float("nan"), float("nan")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t(df) * math.sqrt(va + vb)
    return difference, difference - half, difference + half


@dataclass(frozen=True)
class Trend:
    """The least-squares slope of log-speedup on log training-set size and its 95% interval.

    ``slope < 0``: the speedup grows as the training set shrinks. ``df``: Welch-Satterthwaite;
    ``sizes``: the sizes whose estimates had an interval and entered the fit.
    """

    slope: float
    low: float
    high: float
    df: float
    sizes: tuple[float, ...]

    @property
    def holds(self) -> bool:
        """The interval excludes 0: the direction of the trend is established."""
        return bool(self.low > 0 or self.high < 0)

    @property
    def per_halving(self) -> tuple[float, float, float]:
        """The factor the speedup is multiplied by when the training set halves, with limits."""
        return 2.0**-self.slope, 2.0**-self.high, 2.0**-self.low


def log_se(estimate: Estimate) -> tuple[float, float]:
    """Standard error and degrees of freedom of an estimate's log-ratio, read back from its t
    interval (so the grid's rounding floor and the pairing it used come with it)."""
    df = estimate.spread[1]
    return math.log(estimate.high / estimate.low) / (2 * _t(df)), df


def size_trend(points: Sequence[tuple[float, Estimate | None]]) -> Trend | None:
    """The slope of log-speedup on log training-set size from per-size estimates ``[(size,
    estimate)]``; None with fewer than two sizes whose estimate has an interval.

    The slope is the ordinary least-squares one, ``b = sum_i c_i log r_i`` with ``c_i = (x_i -
    mean x) / sum_j (x_j - mean x)**2`` and ``x_i = log size_i``: coefficients fixed by the design,
    not weights estimated from the seeds (an inverse-variance weight from 2 degrees of freedom is
    itself noisy, and would make the combination random). Its variance is ``sum_i c_i**2 se_i**2``
    from each size's own standard error, nothing pooled, with Welch-Satterthwaite degrees of
    freedom, as a Welch interval of two cells. It estimates the least-squares line through the
    true per-size log-ratios at the sizes measured, whether or not they lie on a line.
    """
    usable = [(n, e) for n, e in points if e is not None and np.isfinite(e.low) and e.spread[1] > 0]
    x = np.log([float(n) for n, _ in usable])
    if len(usable) < 2 or not np.ptp(x) > 0:
        return None
    y = np.log([e.point for _, e in usable])
    se, df = np.array([log_se(e) for _, e in usable]).T
    c = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    slope, parts = float(c @ y), c**2 * se**2
    variance = float(parts.sum())
    dof = variance**2 / float(np.sum(parts**2 / df))
    half = _t(dof) * math.sqrt(variance)
    return Trend(slope, slope - half, slope + half, dof, tuple(float(n) for n, _ in usable))
