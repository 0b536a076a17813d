"""Freezing the first stages of any encoder, and unfreezing it later: one BaseFinetuning
callback."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from lightning import LightningModule
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

__all__ = ["EncoderFreezing", "encoder_stages"]

log = logging.getLogger(__name__)


def encoder_stages(
    encoder: nn.Module, in_channels: int = 3, size: int = 64
) -> list[list[nn.Module]]:
    """The encoder's modules grouped by the resolution they work at, finest first.

    Stage k holds every module with parameters of its own whose output has the k-th
    smallest downsampling factor: the blocks between VGG's poolings (strides 1..16), a ResNet's
    stem and ``layer1..4`` (strides 2..32), and so on for any smp encoder. Found by running one
    small input through the encoder with hooks, so no per-architecture table.
    """
    strides: dict[nn.Module, int] = {}
    hooks = []
    for module in encoder.modules():
        if any(True for _ in module.parameters(recurse=False)):

            def hook(module, inputs, output, strides=strides):
                if isinstance(output, torch.Tensor) and output.ndim == 4:
                    strides.setdefault(module, max(1, round(size / output.shape[-1])))

            hooks.append(module.register_forward_hook(hook))
    was_training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(
                torch.zeros(1, in_channels, size, size, device=next(encoder.parameters()).device)
            )
    finally:
        encoder.train(was_training)
        for handle in hooks:
            handle.remove()
    grouped: dict[int, list[nn.Module]] = defaultdict(list)
    for module, stride in strides.items():
        grouped[stride].append(module)
    return [grouped[stride] for stride in sorted(grouped)]


class EncoderFreezing(BaseFinetuning):
    """Freeze the first ``stages`` stages of ``net.encoder``; unfreeze the whole encoder at an
    epoch.

    Built on Lightning's :class:`~lightning.pytorch.callbacks.BaseFinetuning`: frozen parameters
    stay out of the optimiser (BatchNorm layers inside them stop updating their statistics too),
    and at ``unfreeze_at_epoch`` every encoder parameter joins it as a new parameter group at the
    encoder's learning rate (``lr * model.encoder_lr_mult``). A resumed run gets the same groups
    back (BaseFinetuning saves them).

    Args:
        stages: Stages to freeze, from the input (see :func:`encoder_stages`); 0: none.
        unfreeze_at_epoch: Epoch (0-based) from which the whole encoder trains; None: never.
    """

    def __init__(self, stages: int = 0, unfreeze_at_epoch: int | None = None) -> None:
        super().__init__()
        if stages < 0:
            raise ValueError(f"callbacks.freezing.stages={stages} must be >= 0")
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 0:
            raise ValueError(
                f"callbacks.freezing.unfreeze_at_epoch={unfreeze_at_epoch} must be >= 0 or null"
            )
        self.stages = stages
        self.unfreeze_at_epoch = unfreeze_at_epoch

    def _encoder(self, pl_module: LightningModule) -> nn.Module:
        encoder = getattr(pl_module.net, "encoder", None)
        if encoder is None:
            raise ValueError(
                f"callbacks.freezing.stages={self.stages}: {type(pl_module.net).__name__} has no "
                "encoder to freeze"
            )
        return encoder

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        if not self.stages:
            return
        stages = encoder_stages(self._encoder(pl_module))
        if self.stages > len(stages):
            raise ValueError(
                f"callbacks.freezing.stages={self.stages}: this encoder has {len(stages)} stages"
            )
        frozen = [module for stage in stages[: self.stages] for module in stage]
        self.freeze(frozen, train_bn=False)
        log.info("froze %d encoder stage(s): %d modules", self.stages, len(frozen))

    def finetune_function(
        self, pl_module: LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        if not self.stages or epoch != self.unfreeze_at_epoch:
            return
        encoder = self._encoder(pl_module)
        base_lr = optimizer.param_groups[0]["lr"]
        lr = base_lr * float(pl_module.hparams.get("encoder_lr_mult", 1.0))
        self.unfreeze_and_add_param_group(encoder, optimizer, lr=lr, train_bn=True)
        log.info("epoch %d: unfroze the encoder (learning rate %g)", epoch, lr)
