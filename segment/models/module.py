"""The LightningModule: any segmentation net + loss + optimiser, with torchmetrics scores."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from segment.models.metrics import confusion_scores

__all__ = ["SegmentationModule", "IMAGENET_MEAN", "IMAGENET_STD"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _plain(config: Mapping | None) -> dict | None:
    """A resolved plain-dict copy, so checkpoints hold no OmegaConf objects."""
    if config is None:
        return None
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config)


class SegmentationModule(LightningModule):
    """Trains and validates a segmentation network.

    The network, loss, optimiser and scheduler arrive as Hydra configs (``_target_``
    dicts) and are stored as plain hyperparameters, so a checkpoint rebuilds the module
    without the config tree. Images arrive as uint8 ``(B, 3, H, W)`` and are normalised
    here with buffers (``mean``, ``std``) that travel with the weights.

    Args:
        net: Config of an ``nn.Module`` mapping ``(B, 3, H, W)`` to ``(B, C, H, W)`` logits;
            called with ``classes=len(class_names)``.
        loss: Config of a loss ``(logits, target) -> scalar``; called with ``ignore_index``.
        optimizer: ``_partial_`` config of a ``torch.optim`` optimiser.
        scheduler: ``_partial_`` config of an epoch-wise LR scheduler, or None.
        class_names: One name per class (from the dataset's metadata).
        ignore_index: Label skipped by loss and metrics.
        mean: Per-channel RGB mean in ``[0, 1]`` units.
        std: Per-channel RGB standard deviation in ``[0, 1]`` units.
        channels_last: Run convolutions in NHWC, faster with bf16 on CPUs and tensor cores.
    """

    def __init__(
        self,
        net: Mapping,
        loss: Mapping,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        *,
        class_names: Sequence[str],
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "net": _plain(net),
                "loss": _plain(loss),
                "optimizer": _plain(optimizer),
                "scheduler": _plain(scheduler),
                "class_names": list(class_names),
                "ignore_index": int(ignore_index),
                "mean": [float(m) for m in mean],
                "std": [float(s) for s in std],
                "channels_last": bool(channels_last),
            },
            logger=False,
        )
        num_classes = len(class_names)
        self.net = _build_net(self.hparams.net, num_classes)
        self.criterion = instantiate(self.hparams.loss, ignore_index=ignore_index)
        # uint8 -> normalised float in one multiply-add: x * scale + shift.
        mean_t, std_t = torch.tensor(self.hparams.mean), torch.tensor(self.hparams.std)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 RGB (or float in ``[0, 255]``) -> ``(B, C, H, W)`` logits."""
        x = images.float() * self.scale + self.shift
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        # Losses in fp32: softmax/log-sum-exp in bf16 loses the small differences that matter late in training.
        return self.criterion(logits.float(), batch["mask"]), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at epoch {self.current_epoch}, step {self.global_step}"
            )
        self.train_loss.update(loss.detach(), weight=batch["image"].shape[0])
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.train_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self.val_loss.update(loss, weight=batch["image"].shape[0])
        self.val_confusion.update(logits.argmax(dim=1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        scores = confusion_scores(self.val_confusion.compute(), self.class_names)
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/miou", scores.pop("miou"), prog_bar=True)
        self.log_dict({f"val/{name}": value for name, value in scores.items()})
        self.val_loss.reset()
        self.val_confusion.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler = instantiate(self.hparams.scheduler)(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
        """Rebuild a trained module from its checkpoint alone, without downloading anything.

        ``load_from_checkpoint`` would rebuild the net from its config first, which for a
        pretrained encoder means fetching weights the checkpoint already holds.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
            raise ValueError(f"{path} is not a checkpoint written by train.py (no hyper_parameters/state_dict)")
        hparams = dict(checkpoint["hyper_parameters"])
        if "encoder_weights" in hparams["net"]:
            hparams["net"] = {**hparams["net"], "encoder_weights": None}
        module = cls(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
        return module


def _build_net(config: dict, num_classes: int) -> nn.Module:
    try:
        return instantiate(config, classes=num_classes)
    except Exception as err:
        # huggingface_hub raises OSError subclasses when it can neither reach the hub nor
        # find a cache; Hydra wraps them in an InstantiationException.
        cause = err
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__
        if cause is None or not config.get("encoder_weights"):
            raise
        raise RuntimeError(
            f"could not obtain encoder weights {config['encoder_weights']!r} for "
            f"{config.get('encoder_name')!r}: {cause}\n"
            "This machine seems offline and the weights are not in the Hugging Face cache "
            "(HF_HOME, default ~/.cache/huggingface). Fix: run once with internet access to fill the cache, "
            "or train from scratch with model=unet_scratch (model.net.encoder_weights=null)."
        ) from err
