"""The LightningModule: any segmentation net + loss + optimiser, with torchmetrics scores."""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F
from torchmetrics import MeanMetric

from segment.checkpoints import read_checkpoint
from segment.config.trust import check_trusted_targets, without_pretrained
from segment.models.metrics import confusion_metric, confusion_scores
from segment.models.nets import build_net, size_multiple
from segment.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from segment.models.weights import WeightsRecord

__all__ = ["SegmentationModule", "rng_states", "set_rng_states"]

log = logging.getLogger(__name__)


def _plain(config: Mapping | None) -> dict | None:
    """A resolved plain-dict copy, so checkpoints hold no OmegaConf objects."""
    if config is None:
        return None
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config)


class SegmentationModule(LightningModule):
    """Trains and validates a segmentation network.

    The network, loss, optimiser and scheduler arrive as Hydra configs (``_target_`` dicts) and are
    stored as plain hyperparameters, so a checkpoint rebuilds the module without the config tree
    (from an allow-list of targets: :func:`from_checkpoint`). Images arrive as uint8 ``(B, 3, H,
    W)`` and are normalised here with buffers (``scale``, ``shift``) that travel with the weights.

    Logged: ``train/loss`` (epoch mean), ``train/loss_step``; per validation ``val/loss`` (the
    training loss), ``val/ce`` (plain unweighted cross-entropy, whatever the training
    loss: one scale to compare runs on), ``val/miou``, ``val/pixel_acc``, ``val/iou/<class>``.

    Args:
        net: Config of an ``nn.Module`` mapping ``(B, 3, H, W)`` to ``(B, C, H, W)`` logits;
            called with ``classes=len(class_names)`` (see :func:`~segment.models.nets.build_net`).
        loss: Config of a loss ``(logits, target) -> scalar``; called with ``ignore_index``.
        optimizer: ``_partial_`` config of a ``torch.optim`` optimiser.
        scheduler: Lightning's lr-scheduler dict: ``scheduler`` (a ``_partial_`` config of a
            torch scheduler) and ``interval`` (``epoch`` or ``step``), ``frequency``, ``monitor``
            (for ReduceLROnPlateau), ``name``; or None for a fixed rate.
        class_names: One name per class (from the dataset's metadata).
        ignore_index: Label skipped by loss and metrics.
        mean: Per-channel RGB mean in ``[0, 1]`` units.
        std: Per-channel RGB standard deviation in ``[0, 1]`` units.
        channels_last: Run convolutions in NHWC, faster with bf16 on CPUs and tensor cores.
        weights_fallback: VGG16 encoders asking for ``imagenet``: use HED's VGG16 weights,
            with a warning, when ImageNet's cannot be had. The source actually used is
            :attr:`weights_record` (saved in every checkpoint as ``encoder_weights_used``).
        encoder_lr_mult: The encoder's learning rate is the base rate times this (a second
            parameter group, named ``encoder``); 1.0: one group.
        init_from: A checkpoint of this module to take the weights from (same net and
            classes); training still starts at epoch 0 with a fresh optimiser. To continue a run
            instead, use ``train.py ckpt_path=...``.
        compile: ``torch.compile`` the net (in place: checkpoints keep their keys).
        finite_check_every_n_steps: How often the training loss is checked for NaN/inf. A
            check makes the host wait for the device; in between, non-finite losses are noted on the
            device and reported (with their step) at the next check, and always before a validation
            or the end of an epoch, so no checkpoint is written after one.
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
        encoder_lr_mult: float = 1.0,
        init_from: str | None = None,
        compile: bool = False,
        finite_check_every_n_steps: int = 25,
    ) -> None:
        super().__init__()
        if finite_check_every_n_steps < 1:
            raise ValueError(
                f"model.finite_check_every_n_steps={finite_check_every_n_steps} must be >= 1"
            )
        if scheduler is not None and "scheduler" not in scheduler:
            raise ValueError(
                "model.scheduler must be Lightning's lr-scheduler dict: {scheduler: {_target_: "
                "..., _partial_: true}, interval: epoch|step, ...}; got keys "
                f"{sorted(scheduler)} (see conf/scheduler/)"
            )
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
                "encoder_lr_mult": float(encoder_lr_mult),
                "init_from": None if init_from is None else str(init_from),
                "compile": bool(compile),
                "finite_check_every_n_steps": int(finite_check_every_n_steps),
            },
            logger=False,
        )
        num_classes = len(class_names)
        # Which encoder weights the net started from: saved with every checkpoint
        # (on_save_checkpoint).
        self.net, self.weights_record = build_net(self.hparams.net, num_classes, weights_fallback)
        if encoder_lr_mult != 1.0 and getattr(self.net, "encoder", None) is None:
            raise ValueError(
                f"model.encoder_lr_mult={encoder_lr_mult}: {type(self.net).__name__} has no "
                "encoder (net.encoder) to give another rate; remove the key"
            )
        # not recursive: a SumOfLosses builds its terms itself, each with the ignore index
        self.criterion = instantiate(
            self.hparams.loss, ignore_index=ignore_index, _recursive_=False
        )
        # uint8 -> normalised float in one multiply-add: x * scale + shift.
        mean_t, std_t = torch.tensor(self.hparams.mean), torch.tensor(self.hparams.std)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, 3, 1, 1))
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

        self.train_loss = MeanMetric()
        self.train_loss.persistent(
            True
        )  # its running epoch mean travels with checkpoints (mid-epoch resumes)
        self.val_loss = MeanMetric()
        self.val_ce = MeanMetric()
        self.val_confusion = confusion_metric(num_classes, ignore_index)
        # The non-finite guard's device-side record: the first bad step (-1: none) and the last
        # finite loss.
        self.register_buffer("_first_bad_step", torch.tensor(-1), persistent=False)
        self.register_buffer("_last_finite_loss", torch.tensor(float("nan")), persistent=False)
        if (
            init_from is not None
        ):  # once every state tensor exists: the running ones are left as they start
            self._load_weights(init_from)
        if compile:
            self.net.compile()

    def _load_weights(self, path: str | Path) -> None:
        """Copy net and normalisation weights from a checkpoint of this module (``init_from``)."""
        state = read_checkpoint(path, "model.init_from", require=("state_dict",))["state_dict"]
        ours = {k: v for k, v in self.state_dict().items() if k not in self._running_state()}
        mismatched = [k for k in ours if k in state and state[k].shape != ours[k].shape]
        missing = [k for k in ours if k not in state]
        if mismatched or missing:
            raise ValueError(
                f"model.init_from: {path} does not fit this model: {len(missing)} missing and "
                f"{len(mismatched)} differently shaped tensors (first: "
                f"{(missing + mismatched)[0]}); was it trained with another net or number of "
                "classes?"
            )
        self.load_state_dict({**self._running_state(), **{k: state[k] for k in ours}})
        log.info("weights initialised from %s (training starts at epoch 0)", path)

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    @property
    def size_multiple(self) -> int:
        """What input height and width must be multiples of (the net's downsampling)."""
        return size_multiple(self.net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 RGB (or float in ``[0, 255]``) -> ``(B, C, H, W)`` logits."""
        x = images.float() * self.scale + self.shift
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        # Losses in fp32: softmax/log-sum-exp in bf16 loses the small differences that matter late
        # in training.
        return self.criterion(logits.float(), batch["mask"]), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self._note_finite(loss.detach())
        if (self.global_step + 1) % self.hparams.finite_check_every_n_steps == 0:
            self._check_finite()
        self.train_loss.update(loss.detach(), weight=batch["image"].shape[0])
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _note_finite(self, loss: torch.Tensor) -> None:
        """Record on the device whether (and first when) the loss went non-finite: no host sync."""
        bad = ~torch.isfinite(loss)
        first_bad = self._first_bad_step < 0
        step = torch.tensor(self.global_step, device=loss.device)
        self._first_bad_step = torch.where(bad & first_bad, step, self._first_bad_step)
        self._last_finite_loss = torch.where(bad | ~first_bad, self._last_finite_loss, loss.float())

    def _check_finite(self) -> None:
        """Stop at the first non-finite training loss, naming its epoch and step (one host sync)."""
        first_bad = int(self._first_bad_step)
        if first_bad < 0:
            return
        per_epoch = (
            max(int(self.trainer.num_training_batches), 1) if self._trainer is not None else 1
        )
        raise FloatingPointError(
            f"non-finite training loss at epoch {first_bad // per_epoch + 1}, step {first_bad} "
            f"(last finite loss: {float(self._last_finite_loss):.6g}). The checkpoints saved so "
            "far are intact; try a lower model.optimizer.lr or trainer.gradient_clip_val=1.0"
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 >= self.trainer.num_training_batches:  # before the epoch's checkpoint
            self._check_finite()

    def on_validation_start(self) -> None:  # before the checkpoint that follows a validation
        self._check_finite()

    def on_fit_start(self) -> None:
        size = getattr(self.trainer.datamodule, "image_size", None)
        multiple = self.size_multiple
        if size and any(int(s) % multiple for s in size):
            fitting = [-(-int(s) // multiple) * multiple for s in size]
            raise ValueError(
                f"data.image_size={list(size)}: this net downsamples {multiple}x, so height and "
                f"width must be multiples of {multiple}; try data.image_size={fitting}"
            )

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:
            log.info(
                "resumed from epoch %d (global step %d) of %s",
                self.current_epoch,
                self.global_step,
                self.trainer.ckpt_path,
            )

    # The global RNG states travel with every checkpoint and are restored on load, so a resumed
    # run shuffles, augments and drops out exactly like an uninterrupted one. (Lightning runs
    # the sanity check between load and training inside isolate_rng, so it draws nothing.)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()
        checkpoint["encoder_weights_used"] = self.weights_record.as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        checkpoint["state_dict"] = {**self._running_state(), **checkpoint["state_dict"]}

    def _running_state(self) -> dict[str, torch.Tensor]:
        """The training loss's running mean (empty between epochs), for checkpoints written before
        it was saved."""
        return {f"train_loss.{key}": value for key, value in self.train_loss.state_dict().items()}

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.train_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        weight = batch["image"].shape[0]
        self.val_loss.update(loss, weight=weight)
        labelled = (batch["mask"] != self.hparams.ignore_index).sum().clamp(min=1)
        ce = F.cross_entropy(
            logits.float(), batch["mask"], ignore_index=self.hparams.ignore_index, reduction="sum"
        )
        self.val_ce.update(ce / labelled, weight=weight)
        self.val_confusion.update(logits.argmax(dim=1), batch["mask"])

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(
            batch, batch_idx
        )  # the same scores, logged as test/* (train.py test_after_fit=true)

    def _log_scores(self, prefix: str) -> None:
        scores = confusion_scores(self.val_confusion.compute(), self.class_names)
        loss = self.val_loss.compute()
        if prefix == "val" and not self.trainer.sanity_checking:
            self._check_validation(float(loss))
        self.log(f"{prefix}/loss", loss, prog_bar=True)
        self.log(f"{prefix}/ce", self.val_ce.compute())
        self.log(f"{prefix}/miou", scores.pop("miou"), prog_bar=True)
        self.log_dict({f"{prefix}/{name}": value for name, value in scores.items()})
        self.val_loss.reset()
        self.val_ce.reset()
        self.val_confusion.reset()

    def _check_validation(self, loss: float) -> None:
        """Stop at a non-finite validation loss or buffer (BatchNorm's running statistics can
        overflow while the training loss stays finite), before this validation's checkpoints are
        written: no NaN is ever kept as "best", and the run is recorded as failed."""
        buffers = [
            f"net.{name}"
            for name, b in self.net.named_buffers()
            if b.is_floating_point() and not bool(torch.isfinite(b).all())
        ]
        if math.isfinite(loss) and not buffers:
            return
        kept = sorted(
            {cb.last_model_path or cb.best_model_path for cb in self.trainer.checkpoint_callbacks}
            - {""}
        )
        raise FloatingPointError(
            f"non-finite validation at epoch {self.current_epoch + 1}, step {self.global_step}: "
            f"val/loss {loss}"
            + (f", {len(buffers)} non-finite buffers ({buffers[0]}, ...)" if buffers else "")
            + f". The last finite checkpoint: {kept[-1] if kept else 'none yet'}; try a lower "
            "model.optimizer.lr or trainer.gradient_clip_val=1.0"
        )

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        encoder = getattr(self.net, "encoder", None)
        multiplier = self.hparams.encoder_lr_mult
        optimizer_factory = instantiate(self.hparams.optimizer)
        if multiplier != 1.0 and encoder is not None:
            encoder_ids = {id(p) for p in encoder.parameters()}
            params = [
                {"name": "base", "params": [p for p in trainable if id(p) not in encoder_ids]},
                {
                    "name": "encoder",
                    "params": [p for p in trainable if id(p) in encoder_ids],
                    "lr": optimizer_factory.keywords["lr"] * multiplier,
                },
            ]
        else:
            params = trainable
        optimizer = optimizer_factory(params=params)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        config = {"name": "lr", **self.hparams.scheduler}
        scheduler = dict(config["scheduler"])
        if (
            "total_steps" in scheduler and scheduler["total_steps"] is None
        ):  # null: this run's optimiser steps
            scheduler["total_steps"] = int(self.trainer.estimated_stepping_batches)
        config["scheduler"] = instantiate(scheduler)(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": config}

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> SegmentationModule:
        """Rebuild a trained module from its checkpoint alone, without downloading anything.

        A checkpoint is data, not code: its net, loss, optimiser and scheduler configs are rebuilt
        only from allow-listed targets (:func:`~segment.checkpoints.check_trusted_targets`), every
        pretrained switch at any depth is off (:func:`~segment.checkpoints.without_pretrained`), and
        its encoder weights come from its own state dict (``load_from_checkpoint`` would fetch
        pretrained weights the checkpoint already holds).
        """
        checkpoint = read_checkpoint(path, "ckpt_path", require=("hyper_parameters", "state_dict"))
        hparams = dict(checkpoint["hyper_parameters"])
        # the checkpoint's own weights replace any pretrained ones: build nothing else, and fetch
        # nothing, whatever sits where (a net in a ModuleDict, in the loss, a key left to smp's
        # default)
        for key in ("net", "loss", "optimizer", "scheduler"):
            check_trusted_targets(hparams.get(key), f"{path}: hyper_parameters.{key}")
            if key in hparams:
                hparams[key] = without_pretrained(hparams[key])
        hparams |= {"init_from": None, "compile": False}
        scheduler = hparams.get("scheduler")
        if (
            scheduler and "scheduler" not in scheduler
        ):  # written before schedulers were Lightning dicts
            hparams["scheduler"] = {"scheduler": scheduler, "interval": "epoch"}
        known = inspect.signature(cls.__init__).parameters
        module = cls(**{key: value for key, value in hparams.items() if key in known})
        module.load_state_dict({**module._running_state(), **checkpoint["state_dict"]})
        # what the run started from (older checkpoints kept it among the hyperparameters)
        used = checkpoint.get("encoder_weights_used") or hparams.get("encoder_weights_used")
        module.weights_record = WeightsRecord(**used) if used else module.weights_record
        return module.to(map_location)


def rng_states() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain types
    (``weights_only``-loadable)."""
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
