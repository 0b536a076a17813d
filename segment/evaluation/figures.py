"""Pictures of an evaluation: the confusion matrix and input / truth / prediction / error sheets."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from segment.data.labels import colorize  # noqa: E402

__all__ = ["confusion_figure", "error_map", "mask_sheet", "overlay"]

ERROR_COLORS = {"correct": (40, 40, 40), "wrong": (230, 30, 30), "ignored": (0, 0, 0)}


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Row-normalised confusion matrix (rows = truth) as an ``(H, W, 3)`` uint8 image."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    size = max(5.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=60, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows sum to 1)")
    if len(class_names) <= 20:
        for i in ticks:
            for j in ticks:
                if normalised[i, j] >= 0.005:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{normalised[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def error_map(truth: np.ndarray, prediction: np.ndarray, ignore_index: int) -> np.ndarray:
    """``(H, W, 3)``: wrong pixels red, right ones dark grey, ignored ones black."""
    out = np.empty((*truth.shape, 3), np.uint8)
    out[:] = ERROR_COLORS["correct"]
    out[truth != prediction] = ERROR_COLORS["wrong"]
    out[truth == ignore_index] = ERROR_COLORS["ignored"]
    return out


def mask_sheet(
    image: np.ndarray,
    truth: np.ndarray,
    prediction: np.ndarray,
    palette: Sequence,
    ignore_index: int,
) -> np.ndarray:
    """One row: input | truth | prediction | error map, ``(H, 4W, 3)`` uint8."""
    return np.concatenate(
        [
            image,
            colorize(truth, palette),
            colorize(prediction, palette),
            error_map(truth, prediction, ignore_index),
        ],
        axis=1,
    )


def overlay(
    image: np.ndarray, prediction: np.ndarray, palette: Sequence, alpha: float = 0.5
) -> np.ndarray:
    """The prediction's colours blended over the image."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(prediction, palette).astype(
        np.float32
    )
    return blended.round().astype(np.uint8)
