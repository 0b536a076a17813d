"""TensorBoard panel of input / ground truth / prediction for fixed validation images."""

from __future__ import annotations

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from segment.data.labels import colorize

__all__ = ["MaskImageLogger"]


class MaskImageLogger(Callback):
    """Log fixed validation images with their masks every ``every_n_epochs`` epochs.

    Each row of the logged image (tag ``val/masks``) is input | truth | prediction,
    coloured with the dataset palette (ignored pixels black). Always logs after the
    first and the last epoch too, so short runs show a start and an end.

    Args:
        every_n_epochs: Logging period in epochs.
        num_images: How many validation images, spread evenly over the validation set
            (consecutive video frames would show the same scene) and the same every time.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 4) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs} and num_images={num_images} must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        due = epoch == 0 or (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == trainer.max_epochs
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if trainer.sanity_checking or not due or not loggers or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        dataset = datamodule.val_dataset
        picks = np.linspace(0, len(dataset) - 1, min(self.num_images, len(dataset))).round().astype(int)
        items = [dataset[int(i)] for i in picks]
        images = torch.stack([item["image"] for item in items])
        masks = torch.stack([item["mask"] for item in items]).numpy()
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            predictions = pl_module(images.to(pl_module.device)).argmax(dim=1).cpu().numpy()
        palette = datamodule.info.palette
        rows = [
            np.concatenate([image.permute(1, 2, 0).numpy(), colorize(mask, palette), colorize(pred, palette)], axis=1)
            for image, mask, pred in zip(images, masks, predictions, strict=True)
        ]
        sheet = np.concatenate(rows, axis=0)
        for logger in loggers:
            logger.experiment.add_image("val/masks", sheet, global_step=trainer.global_step, dataformats="HWC")
