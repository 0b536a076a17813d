"""Segmentation scores reduced from a confusion matrix (accumulate first, reduce second)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = [
    "ValidationScores",
    "confusion_metric",
    "confusion_scores",
    "evaluation_scores",
    "iou_per_class",
]


def confusion_metric(num_classes: int, ignore_index: int) -> MulticlassConfusionMatrix:
    """The one confusion matrix of training, validation and evaluation: rows truth, columns
    prediction.

    torchmetrics accumulates it across batches (and across DDP ranks), ``ignore_index`` left out.
    """
    return MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Intersection over union per class.

    Args:
        confusion: ``(C, C)`` counts, rows = truth, columns = prediction, ignored pixels
            already excluded.

    Returns:
        ``(C,)`` IoU; NaN for a class absent from both truth and prediction, so that it neither
        rewards nor punishes the mean.
    """
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(
        union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan"))
    )


def confusion_scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """Macro mIoU, pixel accuracy and per-class IoU from a confusion matrix.

    mIoU is the mean over classes present in truth or prediction (NaN IoUs skipped); classes absent
    from both have no ``iou/<name>`` entry.

    Returns:
        ``{"miou": ..., "pixel_acc": ..., "iou/<class name>": ...}``.
    """
    full = evaluation_scores(confusion, class_names)
    scores = {"miou": full["miou"], "pixel_acc": full["pixel_acc"]}
    scores.update(
        {
            f"iou/{name}": row["iou"]
            for name, row in full["per_class"].items()
            if row["iou"] is not None
        }
    )
    return scores


def _mean(values: torch.Tensor) -> float:
    """The mean over the defined (non-NaN) values; NaN if none is."""
    return float(values.nanmean()) if not values.isnan().all() else float("nan")


def _value(x: torch.Tensor) -> float | None:
    return None if x.isnan() else float(x)


def evaluation_scores(confusion: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Every standard score of a confusion matrix (rows = truth, ignored pixels excluded).

    - ``miou``: mean IoU over classes present in truth or prediction (as in training);
    - ``pixel_acc``: correct / labelled pixels;
    - ``mean_class_acc``: mean per-class recall over classes present in the truth;
    - ``fw_iou``: IoU weighted by each class's share of labelled truth pixels;
    - ``mean_dice``: mean Dice (F1) over classes present in truth or prediction;
    - ``per_class``: ``{name: {"iou", "dice", "acc", "pixels"}}`` (None where undefined).

    Classes absent from both truth and prediction have no defined IoU or Dice and are left out of
    every mean; they are listed under ``absent_classes``.
    """
    confusion = confusion.double()
    true_positive = confusion.diag()
    truth, predicted = confusion.sum(1), confusion.sum(0)
    total = confusion.sum()
    iou = iou_per_class(confusion)
    dice = torch.where(
        truth + predicted > 0, 2 * true_positive / (truth + predicted).clamp(min=1), float("nan")
    )
    recall = torch.where(truth > 0, true_positive / truth.clamp(min=1), float("nan"))
    present = truth > 0

    return {
        "miou": _mean(iou),
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "mean_class_acc": _mean(recall),
        "fw_iou": float((truth[present] / total * iou[present]).sum())
        if total > 0
        else float("nan"),
        "mean_dice": _mean(dice),
        "per_class": {
            name: {
                "iou": _value(iou[c]),
                "dice": _value(dice[c]),
                "acc": _value(recall[c]),
                "pixels": int(truth[c]),
            }
            for c, name in enumerate(class_names)
        },
        "absent_classes": [name for c, name in enumerate(class_names) if iou[c].isnan()],
    }


class ValidationScores(nn.Module):
    """A validation's (or test's) scores, accumulated batch by batch: the training loss, plain
    unweighted cross-entropy (one scale to compare runs on, whatever the loss) and the confusion
    matrix's scores. Its states stay out of checkpoints."""

    def __init__(self, class_names: Sequence[str], ignore_index: int) -> None:
        super().__init__()
        self.class_names, self.ignore_index = list(class_names), ignore_index
        self.loss, self.ce = MeanMetric(), MeanMetric()
        self.confusion = confusion_metric(len(self.class_names), ignore_index)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch: its loss (a batch mean), logits ``(B, C, H, W)``, mask ``(B, H, W)``."""
        weight = mask.shape[0]
        self.loss.update(loss, weight=weight)
        labelled = (mask != self.ignore_index).sum().clamp(min=1)
        ce = F.cross_entropy(logits.float(), mask, ignore_index=self.ignore_index, reduction="sum")
        self.ce.update(ce / labelled, weight=weight)
        self.confusion.update(logits.argmax(dim=1), mask)

    def compute(self) -> dict[str, torch.Tensor | float]:
        """``loss``, ``ce``, then :func:`confusion_scores`; the states start over."""
        scores = {"loss": self.loss.compute(), "ce": self.ce.compute()}
        scores |= confusion_scores(self.confusion.compute(), self.class_names)
        for metric in (self.loss, self.ce, self.confusion):
            metric.reset()
        return scores
