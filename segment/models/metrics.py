"""Segmentation scores reduced from a confusion matrix (accumulate first, reduce second)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["iou_per_class", "confusion_scores"]


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Intersection over union per class.

    Args:
        confusion: ``(C, C)`` counts, rows = truth, columns = prediction, ignored pixels
            already excluded.

    Returns:
        ``(C,)`` IoU; NaN for a class absent from both truth and prediction, so that it
        neither rewards nor punishes the mean.
    """
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))


def confusion_scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """Macro mIoU, pixel accuracy and per-class IoU from a confusion matrix.

    mIoU is the mean over classes present in truth or prediction (NaN IoUs skipped);
    classes absent from both have no ``iou/<name>`` entry.

    Returns:
        ``{"miou": ..., "pixel_acc": ..., "iou/<class name>": ...}``.
    """
    iou = iou_per_class(confusion)
    total = confusion.sum()
    scores = {
        "miou": float(iou.nanmean()) if not iou.isnan().all() else float("nan"),
        "pixel_acc": float(confusion.diag().sum() / total) if total > 0 else float("nan"),
    }
    scores.update(
        {f"iou/{name}": float(value) for name, value in zip(class_names, iou, strict=True) if not value.isnan()}
    )
    return scores
