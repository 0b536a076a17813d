"""Losses for class-imbalanced segmentation: weighted cross-entropy and sums of losses.

smp's Dice, Focal, Lovász and Tversky losses are used as they are (``conf/loss/``); this
module adds what is not a single class there: a cross-entropy with class weights that is 0, not NaN,
on a batch without a labelled pixel, the class-weighting schemes, and a weighted sum of any losses
(``ce_dice``, ``ce_lovasz``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CLASS_WEIGHTINGS",
    "CrossEntropyLoss",
    "SumOfLosses",
    "class_weights",
    "needs_class_statistics",
    "resolve_class_weights",
    "with_class_weights",
]

CLASS_WEIGHTINGS = ("median_frequency", "inverse_log")


def class_weights(method: str, pixels: Sequence[int], image_pixels: Sequence[int]) -> list[float]:
    """Per-class loss weights from the training split's label counts.

    Args:
        method: ``median_frequency`` (SegNet; Eigen & Fergus 2015): ``freq_c = pixels_c /
            pixels of the images that contain c``, ``w_c = median(freq) / freq_c``;
            ``inverse_log`` (ENet): ``w_c = 1 / ln(1.02 + pixels_c / all labelled pixels)``.
        pixels: Labelled pixels per class.
        image_pixels: Per class, the labelled pixels of the images that contain it.

    Returns:
        One weight per class; 0 for a class the split never shows.
    """
    pixels_arr, images_arr = np.asarray(pixels, dtype=float), np.asarray(image_pixels, dtype=float)
    present = pixels_arr > 0
    weights = np.zeros_like(pixels_arr)
    if method == "median_frequency":
        freq = np.divide(
            pixels_arr, images_arr, out=np.zeros_like(pixels_arr), where=images_arr > 0
        )
        weights[present] = np.median(freq[present]) / freq[present]
    elif method == "inverse_log":
        share = pixels_arr / max(pixels_arr.sum(), 1.0)
        weights[present] = 1.0 / np.log(1.02 + share[present])
    else:
        raise ValueError(
            f"class_weights={method!r}; expected null, a list, or one of {list(CLASS_WEIGHTINGS)}"
        )
    return [round(float(w), 6) for w in weights]


def resolve_class_weights(config: Any, statistics: Any) -> Any:
    """A copy of a loss config with every ``class_weights: <method>`` replaced by the weights it
    names.

    Args:
        config: The ``model.loss`` config (plain containers).
        statistics: The training split's :class:`~segment.data.dataset.DatasetStatistics`.
    """
    if isinstance(config, Mapping):
        resolved = {key: resolve_class_weights(value, statistics) for key, value in config.items()}
        method = resolved.get("class_weights")
        if isinstance(method, str):
            resolved["class_weights"] = class_weights(
                method, statistics.pixels, statistics.image_pixels
            )
        return resolved
    if isinstance(config, list | tuple):
        return [resolve_class_weights(item, statistics) for item in config]
    return config


def with_class_weights(config: Any, datamodule: Any) -> Any:
    """The ``model.loss`` config to build, with every class-weighting method replaced by its
    weights.

    The weights come from the training split's label counts, so the data module is set up here, and
    only here, when a method is named (``loss=ce_balanced``).
    """
    config = (
        OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    )
    if not needs_class_statistics(config):
        return config
    datamodule.setup("fit")
    return resolve_class_weights(
        config, datamodule.train_dataset.statistics or datamodule.train_dataset.scan()
    )


def needs_class_statistics(config: Any) -> bool:
    """Whether a loss config names a class-weighting method (which needs the training split's
    counts)."""
    if isinstance(config, Mapping):
        return isinstance(config.get("class_weights"), str) or any(
            needs_class_statistics(v) for v in config.values()
        )
    if isinstance(config, list | tuple):
        return any(needs_class_statistics(item) for item in config)
    return False


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, optionally class-weighted, skipping ``ignore_index``.

    The mean is over labelled pixels (weighted by their class weights, as torch's), and a batch
    without any labelled pixel gives 0 with zero gradients instead of NaN.

    Args:
        ignore_index: Label value excluded.
        class_weights: One weight per class, or None. (A method name, ``median_frequency`` or
            ``inverse_log``, is replaced by its weights before the loss is built:
            :func:`resolve_class_weights`.)
        label_smoothing: As in :func:`torch.nn.functional.cross_entropy`.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weights: Sequence[float] | str | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(class_weights, str):
            raise ValueError(
                f"loss.class_weights={class_weights!r} must be resolved from the training split's "
                "label counts first (train.py does it); pass a list of weights to build the loss "
                "directly"
            )
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        weight = None if class_weights is None else torch.tensor([float(w) for w in class_weights])
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` -> scalar loss."""
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise ValueError(
                f"loss.class_weights has {self.weight.numel()} values for {logits.shape[1]} classes"
            )
        total = F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction="sum",
            label_smoothing=self.label_smoothing,
        )
        labelled = target != self.ignore_index
        if self.weight is None:
            norm = labelled.sum()
        else:
            norm = self.weight[target.clamp(0, logits.shape[1] - 1)][labelled].sum()
        return (
            total / norm.clamp(min=1e-12) if self.weight is not None else total / norm.clamp(min=1)
        )


class SumOfLosses(nn.Module):
    """``sum(weight_i * loss_i)`` over any losses, each built with ``ignore_index``.

    Args:
        terms: ``[{"weight": 1.0, "loss": {"_target_": ..., ...}}, ...]``.
        ignore_index: Passed to every term.
    """

    def __init__(self, terms: Sequence[Mapping[str, Any]], ignore_index: int = 255) -> None:
        super().__init__()
        if not terms:
            raise ValueError("loss.terms is empty; give at least one {weight, loss}")
        self.weights = [float(term.get("weight", 1.0)) for term in terms]
        self.losses = nn.ModuleList(
            instantiate(dict(term["loss"]), ignore_index=ignore_index) for term in terms
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(
            weight * loss(logits, target)
            for weight, loss in zip(self.weights, self.losses, strict=True)
        )
