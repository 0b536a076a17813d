"""Stopping a run at its first non-finite number, before a checkpoint keeps it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

__all__ = ["FiniteLossGuard", "check_validation"]

_ADVICE = "try a lower model.optimizer.lr or trainer.gradient_clip_val=1.0"


class FiniteLossGuard(nn.Module):
    """Notes on the device whether (and first when) the training loss went non-finite, so the
    host waits for the device only when asked to :meth:`check` (its buffers follow the module to
    its device and stay out of checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        # the first bad step (-1: none) and the last finite loss
        self.register_buffer("first_bad_step", torch.tensor(-1), persistent=False)
        self.register_buffer("last_finite_loss", torch.tensor(float("nan")), persistent=False)

    def note(self, loss: torch.Tensor, step: int) -> None:
        """Record ``loss`` of optimiser step ``step``: no host sync."""
        bad = ~torch.isfinite(loss)
        first_bad = self.first_bad_step < 0
        step_t = torch.tensor(step, device=loss.device)
        self.first_bad_step = torch.where(bad & first_bad, step_t, self.first_bad_step)
        self.last_finite_loss = torch.where(bad | ~first_bad, self.last_finite_loss, loss.float())

    def check(self, steps_per_epoch: Callable[[], int]) -> None:
        """Raise at a noted non-finite loss, naming its epoch and step (one host sync)."""
        first_bad = int(self.first_bad_step)
        if first_bad < 0:
            return
        epoch = first_bad // max(steps_per_epoch(), 1) + 1
        raise FloatingPointError(
            f"non-finite training loss at epoch {epoch}, step "
            f"{first_bad} (last finite loss: {float(self.last_finite_loss):.6g}). The checkpoints "
            f"saved so far are intact; {_ADVICE}"
        )


def check_validation(
    loss: float, module: LightningModule, checkpoints: Iterable[ModelCheckpoint]
) -> None:
    """Raise at a non-finite validation ``loss`` or buffer of ``module.net`` (BatchNorm's running
    statistics can overflow while the training loss stays finite), naming the newest of
    ``checkpoints``' files: run before this validation's checkpoints are written, so no NaN is
    kept as "best"."""
    buffers = [
        f"net.{name}"
        for name, b in module.net.named_buffers()
        if b.is_floating_point() and not bool(torch.isfinite(b).all())
    ]
    if math.isfinite(loss) and not buffers:
        return
    kept = sorted({c.last_model_path or c.best_model_path for c in checkpoints} - {""})
    raise FloatingPointError(
        f"non-finite validation at epoch {module.current_epoch + 1}, step {module.global_step}: "
        f"val/loss {loss}"
        + (f", {len(buffers)} non-finite buffers ({buffers[0]}, ...)" if buffers else "")
        + f". The last finite checkpoint: {kept[-1] if kept else 'none yet'}; {_ADVICE}"
    )
