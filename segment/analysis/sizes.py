"""The data-size study's answer by training-set size (docs/study.md, "The data-size study").

Each size is one comparison of the declared effect (scratch vs. pretrained at that
``data.train_size``), measured in images seen, the unit that means the same at every size. Per
size: the speedup to each headline level with its per-cell interval
(:meth:`~segment.analysis.study.Comparison.estimate`); over sizes, the slope of the log-speedup on
log-size (:func:`~segment.analysis.stats.size_trend`); the mIoU at a fixed early budget of images;
the lowest loss each run reached. The report's section
(:func:`segment.analysis.size_tables.section`) appears only where the study's runs, or its sweep,
differ in ``data.train_size``; cells without a completed run read "not yet measured".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from segment.analysis.runs import Run
from segment.analysis.stats import Estimate, Trend, mean_difference, mean_interval, size_trend
from segment.analysis.study import SIZE_KEY, Comparison, Study, matches, order_key, resolution
from segment.analysis.thresholds import Threshold
from segment.config.names import value_text

__all__ = [
    "EARLY_EPOCHS",
    "Quality",
    "Size",
    "applies",
    "at_budget",
    "early_budget",
    "effect",
    "loss_curves",
    "lowest",
    "quality",
    "side_names",
    "sizes",
    "speedup_series",
    "speedups",
    "swept_values",
    "trend",
]

UNIT = "images_seen"
# The early budget: this many epochs of the study's largest training set, in images (CamVid:
# 5 x 367 = 1,835), read at the last validation at or before it.
EARLY_EPOCHS = 5
MISSING = "not yet measured"


@dataclass
class Size:
    """One training-set size: its override (``46``; ``none``: the whole split), the training
    images its runs record, the completed runs of each side and their comparison (None until
    both sides have one)."""

    value: str
    images: int | None
    runs: dict[str, list[Run]] = field(default_factory=lambda: {"slower": [], "faster": []})
    comparison: Comparison | None = None
    started: dict[str, dict[Any, Run]] = field(default_factory=lambda: {"slower": {}, "faster": {}})

    @property
    def label(self) -> str:
        """``46``, ``367 (all)``; ``all`` before a run of the whole split recorded its size."""
        if self.value == "none":
            return f"{self.images} (all)" if self.images else "all"
        return str(self.images or self.value)


def size_of(run: Run) -> str | None:
    """The run's ``data.train_size`` as its override's text (``none``: the whole split); None for
    a run folder whose overrides could not be read."""
    return run.overrides.get(SIZE_KEY, "none") if run.overrides else None


def swept_values(runs: list[Run], key: str) -> set[str]:
    """The values a sweep declares for ``key`` (``46,122,null``) as override text."""
    found = set()
    for run in runs:
        items = run.swept.get(key, "")
        if "(" not in items:  # a plain list, not range(...) or choice(...)
            found |= {value_text(yaml.safe_load(v)) for v in items.split(",") if v.strip()}
    return found


def _order(value: str) -> tuple[int, float]:
    return (1, 0.0) if value == "none" else (0, float(value))


def effect(study: Study) -> str | None:
    """The declared comparison the sizes are compared by: the first that pairs arms, else the
    first whose side some run matches."""
    if study.comparisons:
        return study.comparisons[0].effect
    declared = study.spec["comparisons"]
    return next(
        (
            name
            for name, sides in declared.items()
            if any(matches(run, side) for run in study.runs for side in sides.values())
        ),
        None,
    )


def applies(study: Study) -> bool:
    """Whether the study compares training-set sizes: its runs, or its sweep, hold more than one
    ``data.train_size``."""
    return len(_values(study)) > 1 and effect(study) is not None


def _values(study: Study) -> list[str]:
    values = {size_of(run) for run in study.runs} - {None} | swept_values(study.runs, SIZE_KEY)
    return sorted(values, key=_order)


def sizes(study: Study) -> list[Size]:
    """Every size the runs or the sweep name, smallest first, with its runs and comparison."""
    name = effect(study)
    sides = study.spec["comparisons"].get(name, {})
    found = {value: Size(value, None) for value in _values(study)}
    for run in (run for run in study.runs if size_of(run) is not None):
        size = found[size_of(run)]
        size.images = size.images or (run.record.data or {}).get("train")
        for side, wanted in sides.items():
            if matches(run, wanted):
                size.started[side][run.seed] = run
                if run.usable:
                    size.runs[side].append(run)
    for comparison in (c for c in study.comparisons if c.effect == name):
        size = found[size_of(comparison.slower.runs[0])]
        # one comparison per size; where other overrides vary too, the first here (every one is
        # in the report's comparison tables)
        size.comparison = size.comparison or comparison
    return list(found.values())


def speedups(size: Size, levels: list[Threshold]) -> list[Estimate | None]:
    """The slower side's images to each level over the faster side's, per-cell intervals."""
    if size.comparison is None:
        return [None] * len(levels)
    return [size.comparison.estimate(level, UNIT) for level in levels]


def speedup_series(study: Study, found: list[Size]) -> dict[str, list[tuple[float, Estimate]]]:
    """``{level name: [(training images, estimate)]}`` at each headline level: the figure's
    series (sizes without a measured ratio left out)."""
    return {
        level.name: [
            (size.images, e)
            for size in found
            if size.images and (e := speedups(size, [level])[0]) is not None
        ]
        for level in study.headline
    }


def trend(study: Study, level: Threshold) -> tuple[Trend | None, list[Size]]:
    """The slope of log-speedup on log training images at ``level`` (sizes with an interval), and
    the sizes left out."""
    points, left = [], []
    for size in sizes(study):
        estimate = speedups(size, [level])[0]
        if size.images and estimate is not None and np.isfinite(estimate.low):
            points.append((size.images, estimate))
        else:
            left.append(size)
    return size_trend(points), left


def early_budget(study: Study, found: list[Size]) -> tuple[int, int] | None:
    """``(budget, grid point)``: :data:`EARLY_EPOCHS` epochs of the largest training set in images,
    and the last validation at or before it on the runs' grid; None until every size's runs
    recorded its images."""
    if not found or any(size.images is None for size in found):
        return None
    budget = EARLY_EPOCHS * max(size.images for size in found)
    step = resolution(study.usable, UNIT)
    return budget, int(budget // step * step) if step else budget


def at_budget(run: Run, point: float, metric: str = "val/miou") -> tuple[float, bool]:
    """``metric`` at the run's last validation at or before ``point`` images, and whether the run
    had ended before ``point`` (its last value carried: a run stopped by the stop level, or one
    whose image budget was smaller)."""
    rows = [r for r in run.validations if metric in r and r[UNIT] <= point]
    if not rows:
        return float("nan"), False
    return float(rows[-1][metric]), float(run.validations[-1][UNIT]) < point


def lowest(run: Run, metric: str = "val/loss") -> tuple[float, float, float]:
    """The lowest ``metric`` a run reached, the images seen then, and its last value."""
    rows = [r for r in run.validations if metric in r]
    best = min(rows, key=lambda r: r[metric])
    return float(best[metric]), float(best[UNIT]), float(rows[-1][metric])


@dataclass(frozen=True)
class Quality:
    """mIoU at the early budget at one size. ``sides``: per side, the mean over its runs, the
    mean's t interval, the runs and the runs that had ended before the budget; ``difference``:
    faster - slower with its interval (paired t by seed where ``paired``, else Welch)."""

    sides: dict[str, tuple[float, float, float, int, int]]
    difference: tuple[float, float, float]
    paired: bool


def quality(size: Size, point: float) -> Quality:
    """The mIoU of each side's runs at the budget's grid ``point``, and their difference."""
    found = {side: {r.seed: at_budget(r, point) for r in runs} for side, runs in size.runs.items()}
    sides = {
        side: (
            *mean_interval([value for value, _ in values.values()]),
            len(values),
            sum(ended for _, ended in values.values()),
        )
        for side, values in found.items()
    }
    slow, fast = ({s: v for s, (v, _) in found[side].items()} for side in ("slower", "faster"))
    paired = _paired(size)
    return Quality(sides, mean_difference(slow, fast, paired), paired)


def _paired(size: Size) -> bool:
    """Every seed has both sides' runs, and each pair saw the same data order."""
    slow = {run.seed: run for run in size.runs["slower"]}
    fast = {run.seed: run for run in size.runs["faster"]}
    if set(slow) != set(fast) or len(slow) < 2:
        return False
    keys = [(order_key(slow[s]), order_key(fast[s])) for s in slow]
    return all(a is not None and a == b for a, b in keys)


def loss_curves(
    study: Study, found: list[Size], names: dict[str, str]
) -> dict[str, dict[str, list[tuple[list[float], list[float]]]]]:
    """``{size label: {side name: [(images seen, loss) per run]}}``: the figure's panels."""
    return {
        f"{size.label} training images": {
            names[side]: [run.series(study.loss_metric, UNIT) for run in runs]
            for side, runs in size.runs.items()
        }
        for size in found
    }


def side_names(study: Study) -> dict[str, str]:
    """``{"slower": "scratch", "faster": "pretrained"}``: the declared sides by short name."""
    declared = study.spec["comparisons"].get(effect(study), {})
    names = study.spec["names"]
    return {
        side: " ".join(names.get(str(v), str(v)) for v in declared.get(side, {}).values())
        for side in ("slower", "faster")
    }
