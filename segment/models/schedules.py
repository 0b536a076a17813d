"""The optimiser and its schedule as Lightning takes them, and per-step learning-rate schedules
with a linear warmup (stepped every optimiser step)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hydra.utils import instantiate
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, PolynomialLR, SequentialLR

__all__ = ["WarmupDecayLR", "optimization"]


def optimization(
    module: nn.Module,
    optimizer: Mapping,
    scheduler: Mapping | None,
    encoder_lr_mult: float,
    total_steps: Callable[[], int],
) -> dict[str, Any]:
    """``configure_optimizers``' answer: the ``optimizer`` config (``_partial_``) over ``module``'s
    trainable parameters, the encoder's (``module.net.encoder``) in a group of its own at
    ``encoder_lr_mult`` times the rate unless that is 1; and Lightning's ``scheduler`` dict, its
    ``total_steps: null`` filled with ``total_steps()`` (this run's optimiser steps)."""
    factory = instantiate(optimizer)
    params = [p for p in module.parameters() if p.requires_grad]
    encoder = getattr(module.net, "encoder", None)
    if encoder_lr_mult != 1.0 and encoder is not None:
        ids = {id(p) for p in encoder.parameters()}
        params = [
            {"name": "base", "params": [p for p in params if id(p) not in ids]},
            {
                "name": "encoder",
                "params": [p for p in params if id(p) in ids],
                "lr": factory.keywords["lr"] * encoder_lr_mult,
            },
        ]
    built = factory(params=params)
    if not scheduler:
        return {"optimizer": built}
    config = {"name": "lr", **scheduler}
    schedule = dict(config["scheduler"])
    if "total_steps" in schedule and schedule["total_steps"] is None:
        schedule["total_steps"] = total_steps()
    return {
        "optimizer": built,
        "lr_scheduler": {**config, "scheduler": instantiate(schedule)(built)},
    }


class WarmupDecayLR(SequentialLR):
    """torch's ``LinearLR`` warmup from ``start_factor`` to 1 over ``warmup_steps``, then a decay to
    0 at the end.

    ``poly``: ``PolynomialLR`` (``(1 - p) ** power``, DeepLab's schedule); ``cosine``:
    ``CosineAnnealingLR``; chained by ``SequentialLR``. Use it with ``interval: step``. A class
    rather than a config of the three, because each needs the optimiser the module builds, and a
    checkpoint may only name classes (its allow-list).

    Args:
        optimizer: The optimiser.
        total_steps: Optimiser steps of the whole run. In a config, ``null`` means "the run's
            own" (:class:`~segment.models.SegmentationModule` fills in the trainer's
            ``estimated_stepping_batches``), so the schedule follows ``trainer.max_epochs``.
        warmup_steps: Steps of linear warmup.
        decay: ``poly`` or ``cosine``.
        power: Exponent of ``poly``.
        start_factor: Factor of the rate at step 0.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None,
        warmup_steps: int = 100,
        decay: str = "poly",
        power: float = 0.9,
        start_factor: float = 0.01,
    ) -> None:
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"scheduler total_steps={total_steps} must exceed warmup_steps={warmup_steps} "
                "(null in a config: the run's optimiser steps, filled in by the module)"
            )
        if decay not in ("poly", "cosine"):
            raise ValueError(f"scheduler decay={decay!r}; expected 'poly' or 'cosine'")
        rest = int(total_steps) - int(warmup_steps)
        warmup = LinearLR(
            optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps
        )
        after = (
            PolynomialLR(optimizer, total_iters=rest, power=power)
            if decay == "poly"
            else CosineAnnealingLR(optimizer, T_max=rest)
        )
        super().__init__(optimizer, [warmup, after], milestones=[warmup_steps])
