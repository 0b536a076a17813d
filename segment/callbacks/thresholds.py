"""When did a run first reach each loss / mIoU threshold: epochs, steps, images and seconds."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer

from segment.files import write_text_atomic

__all__ = ["ThresholdTracker"]

log = logging.getLogger(__name__)

# metric -> (its logged name, whether lower is better)
_METRICS = {"val_loss": ("val/loss", True), "val_miou": ("val/miou", False)}
# what is logged per reached threshold
_LOGGED = ("epoch", "images_seen", "seconds")


class ThresholdTracker(Callback):
    """Record the first epoch at which each threshold is reached, and what it cost.

    ``val/loss`` reaches a threshold at ``<=``, ``val/miou`` at ``>=``. With ``patience``
    k, a threshold counts only once it has held for k consecutive validations; it is then
    credited to the first of them (its epoch, step, images seen and seconds). Results go
    to ``thresholds.json`` in the trainer's ``default_root_dir`` (rewritten atomically
    after each validation, with the per-epoch ``history`` of images seen, seconds and both
    metrics, and ``finished`` once training ends), to the loggers as
    ``thresholds/<name>/epoch`` etc. (registered in TensorBoard's hparams view through
    :meth:`hparams_metrics`), and to the console at the end of training.

    Args:
        val_loss: Loss thresholds, e.g. ``[1.0, 0.7, 0.5]``.
        val_miou: mIoU thresholds, e.g. ``[0.3, 0.5, 0.6]``.
        patience: Validations in a row a threshold must hold.
        stop_when_reached: Name of a threshold (``val_loss<=0.5``, ``val_miou>=0.6``) that
            ends training once reached; None trains on.
        filename: Name of the JSON file.
    """

    def __init__(
        self,
        val_loss: Sequence[float] = (1.0, 0.7, 0.5),
        val_miou: Sequence[float] = (0.3, 0.5, 0.6),
        patience: int = 1,
        stop_when_reached: str | None = None,
        filename: str = "thresholds.json",
    ) -> None:
        if patience < 1:
            raise ValueError(f"thresholds.patience={patience} must be >= 1")
        self.thresholds = {"val_loss": [float(t) for t in val_loss], "val_miou": [float(t) for t in val_miou]}
        # Ordered from loosest to strictest, so that the tables and plots read in training order.
        for metric, values in self.thresholds.items():
            lower_is_better = _METRICS[metric][1]
            steps = list(zip(values, values[1:], strict=False))
            if any((b >= a) if lower_is_better else (b <= a) for a, b in steps):
                order = "decreasing (loosest first), e.g. [1.0, 0.7, 0.5]" if lower_is_better else (
                    "increasing (loosest first), e.g. [0.3, 0.5, 0.6]")  # fmt: skip
                raise ValueError(f"thresholds.{metric}={values}: must be strictly {order}")
        self.patience = patience
        self.filename = filename
        names = [self.name(metric, value) for metric, values in self.thresholds.items() for value in values]
        if stop_when_reached is not None and stop_when_reached not in names:
            raise ValueError(f"thresholds.stop_when_reached={stop_when_reached!r}; expected one of {names}")
        self.stop_when_reached = stop_when_reached
        self.reached: dict[str, dict[str, Any] | None] = dict.fromkeys(names)
        self._streaks: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        self.history: list[dict[str, Any]] = []
        self.finished = False
        self.images_seen = 0
        self.seconds = 0.0
        self._clock: float | None = None

    @staticmethod
    def name(metric: str, value: float) -> str:
        return f"{metric}{'<=' if _METRICS[metric][1] else '>='}{value:g}"

    def hparams_metrics(self) -> dict[str, float]:
        """Tags to register in TensorBoard's hparams view, NaN until reached."""
        return {f"thresholds/{name}/{key}": float("nan") for name in self.reached for key in _LOGGED}

    # Lightning saves and restores this with checkpoints, so a resumed run keeps its record.
    def state_dict(self) -> dict[str, Any]:
        return {
            "reached": self.reached,
            "streaks": self._streaks,
            "history": self.history,
            "images_seen": self.images_seen,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reached.update(state["reached"])
        self._streaks.update(state["streaks"])
        self.history = list(state.get("history", []))
        self.images_seen, self.seconds = state["images_seen"], state["seconds"]

    def _elapsed(self) -> float:
        now = time.perf_counter()
        if self._clock is not None:
            self.seconds += now - self._clock
        self._clock = now
        return self.seconds

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.images_seen += int(batch["image"].shape[0]) * trainer.world_size

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the module logs its metrics.
        if trainer.sanity_checking:
            return
        point = {
            "epoch": trainer.current_epoch + 1,  # epochs completed
            "step": trainer.global_step,
            "images_seen": self.images_seen,
            "seconds": round(self._elapsed(), 2),
        }
        self.history.append(
            {**point, **{m: float(trainer.callback_metrics[name]) for m, (name, _) in _METRICS.items()
                         if name in trainer.callback_metrics}}
        )  # fmt: skip
        for metric, values in self.thresholds.items():
            logged, lower_is_better = _METRICS[metric]
            if logged not in trainer.callback_metrics:
                continue
            current = float(trainer.callback_metrics[logged])
            for value in values:
                name = self.name(metric, value)
                if self.reached[name] is not None:
                    continue
                holds = current <= value if lower_is_better else current >= value
                streak = self._streaks[name]
                if not holds:
                    streak.clear()
                    continue
                streak.append({**point, "value": current})
                if len(streak) >= self.patience:
                    self.reached[name] = streak[0]
                    self._log(trainer, name, streak[0])
                    if name == self.stop_when_reached:
                        log.info("threshold %s reached at epoch %d: stopping", name, streak[0]["epoch"])
                        trainer.should_stop = True
        if trainer.is_global_zero:
            self._write(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finished = True
        if trainer.is_global_zero:
            self._write(trainer)
            log.info("thresholds (first reached):\n%s", self.table())

    def _log(self, trainer: Trainer, name: str, point: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"thresholds/{name}/{key}": point[key] for key in _LOGGED},
                               step=trainer.global_step)  # fmt: skip

    def _write(self, trainer: Trainer) -> None:
        path = Path(trainer.default_root_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "patience": self.patience,
            "finished": self.finished,
            "thresholds": self.reached,
            "history": self.history,
        }
        write_text_atomic(path, json.dumps(record, indent=2) + "\n")

    def table(self) -> str:
        lines = ["| threshold | epoch | step | images | seconds |", "|---|---|---|---|---|"]
        for name, point in self.reached.items():
            if point is None:
                lines.append(f"| {name} | not reached | | | |")
            else:
                lines.append(
                    f"| {name} | {point['epoch']} | {point['step']} | {point['images_seen']} | {point['seconds']:.0f} |"
                )
        return "\n".join(lines)
