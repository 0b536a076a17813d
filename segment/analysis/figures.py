"""The study's figures: curves per arm, speedup vs threshold level, fraction reached, calibration,
masks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from PIL import Image  # noqa: E402

from segment.analysis.runs import Run  # noqa: E402
from segment.analysis.thresholds import LOSS_METRICS  # noqa: E402
from segment.files import atomic_open  # noqa: E402

__all__ = [
    "calibration_figure",
    "curves_figure",
    "mask_sheet_figure",
    "rate_figure",
    "reached_figure",
    "size_curves_figure",
    "size_speedup_figure",
    "speedup_figure",
]

_COLORS = plt.get_cmap("tab10").colors


def _color(index: int):
    return _COLORS[index % len(_COLORS)]


def _band(runs: Sequence[Run], metric: str, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs of one validation metric at each ``unit`` value (runs of an arm share
    them)."""
    table: dict[float, list[float]] = {}
    for run in runs:
        for time, value in zip(*run.series(metric, unit), strict=True):
            table.setdefault(round(float(time), 3), []).append(value)
    times = np.array(sorted(table))
    values = [np.asarray(table[t]) for t in times]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return times, mean, std


def _log_axis(axis, set_scale) -> None:
    """A log scale whose ticks read as plain numbers (0.5, 0.7, 1), not powers of ten."""
    set_scale("log")
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _save(figure: plt.Figure, path: Path, layout: bool = True) -> Path:
    """Save atomically: parallel sweep jobs may rewrite the same figure."""
    if layout:
        figure.tight_layout()
    with atomic_open(path, "wb") as file:
        figure.savefig(file, dpi=110, format=path.suffix.lstrip("."))
    plt.close(figure)
    return path


def curves_figure(
    arms: Mapping[str, Sequence[Run]],
    metric: str,
    path: Path,
    title: str,
    hlines: Sequence[float] = (),
    unit: str = "epoch",
) -> Path:
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
    axes.set(
        xlabel="epochs (fractional: validations within an epoch)" if unit == "epoch" else unit,
        ylabel=metric,
        title=title,
    )
    if metric in LOSS_METRICS:  # a loss falls by factors: 1.2 to 0.4 spread evenly
        _log_axis(axes.yaxis, axes.set_yscale)
        if hlines:  # the first validations' losses (up to 20 here) would squash the levels
            axes.set_ylim(top=2.5 * max(hlines))
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7)
    return _save(figure, path)


def speedup_figure(series: Mapping[str, Sequence[tuple[str, float, object]]], path: Path) -> Path:
    """Speedup (ratio of geometric means, 95% interval) against the threshold level, one panel per
    metric.

    Args:
        series: ``{label: [(metric, level, Estimate | None), ...]}``; bounds drawn as open
            triangles, censored fits as open circles. The legend stands below the panels, over no
            data.
    """
    metrics = list(dict.fromkeys(metric for points in series.values() for metric, _, _ in points))
    figure, grid = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.6), squeeze=False)
    offsets = np.linspace(
        -0.015, 0.015, max(len(series), 1)
    )  # side by side, so the bars do not overlap
    for axes, metric in zip(grid[0], metrics, strict=True):
        for index, (label, points) in enumerate(series.items()):
            found = [(level, e) for m, level, e in points if m == metric and e is not None]
            _speedups(axes, found, label, _color(index), offsets[index])
        axes.axhline(1.0, color="grey", lw=0.8)
        axes.set_yscale("log")
        axes.set(
            xlabel=f"{metric} threshold",
            ylabel="speedup (slower / faster, epochs)",
            title=f"to {metric} thresholds (^: a bound; open: a censored fit)",
        )
        if metric.endswith("loss") or metric.endswith("ce"):
            axes.invert_xaxis()  # training moves right
        axes.grid(alpha=0.3, which="both")
    handles, labels = grid[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(
            handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False
        )
        figure.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 4), 1, 1))
    return _save(figure, path, layout=False)


def _speedups(axes, found: Sequence[tuple[float, Any]], label: str, color, shift: float) -> None:
    """One series of :func:`speedup_figure`: intervals where there are, open markers elsewhere
    (a bound: a triangle; a censored fit: a circle)."""
    exact = [(level, e) for level, e in found if np.isfinite(e.low)]
    tuned = label.endswith("best rates")
    if exact:
        x = np.array([level for level, _ in exact]) + shift
        y = np.array([e.point for _, e in exact])
        errors = [
            y - np.array([e.low for _, e in exact]),
            np.array([e.high for _, e in exact]) - y,
        ]
        axes.errorbar(
            x,
            y,
            yerr=errors,
            fmt="s-" if tuned else "o-",
            color=color,
            ms=4,
            capsize=2,
            lw=2 if tuned else 1,
            label=label,
        )
    for level, e in found:
        if not np.isfinite(e.low):
            marker = {">=": "^", "<=": "v"}.get(e.bound, "o")
            axes.plot([level + shift], [e.point], marker, color=color, ms=6, mfc="none")


def rate_figure(
    panels: Mapping[str, Mapping[str, Mapping[float, Sequence[tuple[float, bool]]]]], path: Path
) -> Path:
    """Epochs to each level against the learning rate, on log axes: a line through each arm's
    geometric means, a marker per seed (spread sideways so that tied seeds stay visible), every rate
    labelled.

    Args:
        panels: ``{level name: {arm name: {rate: [(epochs, reached) per seed]}}}``; runs that never
            reached the level are drawn hollow at their last validation.
    """
    figure, grid = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False, sharey=True
    )
    arms = list(dict.fromkeys(label for per_level in panels.values() for label in per_level))
    rates = sorted(
        {rate for per_level in panels.values() for cells in per_level.values() for rate in cells}
    )
    for axes, (level, per_arm) in zip(grid[0], panels.items(), strict=True):
        for label, cells in per_arm.items():
            _rate_series(axes, cells, label, arms.index(label), len(arms))
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(rates, [f"{r:.0e}".replace("e-0", "e-") for r in rates])
        axes.minorticks_off()
        axes.set(xlabel="learning rate", title=level)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=7, loc="upper center")
    grid[0][0].set_ylabel("epochs to the level (log; hollow: never, last seen)")
    return _save(figure, path)


def _rate_series(
    axes, cells: Mapping[float, Sequence[tuple[float, bool]]], label: str, index: int, arms: int
) -> None:
    """One arm of a :func:`rate_figure` panel: its geometric means joined, a marker per seed."""
    color, side = _color(index), (index - (arms - 1) / 2) * 0.06
    ordered = sorted(cells)
    means = [np.exp(np.mean(np.log([t for t, _ in cells[r]]))) for r in ordered]
    axes.plot(ordered, means, "-", color=color, lw=1.5, label=label)
    for rate in ordered:
        for k, (time, reached) in enumerate(cells[rate]):
            x = rate * 10 ** (side + 0.015 * (k - (len(cells[rate]) - 1) / 2))
            axes.plot(
                [x], [time], "o", color=color, ms=4, alpha=0.75, mfc=color if reached else "none"
            )


def reached_figure(
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, int]]], path: Path
) -> Path:
    """Fraction of an arm's runs that reached each level by each epoch (1 - Kaplan-Meier survival).

    Args:
        curves: ``{level name: {arm label: (epochs, fraction, runs)}}``.
    """
    figure, grid = plt.subplots(
        1, len(curves), figsize=(4.6 * len(curves), 4.0), squeeze=False, sharey=True
    )
    arms = list(dict.fromkeys(label for per_level in curves.values() for label in per_level))
    for axes, (level, per_arm) in zip(grid[0], curves.items(), strict=True):
        for label, (times, fraction, runs) in per_arm.items():
            axes.step(
                times,
                fraction,
                where="post",
                color=_color(arms.index(label)),
                label=f"{label} (n={runs})",
            )
        axes.set(xlabel="epochs", title=level, ylim=(-0.02, 1.02))
        axes.grid(alpha=0.3)
    grid[0][0].set_ylabel("fraction of runs that reached it")
    grid[0][-1].legend(fontsize=6, loc="lower right")
    return _save(figure, path)


def _loss_axis(
    axes, ylabel: str, losses: Sequence[float], loss_levels: Sequence[float], loss_metric: str
) -> None:
    """A loss x-axis on a log scale, the levels marked, training moving right."""
    for level in loss_levels:
        axes.axvline(level, color="grey", ls=":", lw=1)
    axes.set(xlabel=loss_metric, ylabel=ylabel)
    _log_axis(axes.xaxis, axes.set_xscale)
    if losses and loss_levels:  # the first validations' losses, up to 20 on CamVid, would
        # squash the levels
        axes.set_xlim(2.5 * max(loss_levels), 0.9 * min(losses))
    else:
        axes.invert_xaxis()
    axes.grid(alpha=0.3)


def calibration_figure(
    points: Sequence[dict],
    thin_classes: Sequence[str],
    loss_levels: Sequence[float],
    miou_levels: Sequence[float],
    path: Path,
    loss_metric: str = "val/loss",
) -> Path:
    """Every validation of every run: the loss against mIoU (left) and against thin-class IoU
    (right)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    rows = [p for p in points if loss_metric in p and "val/miou" in p]
    left.scatter(
        [r[loss_metric] for r in rows],
        [r["val/miou"] for r in rows],
        s=6,
        alpha=0.4,
        color=_color(0),
    )
    for i, name in enumerate(thin_classes):
        pairs = [(r[loss_metric], r[f"val/iou/{name}"]) for r in rows if f"val/iou/{name}" in r]
        if pairs:
            x, y = zip(*pairs, strict=True)
            right.scatter(x, y, s=5, alpha=0.4, color=_color(i + 1), label=name)
    for axes, ylabel in ((left, "val/miou"), (right, "IoU of thin classes")):
        _loss_axis(axes, ylabel, [r[loss_metric] for r in rows], loss_levels, loss_metric)
    for level in miou_levels:
        left.axhline(level, color="grey", ls="--", lw=0.8)
    if thin_classes:
        right.legend(fontsize=7)
    left.set_title(f"Loss vs mask quality ({len(rows)} validations)")
    right.set_title("Loss vs thin-class IoU")
    return _save(figure, path)


def _class_legend(
    figure: plt.Figure, classes: Sequence[tuple[str, Sequence[int]]], rows: int
) -> None:
    """The class colours below a :func:`mask_sheet_figure` of ``rows`` rows."""
    patches = [
        matplotlib.patches.Patch(color=np.asarray(rgb) / 255, label=name) for name, rgb in classes
    ]
    figure.legend(
        handles=patches, loc="lower center", ncol=min(len(patches), 8), fontsize=7, frameon=False
    )
    figure.tight_layout(rect=(0, 0.35 / (2.2 * rows + 0.6) * (1 + len(patches) // 8), 1, 1))


def mask_sheet_figure(
    columns: Sequence[str],
    rows: Sequence[tuple[str, Sequence[Path | None], Sequence[str]]],
    path: Path,
    classes: Sequence[tuple[str, Sequence[int]]] = (),
) -> Path:
    """A grid of saved mask images: one row per arm, ``None`` cells left blank with their caption,
    and a legend of the class colours below.

    Args:
        columns: Column headings.
        rows: ``(row label, image files, captions)`` per row, one file and caption per column.
        classes: ``(class name, RGB colour)`` of the masks' palette.
    """
    figure, grid = plt.subplots(
        len(rows), len(columns), figsize=(2.6 * len(columns), 2.2 * len(rows) + 0.6), squeeze=False
    )
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
    if classes:
        _class_legend(figure, classes, len(rows))
    return _save(figure, path, layout=not classes)


def size_speedup_figure(
    series: Mapping[str, Sequence[tuple[float, object]]], path: Path, unit: str = "images"
) -> Path:
    """Speedup against training-set size, both on log axes: one series per level, its 95% interval
    as error bars; bounds as open triangles, censored fits as open circles.

    Args:
        series: ``{level name: [(training images, Estimate)]}``.
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    shifts = np.linspace(-0.012, 0.012, max(len(series), 1))  # side by side, in log10 units
    sizes = sorted({n for points in series.values() for n, _ in points})
    for index, (label, points) in enumerate(series.items()):
        color, factor = _color(index), 10 ** shifts[index]
        exact = [(n, e) for n, e in points if np.isfinite(e.low)]
        if exact:
            x = np.array([n for n, _ in exact]) * factor
            y = np.array([e.point for _, e in exact])
            low, high = np.array([e.low for _, e in exact]), np.array([e.high for _, e in exact])
            axes.errorbar(x, y, yerr=[y - low, high - y], fmt="o-", color=color, ms=4, capsize=3)
        for n, e in (p for p in points if not np.isfinite(p[1].low)):
            marker = {">=": "^", "<=": "v"}.get(e.bound, "o")
            axes.plot([n * factor], [e.point], marker, color=color, ms=6, mfc="none")
        axes.plot([], [], "o-", color=color, label=label)  # every level in the legend
    axes.axhline(1.0, color="grey", lw=0.8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(sizes, [f"{n:g}" for n in sizes])
    axes.minorticks_off()
    axes.set(
        xlabel="training images",
        ylabel=f"speedup (slower / faster, {unit} seen)",
        title="speedup by training-set size\n(triangles: bounds; open circles: censored fits)",
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return _save(figure, path)


def size_curves_figure(
    panels: Mapping[str, Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]]],
    metric: str,
    path: Path,
    hlines: Sequence[float] = (),
) -> Path:
    """A metric against images seen, one panel per training-set size: every run a thin line,
    coloured by arm.

    Args:
        panels: ``{panel title: {arm name: [(images seen, values) per run]}}``.
        hlines: Threshold levels drawn as dotted lines.
    """
    figure, grid = plt.subplots(
        1, len(panels), figsize=(4.4 * len(panels), 4.0), squeeze=False, sharey=True
    )
    arms = list(dict.fromkeys(name for per_arm in panels.values() for name in per_arm))
    for axes, (title, per_arm) in zip(grid[0], panels.items(), strict=True):
        for name, curves in per_arm.items():
            color = _color(arms.index(name))
            for k, (x, y) in enumerate(curves):
                axes.plot(x, y, color=color, lw=0.8, alpha=0.8, label=None if k else name)
        for level in hlines:
            axes.axhline(level, color="grey", ls=":", lw=1)
        axes.set(xlabel="training images seen", title=title)
        if metric in LOSS_METRICS:
            _log_axis(axes.yaxis, axes.set_yscale)
            values = [v for curves in per_arm.values() for _, y in curves for v in y]
            if hlines and values:  # the first validations' losses would squash the levels
                axes.set_ylim(top=max(2.5 * max(hlines), 1.2 * np.quantile(values, 0.75)))
        axes.grid(alpha=0.3, which="both")
        if any(per_arm.values()):
            axes.legend(fontsize=7)
    grid[0][0].set_ylabel(f"{metric} (each run a line)")
    return _save(figure, path)
