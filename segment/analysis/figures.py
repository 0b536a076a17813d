"""The study's figures: curves over seeds, epochs-to-threshold bars, calibration, mask sheet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from segment.analysis.runs import Run  # noqa: E402
from segment.files import atomic_open  # noqa: E402

__all__ = ["calibration_figure", "curves_figure", "mask_sheet_figure", "seconds_figure", "threshold_bars_figure"]

_COLORS = plt.get_cmap("tab10").colors


def _color(models: Sequence[str], model: str):
    return _COLORS[list(models).index(model) % len(_COLORS)]


def _band(runs: Sequence[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per epoch, mean and std of one metric over the runs that logged it at that epoch."""
    table: dict[int, list[float]] = {}
    for run in runs:
        for epoch, value in zip(*run.series(metric), strict=True):
            table.setdefault(epoch, []).append(value)
    epochs = np.array(sorted(table))
    values = [np.asarray(table[e]) for e in epochs]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return epochs, mean, std


def _save(figure: plt.Figure, path: Path) -> Path:
    """Save atomically: parallel sweep jobs may rewrite the same figure."""
    figure.tight_layout()
    with atomic_open(path, "wb") as file:
        figure.savefig(file, dpi=110, format=path.suffix.lstrip("."))
    plt.close(figure)
    return path


def curves_figure(
    runs: Sequence[Run], models: Sequence[str], metric_pairs: Sequence[tuple[str, str]], path: Path,
    title: str, hlines: Sequence[float] = (),
) -> Path:  # fmt: skip
    """Per-epoch mean (line) and +-1 std over seeds (band) per model, one axes.

    Args:
        metric_pairs: ``(metric, line style)``, e.g. ``[("val/loss", "-"), ("train/loss", "--")]``.
        hlines: Threshold levels drawn as dotted lines.
    """
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model in models:
        group = [run for run in runs if run.model == model]
        for metric, style in metric_pairs:
            epochs, mean, std = _band(group, metric)
            if epochs.size == 0:
                continue
            color = _color(models, model)
            axes.plot(epochs, mean, style, color=color, marker="o", ms=3, label=f"{model} {metric} (n={len(group)})")
            axes.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15, lw=0)
    for level in hlines:
        axes.axhline(level, color="grey", ls=":", lw=1)
    axes.set(xlabel="epoch", title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return _save(figure, path)


def threshold_bars_figure(
    rows: dict[str, dict[str, list[float]]], totals: dict[str, int], models: Sequence[str], path: Path
) -> Path:
    """Grouped bars: mean epochs to each threshold per model, +-1 std, with reached/total counts.

    Args:
        rows: ``{threshold: {model: [epochs of the seeds that reached it]}}``.
        totals: ``{model: number of usable runs}``.
    """
    thresholds = list(rows)
    width = 0.8 / max(len(models), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(thresholds) * len(models) / 2), 4.5))
    for i, model in enumerate(models):
        x = np.arange(len(thresholds)) + (i - (len(models) - 1) / 2) * width
        means = [np.mean(rows[t][model]) if rows[t].get(model) else 0.0 for t in thresholds]
        stds = [np.std(rows[t][model], ddof=1) if len(rows[t].get(model, [])) > 1 else 0.0 for t in thresholds]
        bars = axes.bar(x, means, width, yerr=stds, capsize=3, color=_color(models, model), label=model)
        for bar, t in zip(bars, thresholds, strict=True):
            reached = len(rows[t].get(model, []))
            axes.annotate(f"{reached}/{totals.get(model, 0)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    axes.set_xticks(np.arange(len(thresholds)), thresholds, fontsize=8)
    axes.set(ylabel="epochs to reach (mean +- std over seeds that reached it)", title="Epochs to threshold")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def calibration_figure(
    runs: Sequence[Run], models: Sequence[str], thin_classes: Sequence[str], loss_levels: Sequence[float],
    miou_levels: Sequence[float], path: Path,
) -> Path:  # fmt: skip
    """Every (run, epoch): val/loss against val/miou (left) and against thin-class IoU (right)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for model in models:
        for run in (r for r in runs if r.model == model):
            rows = [row for row in run.epochs.values() if "val/loss" in row and "val/miou" in row]
            left.scatter([r["val/loss"] for r in rows], [r["val/miou"] for r in rows], s=12, alpha=0.7,
                         color=_color(models, model), label=model if run is _first(runs, model) else None)  # fmt: skip
    for i, name in enumerate(thin_classes):
        points = [(row["val/loss"], row[f"val/iou/{name}"]) for run in runs for row in run.epochs.values()
                  if "val/loss" in row and f"val/iou/{name}" in row]  # fmt: skip
        if points:
            x, y = zip(*points, strict=True)
            right.scatter(x, y, s=10, alpha=0.6, color=_COLORS[(i + 3) % len(_COLORS)], label=name)
    for axes, ylabel in ((left, "val/miou"), (right, "IoU of thin classes")):
        for level in loss_levels:
            axes.axvline(level, color="grey", ls=":", lw=1)
        axes.set(xlabel="val/loss", ylabel=ylabel)
        axes.invert_xaxis()  # training moves right
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    for level in miou_levels:
        left.axhline(level, color="grey", ls="--", lw=0.8)
    left.set_title("Loss vs mask quality (every run and epoch)")
    right.set_title("Loss vs thin-class IoU")
    return _save(figure, path)


def _first(runs: Sequence[Run], model: str) -> Run:
    return next(run for run in runs if run.model == model)


def mask_sheet_figure(
    columns: Sequence[str], rows: Sequence[tuple[str, Sequence[Path | None], Sequence[str]]], path: Path
) -> Path:
    """A grid of saved mask images: one row per model, ``None`` cells left blank with their caption.

    Args:
        columns: Column headings.
        rows: ``(row label, image files, captions)`` per row, one file and caption per column.
    """
    figure, grid = plt.subplots(len(rows), len(columns), figsize=(2.6 * len(columns), 2.2 * len(rows)), squeeze=False)
    for r, (label, files, captions) in enumerate(rows):
        for c, (file, caption) in enumerate(zip(files, captions, strict=True)):
            axes = grid[r, c]
            axes.set_xticks([])
            axes.set_yticks([])
            if file is not None and Path(file).is_file():
                axes.imshow(np.asarray(Image.open(file)))
            axes.set_xlabel(caption, fontsize=7)
            if r == 0:
                axes.set_title(columns[c], fontsize=8)
            if c == 0:
                axes.set_ylabel(label, fontsize=8)
    return _save(figure, path)


def seconds_figure(runs: Sequence[Run], models: Sequence[str], path: Path, hlines: Sequence[float] = ()) -> Path:
    """Validation loss against training wall-clock seconds, one line per run."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for model in models:
        for run in (r for r in runs if r.model == model):
            points = [(h["seconds"], h["val_loss"]) for h in run.history if "val_loss" in h]
            if points:
                x, y = zip(*points, strict=True)
                axes.plot(x, y, "-o", ms=3, color=_color(models, model), alpha=0.8,
                          label=model if run is _first(runs, model) else None)  # fmt: skip
    for level in hlines:
        axes.axhline(level, color="grey", ls=":", lw=1)
    axes.set(xlabel="training seconds (validation excluded)", ylabel="val/loss", title="Validation loss vs time")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)
