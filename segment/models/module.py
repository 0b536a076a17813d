"""The LightningModule: any segmentation net + loss + optimiser, with torchmetrics scores."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from segment.models.metrics import confusion_scores

if TYPE_CHECKING:
    from segment.models.weights import WeightsRecord

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
        weights_fallback: For smp VGG16 encoders asking for ``imagenet``: use HED's VGG16
            weights, with a warning, when ImageNet's cannot be had (see
            :mod:`segment.models.weights`). The source actually used is in
            ``hparams.encoder_weights_used``.
        freeze_encoder_stages: Freeze the first N of the encoder's 5 stages (their
            parameters get no gradient and never change).
        unfreeze_at_epoch: Unfreeze the whole encoder from this epoch on (0-based), via
            :class:`~segment.callbacks.EncoderUnfreeze`; None keeps the frozen stages frozen.
        init_from: A checkpoint of this module to take the weights from (same net and
            classes); training still starts at epoch 0 with a fresh optimiser. To continue a
            run instead, use ``train.py ckpt_path=...``.

    The optimiser config may carry ``encoder_lr_mult``: the encoder's learning rate is the
    base rate times this factor (a second parameter group).
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
        weights_fallback: bool = True,
        freeze_encoder_stages: int = 0,
        unfreeze_at_epoch: int | None = None,
        init_from: str | None = None,
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
                "weights_fallback": bool(weights_fallback),
                "freeze_encoder_stages": int(freeze_encoder_stages),
                "unfreeze_at_epoch": unfreeze_at_epoch,
                "init_from": None if init_from is None else str(init_from),
            },
            logger=False,
        )
        num_classes = len(class_names)
        self.net, record = _build_net(self.hparams.net, num_classes, weights_fallback)
        # Stored with the checkpoint, so a results table can always say which weights a run started from.
        self.hparams["encoder_weights_used"] = record.as_dict()
        if freeze_encoder_stages:
            freeze_encoder_stages_(self.net, freeze_encoder_stages)
        self.criterion = instantiate(self.hparams.loss, ignore_index=ignore_index)
        # uint8 -> normalised float in one multiply-add: x * scale + shift.
        mean_t, std_t = torch.tensor(self.hparams.mean), torch.tensor(self.hparams.std)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

        if init_from is not None:
            self._load_weights(init_from)

        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index, validate_args=False)
        self._last_finite_loss: torch.Tensor | None = None

    def _load_weights(self, path: str | Path) -> None:
        """Copy net and normalisation weights from a checkpoint of this module (``init_from``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model.init_from: checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict")
        if state is None:
            raise ValueError(f"model.init_from: {path} has no state_dict; is it a checkpoint written by train.py?")
        ours = self.state_dict()
        mismatched = [k for k in ours if k in state and state[k].shape != ours[k].shape]
        missing = [k for k in ours if k not in state]
        if mismatched or missing:
            raise ValueError(
                f"model.init_from: {path} does not fit this model: {len(missing)} missing and "
                f"{len(mismatched)} differently shaped tensors (first: {(missing + mismatched)[0]}); "
                "was it trained with another net or number of classes?"
            )
        self.load_state_dict({k: state[k] for k in ours})
        log.info("weights initialised from %s (training starts at epoch 0)", path)

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    @property
    def weights_record(self) -> WeightsRecord:
        """Which encoder weights this module started from."""
        from segment.models.weights import WeightsRecord

        return WeightsRecord(**self.hparams.encoder_weights_used)

    def configure_callbacks(self) -> list:
        if self.hparams.unfreeze_at_epoch is None:
            return []
        from segment.callbacks.freezing import EncoderUnfreeze

        return [EncoderUnfreeze(self.hparams.unfreeze_at_epoch)]

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
        # One host sync per step (a GPU waits for it); the price of stopping at the first bad step.
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at epoch {self.current_epoch + 1}, step {self.global_step} "
                f"(last finite loss: {_item(self._last_finite_loss)}). The checkpoints saved so far are intact; "
                "try a lower model.optimizer.lr or trainer.gradient_clip_val=1.0"
            )
        self._last_finite_loss = loss.detach()
        self.train_loss.update(loss.detach(), weight=batch["image"].shape[0])
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:
            log.info("resumed from epoch %d (global step %d) of %s", self.current_epoch, self.global_step,
                     self.trainer.ckpt_path)  # fmt: skip

    # The global RNG states travel with every checkpoint and are restored on load, so a resumed
    # run shuffles, augments and drops out exactly like an uninterrupted one. (Lightning runs
    # the sanity check between load and training inside isolate_rng, so it draws nothing.)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def on_train_epoch_start(self) -> None:
        for group in self.trainer.optimizers[0].param_groups:
            name = "lr" if group.get("name", "base") == "base" else f"lr/{group['name']}"
            self.log(name, group["lr"], on_step=False, on_epoch=True)

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
        config = dict(self.hparams.optimizer)
        encoder_lr_mult = float(config.pop("encoder_lr_mult", 1.0))
        optimizer_factory = instantiate(config)
        encoder = getattr(self.net, "encoder", None)
        if encoder_lr_mult != 1.0 and encoder is not None:
            encoder_ids = {id(p) for p in encoder.parameters()}
            base_lr = optimizer_factory.keywords["lr"]
            params = [
                {"name": "base", "params": [p for p in self.parameters() if id(p) not in encoder_ids]},
                {"name": "encoder", "params": list(encoder.parameters()), "lr": base_lr * encoder_lr_mult},
            ]
        else:
            params = [{"name": "base", "params": list(self.parameters())}]
        # Frozen parameters stay in the optimiser (gradual unfreezing needs them there); without
        # gradients, torch optimisers leave them untouched, weight decay included.
        optimizer = optimizer_factory(params=params)
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
        used = hparams.pop("encoder_weights_used", None)
        hparams["init_from"] = None  # the checkpoint's own weights replace them anyway
        if "encoder_weights" in hparams["net"]:
            hparams["net"] = {**hparams["net"], "encoder_weights": None}
        module = cls(**hparams)
        module.load_state_dict(checkpoint["state_dict"])
        if used is not None:
            module.hparams["encoder_weights_used"] = used
        return module


def _item(value: torch.Tensor | None) -> float | None:
    return None if value is None else float(value)


def rng_states() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain types (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _build_net(config: dict, num_classes: int, fallback: bool) -> tuple[nn.Module, WeightsRecord]:
    """Instantiate the net; VGG16 encoder weights go through :func:`resolve_encoder_weights`."""
    # Imported here so that `python -m segment.models.weights` does not find itself pre-imported.
    from segment.models.weights import WeightsRecord, load_encoder_weights, resolve_encoder_weights

    spec = config.get("encoder_weights")
    if config.get("encoder_name") != "vgg16" or spec is None:
        net = _instantiate_smp(config, num_classes)
        source = "none" if spec is None else f"smp:{spec}"
        return net, WeightsRecord(source, requested=str(spec) if spec is not None else "none")
    net = instantiate({**config, "encoder_weights": None}, classes=num_classes)
    state, record = resolve_encoder_weights(spec, fallback=fallback)
    if state is not None:
        load_encoder_weights(net.encoder, state, str(record))
    log.info("encoder weights: %s", record)
    return net, record


def _instantiate_smp(config: dict, num_classes: int) -> nn.Module:
    """Instantiate a net whose pretrained weights (if any) smp itself fetches from the hub."""
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
            f"could not obtain encoder weights {config['encoder_weights']!r} for {config.get('encoder_name')!r}: "
            f"{cause}. Run once with internet access to fill the Hugging Face cache (HF_HOME), "
            "or set model.net.encoder_weights=null."
        ) from err


def freeze_encoder_stages_(net: nn.Module, stages: int) -> None:
    """Stop gradients to the first ``stages`` stages of ``net.encoder`` (VGG: blocks between poolings)."""
    encoder = getattr(net, "encoder", None)
    features = getattr(encoder, "features", None)
    if features is None:
        raise ValueError(f"model.freeze_encoder_stages needs a net with a VGG encoder; {type(net).__name__} has none")
    if not 0 <= stages <= 5:
        raise ValueError(f"model.freeze_encoder_stages={stages}: VGG16 has 5 stages")
    stage = 1
    for layer in features:
        if isinstance(layer, nn.MaxPool2d):
            stage += 1
        elif stage <= stages:
            layer.requires_grad_(False)
