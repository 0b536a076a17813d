"""Input / ground truth / prediction for fixed validation images: to the loggers and on disk."""

from __future__ import annotations

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities.seed import isolate_rng

from segment.data.labels import annotated, colorize
from segment.files import write_png
from segment.run.layout import RunLayout

__all__ = ["MaskImageLogger", "MaskSnapshots"]


def predict_fixed(
    trainer: Trainer, pl_module: LightningModule, num_images: int
) -> tuple[np.ndarray, ...]:
    """Predict ``num_images`` validation images spread evenly over the validation set.

    Consecutive video frames would show the same scene, hence the spread; the picks depend only on
    the set's length, so they are the same images every epoch and every run.

    Returns:
        ``(images, truths, predictions)``: ``(N, H, W, 3)`` uint8 and two ``(N, H, W)`` label maps.
    """
    dataset = trainer.datamodule.val_dataset
    picks = np.linspace(0, len(dataset) - 1, min(num_images, len(dataset))).round().astype(int)
    with (
        isolate_rng()
    ):  # augmentation seeding draws from torch's RNG: a picture must not change training
        items = [dataset[int(i)] for i in picks]
    images = torch.stack([item["image"] for item in items])
    truths = torch.stack([item["mask"] for item in items]).numpy()
    with torch.no_grad(), trainer.precision_plugin.forward_context():
        predictions = pl_module(images.to(pl_module.device)).argmax(dim=1).cpu().numpy()
    return images.permute(0, 2, 3, 1).numpy().astype(np.uint8), truths, predictions


class MaskImageLogger(Callback):
    """Log fixed validation images with their masks every ``every_n_epochs`` epochs (TensorBoard,
    W&B, MLflow).

    Each row of the logged image (tag ``val/masks``) is input | truth | prediction, coloured with
    the dataset palette (ignored pixels black), under column titles and above a class-colour legend
    (Weights & Biases: overlays with class labels). Always logs after the first and the last epoch
    too, so short runs show a start and an end.

    Args:
        every_n_epochs: Logging period in epochs.
        num_images: How many validation images (see :func:`predict_fixed`).
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 4) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(
                f"every_n_epochs={every_n_epochs} and num_images={num_images} must be >= 1"
            )
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        due = (
            epoch == 0 or (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == trainer.max_epochs
        )
        # the loggers that take images, each through its own API (segment.run.loggers)
        loggers = [
            lg
            for lg in trainer.loggers
            if callable(getattr(lg, "log_masks", None)) and not isinstance(lg, DummyLogger)
        ]  # fast_dev_run's DummyLogger answers any name
        if trainer.sanity_checking or not due or not loggers or not trainer.is_global_zero:
            return
        images, truths, predictions = predict_fixed(trainer, pl_module, self.num_images)
        info = trainer.datamodule.info
        rows = [
            np.concatenate(
                [image, colorize(truth, info.palette), colorize(pred, info.palette)], axis=1
            )
            for image, truth, pred in zip(images, truths, predictions, strict=True)
        ]
        sheet = annotated(
            np.concatenate(rows), ["input", "truth", "prediction"], info.class_names, info.palette
        )
        masks = (images, truths, predictions, info.class_names)
        for logger in loggers:
            logger.log_masks("val/masks", sheet, trainer.global_step, masks)


class MaskSnapshots(Callback):
    """Save the prediction for fixed validation images after every validation, as PNG files.

    Writes ``<dirname>/input.png`` and ``<dirname>/truth.png`` once and
    ``<dirname>/step_NNNNNNN.png`` (colour-coded prediction at that global step) after each
    validation, in the trainer's ``default_root_dir``. The study report picks the validations at
    which each threshold was first reached from them (``thresholds.json`` gives their steps), so a
    mask sheet needs no checkpoint per validation. Images are stacked vertically when ``num_images``
    > 1.

    Args:
        num_images: How many validation images (see :func:`predict_fixed`).
        dirname: Folder name inside the run folder.
    """

    def __init__(self, num_images: int = 1, dirname: str = RunLayout.masks) -> None:
        if num_images < 1:
            raise ValueError(f"num_images={num_images} must be >= 1")
        self.num_images = num_images
        self.dirname = dirname

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        images, truths, predictions = predict_fixed(trainer, pl_module, self.num_images)
        palette = trainer.datamodule.info.palette
        layout, run = RunLayout(masks=self.dirname), trainer.default_root_dir
        layout.snapshot(run, "truth").parent.mkdir(parents=True, exist_ok=True)
        if not layout.snapshot(run, "truth").exists():
            write_png(layout.snapshot(run, "input"), np.concatenate(list(images)))
            truth = np.concatenate([colorize(t, palette) for t in truths])
            write_png(layout.snapshot(run, "truth"), truth)
        sheet = np.concatenate([colorize(p, palette) for p in predictions])
        write_png(layout.snapshot(run, trainer.global_step), sheet)
