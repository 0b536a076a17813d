"""The LightningModule: any segmentation net + loss + optimiser, with torchmetrics scores."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import MeanMetric

from segment.models.guards import FiniteLossGuard, check_validation
from segment.models.metrics import ValidationScores
from segment.models.nets import build_net, check_image_size, size_multiple
from segment.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from segment.models.schedules import optimization

__all__ = ["SegmentationModule", "rng_states", "set_rng_states"]


def _plain(value: Any) -> Any:
    """A resolved plain copy of a config (dicts and lists), so checkpoints hold no OmegaConf
    objects and load with ``weights_only``."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, PathLike) else value


def _check_arguments(
    scheduler: Mapping | None, finite_check_every_n_steps: int, init_from: str | None
) -> None:
    if init_from is not None:
        raise ValueError(
            f"init_from={init_from!r} given to the module itself: it reads no checkpoint. Build "
            "the run with segment.build (model.init_from=...), or call "
            "segment.checkpoints.init_weights(module, path)"
        )
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


class SegmentationModule(LightningModule):
    """Trains and validates a segmentation network.

    The network, loss, optimiser and scheduler arrive as Hydra configs (``_target_`` dicts) and are
    stored as plain hyperparameters, so a checkpoint rebuilds the module without the config tree
    (from an allow-list of targets: :func:`segment.checkpoints.load_module`). Images arrive as
    uint8 ``(B, 3, H, W)`` and are normalised here with buffers (``scale``, ``shift``) that travel
    with the weights.

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
        init_from: The checkpoint whose weights the run starts from (``model.init_from``), at
            epoch 0 with a fresh optimiser. A module reads no checkpoint: ``segment.build`` copies
            the weights in (:func:`segment.checkpoints.init_weights`) and records the path here;
            given to the module itself it is refused, never silently ignored.
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
        _check_arguments(scheduler, finite_check_every_n_steps, init_from)
        self.save_hyperparameters(logger=False)
        # plain types only: a checkpoint holds no OmegaConf objects (weights_only-loadable)
        self.hparams.update({key: _plain(value) for key, value in self.hparams.items()})
        # which encoder weights the net started from: saved with every checkpoint
        self.net, self.weights_record = build_net(
            self.hparams.net, len(class_names), weights_fallback
        )
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
        # its running epoch mean travels with checkpoints (mid-epoch resumes)
        self.train_loss.persistent(True)
        self.val_scores = ValidationScores(class_names, ignore_index)
        self.finite = FiniteLossGuard()
        if compile:
            self.net.compile()

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
        self.finite.note(loss.detach(), self.global_step)
        if (self.global_step + 1) % self.hparams.finite_check_every_n_steps == 0:
            self._check_finite()
        self.train_loss.update(loss.detach(), weight=batch["image"].shape[0])
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _check_finite(self) -> None:
        self.finite.check(lambda: int(self.trainer.num_training_batches) if self._trainer else 1)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 >= self.trainer.num_training_batches:  # before the epoch's checkpoint
            self._check_finite()

    def on_validation_start(self) -> None:  # before the checkpoint that follows a validation
        self._check_finite()

    def on_fit_start(self) -> None:
        check_image_size(getattr(self.trainer.datamodule, "image_size", None), self.size_multiple)

    # The global RNG states travel with every checkpoint and are restored on load, so a resumed
    # run shuffles, augments and drops out exactly like an uninterrupted one. (Lightning runs
    # the sanity check between load and training inside isolate_rng, so it draws nothing.)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()
        checkpoint["encoder_weights_used"] = self.weights_record.as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        checkpoint["state_dict"] = {**self.running_state(), **checkpoint["state_dict"]}

    def running_state(self) -> dict[str, torch.Tensor]:
        """The training loss's running mean (empty between epochs), for checkpoints written before
        it was saved."""
        return {f"train_loss.{key}": value for key, value in self.train_loss.state_dict().items()}

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute())
        self.train_loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self.val_scores.update(loss, logits, batch["mask"])

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # the same scores, logged as test/* (train.py test_after_fit=true)
        self.validation_step(batch, batch_idx)

    def _log_scores(self, prefix: str) -> None:
        scores = self.val_scores.compute()
        if prefix == "val" and not self.trainer.sanity_checking:
            # before this validation's checkpoints are written
            check_validation(float(scores["loss"]), self, self.trainer.checkpoint_callbacks)
        for name in ("loss", "ce", "miou"):
            self.log(f"{prefix}/{name}", scores.pop(name), prog_bar=name != "ce")
        self.log_dict({f"{prefix}/{name}": value for name, value in scores.items()})

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        steps = lambda: int(self.trainer.estimated_stepping_batches)  # noqa: E731
        return optimization(self, hp.optimizer, hp.scheduler, hp.encoder_lr_mult, steps)


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
