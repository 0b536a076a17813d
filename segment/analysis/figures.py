"""The study's figures: curves per arm, speedup vs threshold level, fraction reached, calibration, masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from segment.analysis.runs import Run  # noqa: E402
from segment.files import atomic_open  # noqa: E402

__all__ = [
    "calibration_figure",
    "curves_figure",
    "mask_sheet_figure",
    "rate_figure",
    "reached_figure",
    "speedup_figure",
]

_COLORS = plt.get_cmap("tab10").colors


def _color(index: int):
    return _COLORS[index % len(_COLORS)]


def _band(runs: Sequence[Run], metric: str, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs of one validation metric at each ``unit`` value (runs of an arm share them)."""
    table: dict[float, list[float]] = {}
    for run in runs:
        for time, value in zip(*run.series(metric, unit), strict=True):
            table.setdefault(round(float(time), 3), []).append(value)
    times = np.array(sorted(table))
    values = [np.asarray(table[t]) for t in times]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return times, mean, std


def _save(figure: plt.Figure, path: Path) -> Path:
    """Save atomically: parallel sweep jobs may rewrite the same figure."""
    figure.tight_layout()
    with atomic_open(path, "wb") as file:
        figure.savefig(file, dpi=110, format=path.suffix.lstrip("."))
    plt.close(figure)
    return path


def curves_figure(arms: Mapping[str, Sequence[Run]], metric: str, path: Path, title: str,
                  hlines: Sequence[float] = (), unit: str = "epoch") -> Path:  # fmt: skip
    """Mean (line) and +-1 std over seeds (band) of a validation metric per arm, against ``unit``.

    Args:
        arms: ``{arm label: its runs}``.
        metric: ``val/loss``, ``val/miou``, ...
        hlines: Threshold levels drawn as dotted lines.
        unit: ``epoch`` (fractional) or ``seconds``.
    """
    figure, axes = plt.subplots(figsize=(8, 4.8))
    for index, (label, runs) in enumerate(arms.items()):
        times, mean, std = _band(runs, metric, unit)
        if times.size == 0:
            continue
        axes.plot(times, mean, color=_color(index), lw=1.5, label=f"{label} (n={len(runs)})")
        axes.fill_between(times, mean - std, mean + std, color=_color(index), alpha=0.15, lw=0)
    for level in hlines:
        axes.axhline(level, color="grey", ls=":", lw=1)
    axes.set(xlabel="epochs (fractional: validations within an epoch)" if unit == "epoch" else unit, ylabel=metric,
             title=title)  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return _save(figure, path)


def speedup_figure(rows: Sequence[dict], path: Path) -> Path:
    """Speedup (geometric mean of per-seed ratios, 95% interval) against the threshold level, per comparison.

    Args:
        rows: ``{"comparison", "metric", "level", "estimate": RatioEstimate | None}``.
    """
    comparisons = list(dict.fromkeys(row["comparison"] for row in rows))
    metrics = list(dict.fromkeys(row["metric"] for row in rows))
    figure, grid = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.5), squeeze=False)
    for axes, metric in zip(grid[0], metrics, strict=True):
        for index, comparison in enumerate(comparisons):
            points = [r for r in rows if r["comparison"] == comparison and r["metric"] == metric and r["estimate"]]
            exact = [r for r in points if not r["estimate"].bound]
            color = _color(index)
            if exact:
                x = np.array([r["level"] for r in exact])
                y = np.array([r["estimate"].point for r in exact])
                low = np.array([r["estimate"].low for r in exact])
                high = np.array([r["estimate"].high for r in exact])
                finite = np.isfinite(low)
                axes.errorbar(x[finite], y[finite], yerr=[y[finite] - low[finite], high[finite] - y[finite]],
                              fmt="o-", color=color, ms=4, capsize=2, lw=1, label=comparison)  # fmt: skip
                axes.plot(x[~finite], y[~finite], "o", color=color, ms=4, mfc="none")
            for r in points:
                if r["estimate"].bound:
                    marker = "^" if r["estimate"].bound == ">=" else "v"
                    axes.plot([r["level"]], [r["estimate"].point], marker, color=color, ms=6, mfc="none")
        axes.axhline(1.0, color="grey", lw=0.8)
        axes.set_yscale("log")
        axes.set(xlabel=f"{metric} threshold", ylabel="speedup (slower / faster, epochs)",
                 title=f"Speedup to {metric} thresholds; ^ / v: bounds where runs never got there")  # fmt: skip
        if metric.endswith("loss") or metric.endswith("ce"):
            axes.invert_xaxis()  # training moves right
        axes.grid(alpha=0.3, which="both")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    return _save(figure, path)


def rate_figure(panels: Mapping[str, Mapping[str, Mapping[float, Sequence[tuple[float, bool]]]]], path: Path) -> Path:
    """Epochs to each level against the learning rate: a line through each arm's medians, a point per seed.

    Args:
        panels: ``{level name: {arm label: {rate: [(epochs, reached) per seed]}}}``; runs that
            never reached the level are drawn hollow at their last validation, and the median
            line breaks where half an arm's seeds never got there.
    """
    figure, grid = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False, sharey=True)
    arms = list(dict.fromkeys(label for per_level in panels.values() for label in per_level))
    for axes, (level, per_arm) in zip(grid[0], panels.items(), strict=True):
        for label, cells in per_arm.items():
            color, rates = _color(arms.index(label)), sorted(cells)
            medians = [np.median([t if reached else np.inf for t, reached in cells[r]]) for r in rates]
            axes.plot(rates, [m if np.isfinite(m) else np.nan for m in medians], "-", color=color, lw=1.5,
                      label=label)  # fmt: skip
            for rate in rates:
                for time, reached in cells[rate]:
                    axes.plot([rate], [time], "o", color=color, ms=4, alpha=0.7, mfc=color if reached else "none")
        axes.set_xscale("log")
        axes.set(xlabel="learning rate", title=level)
        axes.grid(alpha=0.3, which="both")
    grid[0][0].set_ylabel("epochs to the level (hollow: never, last seen)")
    grid[0][-1].legend(fontsize=7)
    return _save(figure, path)


def reached_figure(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, int]]], path: Path) -> Path:
    """Fraction of an arm's runs that reached each level by each epoch (1 - Kaplan-Meier survival).

    Args:
        curves: ``{level name: {arm label: (epochs, fraction, runs)}}``.
    """
    figure, grid = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 4.0), squeeze=False, sharey=True)
    arms = list(dict.fromkeys(label for per_level in curves.values() for label in per_level))
    for axes, (level, per_arm) in zip(grid[0], curves.items(), strict=True):
        for label, (times, fraction, runs) in per_arm.items():
            axes.step(times, fraction, where="post", color=_color(arms.index(label)), label=f"{label} (n={runs})")
        axes.set(xlabel="epochs", title=level, ylim=(-0.02, 1.02))
        axes.grid(alpha=0.3)
    grid[0][0].set_ylabel("fraction of runs that reached it")
    grid[0][-1].legend(fontsize=6, loc="lower right")
    return _save(figure, path)


def calibration_figure(points: Sequence[dict], thin_classes: Sequence[str], loss_levels: Sequence[float],
                       miou_levels: Sequence[float], path: Path, loss_metric: str = "val/loss") -> Path:  # fmt: skip
    """Every validation of every run: the loss against mIoU (left) and against thin-class IoU (right)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    rows = [p for p in points if loss_metric in p and "val/miou" in p]
    left.scatter([r[loss_metric] for r in rows], [r["val/miou"] for r in rows], s=6, alpha=0.4, color=_color(0))
    for i, name in enumerate(thin_classes):
        pairs = [(r[loss_metric], r[f"val/iou/{name}"]) for r in rows if f"val/iou/{name}" in r]
        if pairs:
            x, y = zip(*pairs, strict=True)
            right.scatter(x, y, s=5, alpha=0.4, color=_color(i + 1), label=name)
    for axes, ylabel in ((left, "val/miou"), (right, "IoU of thin classes")):
        for level in loss_levels:
            axes.axvline(level, color="grey", ls=":", lw=1)
        axes.set(xlabel=loss_metric, ylabel=ylabel)
        axes.invert_xaxis()  # training moves right
        axes.grid(alpha=0.3)
    for level in miou_levels:
        left.axhline(level, color="grey", ls="--", lw=0.8)
    if thin_classes:
        right.legend(fontsize=7)
    left.set_title(f"Loss vs mask quality ({len(rows)} validations)")
    right.set_title("Loss vs thin-class IoU")
    return _save(figure, path)


def mask_sheet_figure(
    columns: Sequence[str], rows: Sequence[tuple[str, Sequence[Path | None], Sequence[str]]], path: Path
) -> Path:
    """A grid of saved mask images: one row per arm, ``None`` cells left blank with their caption.

    Args:
        columns: Column headings.
        rows: ``(row label, image files, captions)`` per row, one file and caption per column.
    """
    figure, grid = plt.subplots(len(rows), len(columns), figsize=(2.6 * len(columns), 2.2 * len(rows)), squeeze=False)
    for r, (label, files, captions) in enumerate(rows):
        for c, (file, caption) in enumerate(zip(files, captions, strict=True)):
            axes = grid[r][c]
            axes.set_xticks([])
            axes.set_yticks([])
            if file is not None and Path(file).is_file():
                with Image.open(file) as image:
                    axes.imshow(np.asarray(image.convert("RGB")))
            axes.set_xlabel(caption, fontsize=7)
            if r == 0:
                axes.set_title(columns[c], fontsize=8)
            if c == 0:
                axes.set_ylabel(label, fontsize=7)
    return _save(figure, path)
