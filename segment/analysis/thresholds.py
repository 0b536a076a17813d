"""The threshold rule: when a run first reached a loss or mIoU level, held for ``patience``
validations. The tracker (:class:`segment.callbacks.ThresholdTracker`) applies it as training
goes, the study report to every level of its ladders; neither needs Lightning for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LOSS_METRICS", "Crossing", "Threshold", "first_crossing"]

LOSS_METRICS = ("val/loss", "val/ce")


@dataclass(frozen=True)
class Threshold:
    """A level of a logged metric: reached at ``<=`` (``mode="min"``, losses) or ``>=``
    (``"max"``, mIoU)."""

    metric: str
    mode: str
    level: float

    @property
    def name(self) -> str:
        """``val_loss<=0.5``, ``val_miou>=0.3``: the name in logs, tables and
        ``stop_when_reached``."""
        return (
            f"{self.metric.replace('/', '_')}{'<=' if self.mode == 'min' else '>='}{self.level:g}"
        )

    def holds(self, value: float) -> bool:
        return value <= self.level if self.mode == "min" else value >= self.level


@dataclass(frozen=True)
class Crossing:
    """When a run first reached a threshold (held for ``patience`` validations), or when it was
    last seen without."""

    time: float  # in the unit asked for (fractional epochs, images, seconds)
    reached: bool  # False: right-censored at ``time``
    step: int | None = None  # the global step of the crediting validation (its mask snapshot)


def first_crossing(
    history: Sequence[dict[str, Any]],
    threshold: Threshold,
    patience: int = 1,
    unit: str = "epoch",
    interpolate: bool = False,
) -> Crossing | None:
    """The first validation from which ``threshold`` held for ``patience`` validations in a row.

    The one crossing rule: the tracker applies it as training goes, the study report to every
    level of its ladders. Validations that did not log the metric are skipped.

    Args:
        history: Validations in order, each with ``epoch`` (fractional), ``step``,
            ``images_seen``, ``seconds`` and the logged metrics (``thresholds.json``'s history).
        threshold: The level.
        patience: Validations in a row it must hold; the first of them is credited.
        unit: ``epoch``, ``step``, ``images_seen`` or ``seconds``.
        interpolate: Credit the linear interpolation between the last validation short of
            the level and the crediting one, instead of the latter (a sensitivity check).

    Returns:
        The crossing, or a right-censored point at the last validation; None without validations.
    """
    rows = [row for row in history if threshold.metric in row]
    if not rows:
        return None
    holds = [threshold.holds(row[threshold.metric]) for row in rows]
    for i in range(len(rows) - patience + 1):
        if all(holds[i : i + patience]):
            time = float(rows[i][unit])
            if interpolate and i > 0:
                before, after = rows[i - 1], rows[i]
                span = before[threshold.metric] - after[threshold.metric]
                fraction = (before[threshold.metric] - threshold.level) / span if span else 1.0
                time = float(before[unit]) + fraction * (float(after[unit]) - float(before[unit]))
            return Crossing(time, True, int(rows[i]["step"]))
    return Crossing(float(rows[-1][unit]), False)
