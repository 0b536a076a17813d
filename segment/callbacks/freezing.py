"""Gradual unfreezing of a pretrained encoder."""

from __future__ import annotations

import logging

from lightning import Callback, LightningModule, Trainer

__all__ = ["EncoderUnfreeze"]

log = logging.getLogger(__name__)


class EncoderUnfreeze(Callback):
    """Give every encoder parameter a gradient again from epoch ``epoch`` (0-based) on.

    Frozen parameters were kept in the optimiser (without gradients), so unfreezing needs
    no new parameter groups and survives a resume: the check runs at every epoch start.
    The module adds this callback itself when ``model.unfreeze_at_epoch`` is set.
    """

    def __init__(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"model.unfreeze_at_epoch={epoch} must be >= 0")
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        encoder = pl_module.net.encoder
        frozen = [p for p in encoder.parameters() if not p.requires_grad]
        if trainer.current_epoch >= self.epoch and frozen:
            encoder.requires_grad_(True)
            log.info("epoch %d: unfroze %d encoder tensors", trainer.current_epoch, len(frozen))
