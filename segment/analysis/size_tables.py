"""The report's section by training-set size (markdown), from what :mod:`segment.analysis.sizes`
computes: the speedup in images per size, the trend over sizes, mask quality at an early budget and
the lowest loss of every run."""

from __future__ import annotations

import math

import numpy as np

from segment.analysis import sizes
from segment.analysis.sizes import MISSING, UNIT, Size
from segment.analysis.stats import Trend
from segment.analysis.study import Study, resolution
from segment.analysis.tables import p_text, ratio

__all__ = ["section"]


def _count(number: float) -> str:
    return f"{number:,.0f}"


def speedup_table(study: Study, found: list[Size], names: dict[str, str]) -> str:
    """Per size: the runs of each side and the speedup in images to each headline level."""
    lines = [
        f"| training images | runs ({names['slower']} / {names['faster']}) | "
        + " | ".join(level.name for level in study.headline)
        + " |",
        "|---|---|" + "---|" * len(study.headline),
    ]
    for size in found:
        cells = [
            (MISSING if size.comparison is None else "neither side got there")
            if e is None
            else ratio(e) + (f" {p_text(e.p)}" if np.isfinite(e.low) else "")
            for e in sizes.speedups(size, study.headline)
        ]
        runs = f"{len(size.runs['slower'])} / {len(size.runs['faster'])}"
        lines.append(f"| {size.label} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def trend_line(name: str, found: Trend | None, left: list[Size]) -> str:
    """``- val_loss<=1: slope -0.31 [-0.62, -0.01] ...`` or why there is none yet."""
    out = ", ".join(size.label for size in left)
    if found is None:
        return f"- {name}: no trend yet: it needs an interval at two sizes" + (
            f" (none at {out})" if out else ""
        )
    factor, low, high = found.per_halving
    verdict = (
        ("the speedup grows as the training set shrinks" if found.slope < 0 else "it shrinks")
        if found.holds
        else "not established (the interval holds 0)"
    )
    text = (
        f"- {name}: slope {found.slope:+.2f} [{found.low:+.2f}, {found.high:+.2f}] "
        f"({found.df:.1f} df; sizes {', '.join(_count(n) for n in found.sizes)}): halving the "
        f"training set multiplies the speedup by {factor:.2f}x [{low:.2f}, {high:.2f}]; {verdict}"
    )
    return text + (f"; left out, no interval: {out}" if out else "")


def _mean(value: tuple[float, float, float, int, int]) -> str:
    mean, low, high, runs, ended = value
    if not runs:
        return MISSING
    interval = f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) else ""
    return f"{mean:.3f}{interval} ({runs}; {ended} ended before)"


def quality_table(found: list[Size], names: dict[str, str], point: float) -> str:
    """Per size: each side's mean mIoU at the budget's grid point, and the difference."""
    lines = [
        f"| training images | {names['slower']}: val/miou [95% CI] (runs; ended before) | "
        f"{names['faster']} | {names['faster']} - {names['slower']} [95% CI] |",
        "|---|---|---|---|",
    ]
    for size in found:
        q = sizes.quality(size, point)
        d, low, high = q.difference
        if not (q.sides["slower"][3] and q.sides["faster"][3]):
            diff = MISSING
        else:
            how = "paired" if q.paired else "unpaired"
            diff = f"{d:+.3f} " + (
                f"[{low:+.3f}, {high:+.3f}], {how}" if math.isfinite(low) else "(no interval)"
            )
        cells = [_mean(q.sides["slower"]), _mean(q.sides["faster"]), diff]
        lines.append(f"| {size.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lowest_table(study: Study, found: list[Size], names: dict[str, str]) -> str:
    """The lowest loss each run reached (arm x size x seed), the images then and its last value;
    a run not completed by its status."""
    seeds = sorted(
        {s for size in found for side in size.started.values() for s in side}
        | {int(s) for s in sizes.swept_values(study.runs, "seed") if s.lstrip("-").isdigit()},
        key=str,
    )
    lines = [
        "| arm | training images | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for side in ("slower", "faster"):
        for size in found:
            cells = []
            for seed in seeds:
                run = size.started[side].get(seed)
                if run is None or not run.usable:
                    cells.append(MISSING + (f" ({run.status})" if run else ""))
                    continue
                best, images, last = sizes.lowest(run, study.loss_metric)
                cells.append(f"{best:.3f} at {_count(images)} (last {last:.3f})")
            lines.append(f"| {names[side]} | {size.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(study: Study) -> str:
    """``## By training-set size``: empty where the study does not compare sizes."""
    if not sizes.applies(study):
        return ""
    found, names = sizes.sizes(study), sizes.side_names(study)
    step = resolution(study.usable, UNIT)
    parts = [
        "## By training-set size",
        f"{names['slower']} / {names['faster']} at each training-set size, in **images seen** "
        f"(every run validates every {_count(step)} images whatever its size, so images compare "
        "across sizes where epochs do not). Each ratio is the size's own comparison: its two "
        "cells alone, a paired t on the per-seed log ratios where both runs of every seed saw "
        "the same data order, else Welch's t, never below the grid's rounding (as every "
        f"comparison of this report). `{MISSING}`: no completed run of a side at that size yet.",
        speedup_table(study, found, names),
        "The trend: the least-squares slope of log-speedup on log training images, through the "
        "sizes whose ratio has an interval, each with its own standard error (nothing pooled), "
        "Welch-Satterthwaite degrees of freedom (docs/study.md). A negative slope: pretraining "
        "saves more as the training set shrinks.",
        "\n".join(trend_line(lv.name, *sizes.trend(study, lv)) for lv in study.headline),
        "### Mask quality at an early budget\n\n" + _early(study, found, names),
        f"### The lowest {study.loss_metric} each run reached\n\nAt the images seen then, with "
        "its last value: a last value well above the lowest says the net overfits its set.\n\n"
        + lowest_table(study, found, names),
    ]
    return "\n\n".join(parts)


def _early(study: Study, found: list[Size], names: dict[str, str]) -> str:
    budget = sizes.early_budget(study, found)
    if budget is None:
        return (
            f"{MISSING}: the budget is {sizes.EARLY_EPOCHS} epochs of the largest training set, "
            "whose size its first run records."
        )
    images, point = budget
    largest = max(size.images for size in found)
    return (
        f"The budget: {sizes.EARLY_EPOCHS} epochs of the largest training set ({_count(largest)} "
        f"images) = {_count(images)} images; each run's val/miou at its last validation at or "
        f"before it ({_count(point)} images on the grid). A run that had ended before that point "
        "(it reached the stop level, or its image budget was smaller) carries its last value: "
        "the table counts them; for a side that stops early this understates its quality. "
        "Intervals: a t interval on each side's mean over its runs; the difference by a paired "
        "t on the per-seed differences where both runs of every seed saw the same data order, "
        "else Welch's t.\n\n" + quality_table(found, names, point)
    )
