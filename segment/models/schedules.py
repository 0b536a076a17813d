"""Per-step learning-rate schedules with a linear warmup (stepped every optimiser step)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupDecayLR"]


class WarmupDecayLR(LambdaLR):
    """Linear warmup from ``start_factor`` to 1 over ``warmup_steps``, then a decay to ``end_factor``.

    The factor at step t after the warmup, with ``p = (t - warmup) / (total - warmup)``:
    ``poly``: ``end + (1 - end) * (1 - p) ** power`` (DeepLab's schedule); ``cosine``:
    ``end + (1 - end) * (1 + cos(pi * p)) / 2``. Use it with ``interval: step``.

    Args:
        optimizer: The optimiser.
        total_steps: Optimiser steps of the whole run. In a config, ``null`` means "the run's
            own" (:class:`~segment.models.SegmentationModule` fills in the trainer's
            ``estimated_stepping_batches``), so the schedule follows ``trainer.max_epochs``.
        warmup_steps: Steps of linear warmup.
        decay: ``poly`` or ``cosine``.
        power: Exponent of ``poly``.
        start_factor: Factor of the rate at step 0.
        end_factor: Factor of the rate at the last step.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int | None, warmup_steps: int = 100, decay: str = "poly",
                 power: float = 0.9, start_factor: float = 0.01, end_factor: float = 0.0) -> None:  # fmt: skip
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"scheduler total_steps={total_steps} must exceed warmup_steps={warmup_steps} (null in a config: "
                "the run's optimiser steps, filled in by the module)"
            )
        if decay not in ("poly", "cosine"):
            raise ValueError(f"scheduler decay={decay!r}; expected 'poly' or 'cosine'")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.decay, self.power, self.start_factor, self.end_factor = decay, power, start_factor, end_factor
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * step / max(self.warmup_steps, 1)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        shape = (1 - progress) ** self.power if self.decay == "poly" else (1 + math.cos(math.pi * progress)) / 2
        return self.end_factor + (1 - self.end_factor) * shape
