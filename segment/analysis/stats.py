"""Small-sample statistics for seed sweeps: epochs to a level compared between arms, with
intervals whose coverage holds at the 3-5 seeds people run (tests/test_coverage.py proves it by
simulation).

The model: log-epochs to a level are normal within a cell (an arm at a rate), with a spread that is
the same for every cell of a family (the arms and rates of one comparison) at that level. The spread
is estimated once per family and level, pooled over its cells, and every interval uses Student's t
with the pooled degrees of freedom: at 3-5 seeds per cell this is what makes an interval honest
without being needlessly wide (a percentile bootstrap over 3 seeds is the range of three numbers,
about 75% coverage).

- A fixed-rate comparison (:func:`compare`): the difference of two cell means of log-epochs,
  paired by seed only where both runs saw the same data in the same order (their records'
  ``data_order``, else the same commit), otherwise as independent samples. Beside it, the exact
  permutation test (every relabelling) and the per-seed values.
- Each arm at its best rate (:func:`tuned`): the rate with the lowest mean log-epochs (ties: the
  rate with more seeds, then the lower rate). Its interval holds for every candidate pair of
  rates at once (the family's max-|t|), so choosing the pair on the same runs costs no coverage;
  the tuned ratio ``min_i S_i - min_j F_j`` lies between ``min_i max_j`` of the lower and of the
  upper limits.
- Censoring: a cell where some runs never reached the level is estimated by a censored
  log-normal fit (model-based, no interval); one where none did gives a bound.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "Cell",
    "Estimate",
    "Family",
    "compare",
    "kaplan_meier",
    "mean_std",
    "seeds_needed",
    "tuned",
]

CONFIDENCE = 0.95
_DRAWS = 40_000  # Monte Carlo draws of the family's max-|t| (fixed seed: the report repeats)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs for no values."""
    if len(values) == 0:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


@dataclass(frozen=True)
class Cell:
    """The runs of one arm at one rate at one level: ``{seed: (epochs, reached)}``, and the key
    that fixes each seed's data order (runs are paired only where both keys match)."""

    times: Mapping[Any, tuple[float, bool]]
    order: Mapping[Any, Any] = field(default_factory=dict)
    rate: Any = None

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
    def mean(self) -> float:
        """Mean log-epochs: plain where every run reached the level, a censored log-normal fit
        where some did not (model-based), the censoring times' mean (a bound) where none did."""
        if not self.censored or self.censored == len(self.times):
            return float(self.logs.mean())
        reached = [t for t, ok in self.times.values() if ok]
        right = [t for t, ok in self.times.values() if not ok]
        data = stats.CensoredData(uncensored=np.log(reached), right=np.log(right))
        return float(stats.norm.fit(data)[0])


@dataclass(frozen=True)
class Family:
    """The cells one comparison draws on at one level, and their pooled spread of log-epochs."""

    cells: Sequence[Cell]

    @property
    def spread(self) -> tuple[float, int]:
        """Pooled within-cell standard deviation of log-epochs and its degrees of freedom, over
        the cells where every run reached the level."""
        full = [c.logs for c in self.cells if not c.censored and len(c.times) > 1]
        df = sum(len(logs) - 1 for logs in full)
        if df == 0:
            return float("nan"), 0
        return math.sqrt(sum(float(((x - x.mean()) ** 2).sum()) for x in full) / df), df


@dataclass(frozen=True)
class Estimate:
    """Slower / faster in epochs: a ratio of geometric means.

    ``low``/``high``: its 95% interval (NaN where none: bounds and censored fits); ``bound``:
    ``">="`` where the slower cell never reached the level (counted at its last validation),
    ``"<="`` the reverse; ``model``: ``"censored fit"`` where some runs of a cell did not reach
    it;
    ``values``: per seed, the slower and the faster arm's epochs; ``rates``: the cells'.
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
    sd: float = float("nan")  # the pooled spread the interval used (paired: of differences)
    cells: tuple[Cell, Cell] | None = field(default=None, repr=False, compare=False)

    @property
    def holds(self) -> bool:
        """The interval excludes 1: the direction is established."""
        return bool(np.isfinite(self.low) and (self.low > 1 or self.high < 1))

    @property
    def p(self) -> float:
        """The exact two-sided permutation test on log-epochs (every relabelling of the seeds)."""
        return _permutation_p(*self.cells, self.paired) if self.cells else float("nan")

    @property
    def needed(self) -> tuple[int, int] | None:
        """Seeds per arm for 80% power to exclude 1 at this ratio, and for a +-25% interval."""
        return seeds_needed(self.sd, self.point, self.paired) if np.isfinite(self.sd) else None


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
    kind = "samples" if paired else "independent"
    result = stats.permutation_test(
        (x, y),
        lambda a, b, axis: np.mean(a, axis) - np.mean(b, axis),
        permutation_type=kind,
        n_resamples=np.inf,
        vectorized=True,
        alternative="two-sided",
    )
    return float(result.pvalue)


def seeds_needed(
    sd: float, effect: float, paired: bool = False, power: float = 0.8, precision: float = 1.25
) -> tuple[int, int]:
    """Seeds per arm for ``power`` to exclude a ratio of 1 at the observed ``effect`` (a ratio),
    and for a 95% interval of +-``precision`` (a factor), given the spread ``sd`` of log-epochs
    (paired: of the per-seed differences). Capped at 100."""
    if not (np.isfinite(sd) and sd > 0):
        return 2, 2
    delta = abs(math.log(effect)) if effect and np.isfinite(effect) else 0.0

    def scale(n: int) -> float:  # the standard error of the log ratio, in units of sd
        return math.sqrt(1 / n) if paired else math.sqrt(2 / n)

    def df(n: int) -> int:
        return n - 1 if paired else 2 * n - 2

    def powered(n: int) -> bool:
        if delta == 0:
            return False
        ncp, crit = delta / (sd * scale(n)), stats.t.ppf(0.975, df(n))
        return float(stats.nct.sf(crit, df(n), ncp) + stats.nct.cdf(-crit, df(n), ncp)) >= power

    def tight(n: int) -> bool:
        return stats.t.ppf(0.975, df(n)) * sd * scale(n) <= math.log(precision)

    first = lambda ok: next((n for n in range(2, 101) if ok(n)), 100)  # noqa: E731
    return first(powered), first(tight)


def compare(slow: Cell, fast: Cell, family: Family) -> Estimate | None:
    """The slower cell over the faster one at one level (see the module's text)."""
    if not slow.times or not fast.times:
        return None
    values = tuple(
        (s, slow.times.get(s, (None,))[0], fast.times.get(s, (None,))[0])
        for s in sorted(set(slow.times) | set(fast.times), key=str)
    )
    seeds = (len(slow.times), len(fast.times))
    rates = (slow.rate, fast.rate)
    all_slow, all_fast = slow.censored == len(slow.times), fast.censored == len(fast.times)
    if all_slow or all_fast:
        if all_slow and all_fast:
            return None
        point = math.exp(slow.mean - fast.mean)
        return Estimate(
            point, bound=">=" if all_slow else "<=", seeds=seeds, values=values, rates=rates
        )
    point = math.exp(slow.mean - fast.mean)
    if slow.censored or fast.censored:
        return Estimate(point, model="censored fit", seeds=seeds, values=values, rates=rates)
    pairs = _pairs(slow, fast)
    if pairs is not None:
        differences = slow.logs - fast.logs
        sd, df = _paired_spread(family)
        se = sd / math.sqrt(len(differences))
    else:
        sd, df = family.spread
        se = sd * math.sqrt(1 / len(slow.times) + 1 / len(fast.times))
    if df == 0:
        return Estimate(point, seeds=seeds, values=values, paired=pairs is not None, rates=rates)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * se
    log = math.log(point)
    return Estimate(
        point,
        math.exp(log - half),
        math.exp(log + half),
        pairs is not None,
        seeds,
        values=values,
        rates=rates,
        sd=sd,
        cells=(slow, fast),
    )


def _paired_spread(family: Family) -> tuple[float, int]:
    """Pooled standard deviation of per-seed differences over the family's pairable cell pairs."""
    by_rate: dict[Any, list[Cell]] = {}
    for cell in family.cells:
        by_rate.setdefault(cell.rate, []).append(cell)
    squares, df = 0.0, 0
    for cells in by_rate.values():
        for slow, fast in itertools.combinations(cells, 2):
            if _pairs(slow, fast) is not None and not slow.censored and not fast.censored:
                d = slow.logs - fast.logs
                squares, df = squares + float(((d - d.mean()) ** 2).sum()), df + len(d) - 1
    return (math.sqrt(squares / df), df) if df else family.spread


def _best(cells: Sequence[Cell]) -> Cell:
    """The stated rule: the lowest mean log-epochs; ties: more seeds, then the lower rate."""
    return min(cells, key=lambda c: (round(c.mean, 12), -len(c.times), float(c.rate)))


@functools.lru_cache(maxsize=64)
def _critical(slow: tuple[int, ...], fast: tuple[int, ...], df: int) -> float:
    """The 95% quantile of max |t| over every (slower rate, faster rate) contrast of cell means,
    cells of ``slow``/``fast`` seeds each, spread pooled with ``df`` degrees of freedom."""
    generator = np.random.default_rng(0)
    a = generator.standard_normal((_DRAWS, len(slow))) / np.sqrt(slow)
    b = generator.standard_normal((_DRAWS, len(fast))) / np.sqrt(fast)
    s = np.sqrt(generator.chisquare(df, _DRAWS) / df)[:, None, None]
    scale = np.sqrt(1 / np.asarray(slow)[:, None] + 1 / np.asarray(fast)[None, :])
    t = np.abs(a[:, :, None] - b[:, None, :]) / (s * scale)
    return float(np.quantile(t.reshape(_DRAWS, -1).max(axis=1), CONFIDENCE))


def tuned(slow: Sequence[Cell], fast: Sequence[Cell], family: Family) -> Estimate | None:
    """Each arm at its best rate (see the module's text); the pair chosen is in ``rates``."""
    slow = [c for c in slow if c.times]
    fast = [c for c in fast if c.times]
    reach_slow = [c for c in slow if c.censored < len(c.times)]
    reach_fast = [c for c in fast if c.censored < len(c.times)]
    if not reach_fast or not slow:
        return None
    if not reach_slow:  # no rate of the slower arm got there: at least this much slower
        point = math.exp(min(c.mean for c in slow) - _best(reach_fast).mean)
        return Estimate(point, bound=">=", rates=(None, _best(reach_fast).rate))
    best_slow, best_fast = _best(reach_slow), _best(reach_fast)
    point = math.exp(best_slow.mean - best_fast.mean)
    rates = (best_slow.rate, best_fast.rate)
    sd, df = family.spread
    values = tuple(
        (s, best_slow.times.get(s, (None,))[0], best_fast.times.get(s, (None,))[0])
        for s in sorted(set(best_slow.times) | set(best_fast.times), key=str)
    )
    seeds = (len(best_slow.times), len(best_fast.times))
    if df == 0 or best_slow.censored or best_fast.censored:
        model = "censored fit" if best_slow.censored or best_fast.censored else ""
        return Estimate(point, model=model, seeds=seeds, values=values, rates=rates)
    critical = _critical(tuple(len(c.times) for c in slow), tuple(len(c.times) for c in fast), df)
    low, high = np.empty((len(slow), len(fast))), np.empty((len(slow), len(fast)))
    for i, j in itertools.product(range(len(slow)), range(len(fast))):
        d = slow[i].mean - fast[j].mean
        half = critical * sd * math.sqrt(1 / len(slow[i].times) + 1 / len(fast[j].times))
        # a cell of censored runs is at least as slow as its mean says: no upper limit
        low[i, j] = d - half if not fast[j].censored else -np.inf
        high[i, j] = d + half if not slow[i].censored else np.inf
    bounds = float(low.max(axis=1).min()), float(high.max(axis=1).min())
    return Estimate(
        point,
        math.exp(bounds[0]),
        math.exp(bounds[1]),
        False,
        seeds,
        values=values,
        rates=rates,
        sd=sd,
        cells=(best_slow, best_fast),
    )


def kaplan_meier(times: Sequence[float], reached: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of runs that reached a level by each time, with right-censored runs
    (1 - Kaplan-Meier survival): event times (with 0 first) and the fraction reached after each."""
    times_arr, events = np.asarray(times, dtype=float), np.asarray(reached, dtype=bool)
    if not events.any():
        return np.array([0.0]), np.array([0.0])
    survival = stats.ecdf(
        stats.CensoredData(uncensored=times_arr[events], right=times_arr[~events])
    ).sf
    at_events = np.isin(
        survival.quantiles, times_arr[events]
    )  # scipy also lists the censoring times
    return (
        np.append(0.0, survival.quantiles[at_events]),
        np.append(0.0, 1 - survival.probabilities[at_events]),
    )
