"""Losses beyond what torch and smp ship as single classes."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

__all__ = ["CrossEntropyDiceLoss"]


class CrossEntropyDiceLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice``, both skipping ``ignore_index``.

    Args:
        ignore_index: Label value excluded from both terms.
        ce_weight: Weight of the cross-entropy term.
        dice_weight: Weight of the (multiclass, soft) Dice term.
    """

    def __init__(self, ignore_index: int = 255, ce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss(ignore_index=ignore_index)
        self.dice = DiceLoss(mode="multiclass", ignore_index=ignore_index)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` -> scalar loss."""
        return self.ce_weight * self.cross_entropy(logits, target) + self.dice_weight * self.dice(logits, target)
