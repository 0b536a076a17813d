"""Per-step learning-rate schedules with a linear warmup (stepped every optimiser step)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, PolynomialLR, SequentialLR

__all__ = ["WarmupDecayLR"]


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
