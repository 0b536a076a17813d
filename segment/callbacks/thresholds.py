"""When did a run first reach each loss / mIoU threshold: fractional epochs, steps, images and
seconds."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator

from segment.analysis.thresholds import LOSS_METRICS, Threshold, first_crossing
from segment.files import write_atomic
from segment.run.layout import RunLayout

__all__ = ["ThresholdTracker"]

log = logging.getLogger(__name__)


def _check_levels(
    val_loss: Sequence[float], val_miou: Sequence[float], loss_metric: str, patience: int
) -> None:
    if patience < 1:
        raise ValueError(f"thresholds.patience={patience} must be >= 1")
    if loss_metric not in LOSS_METRICS:
        raise ValueError(
            f"thresholds.loss_metric={loss_metric!r}; expected one of {list(LOSS_METRICS)}"
        )
    for key, values, mode in (("val_loss", val_loss, "min"), ("val_miou", val_miou, "max")):
        steps = list(zip(values, values[1:], strict=False))
        if any((b >= a) if mode == "min" else (b <= a) for a, b in steps):
            order = (
                "decreasing (loosest first), e.g. [1.0, 0.7, 0.5]"
                if mode == "min"
                else ("increasing (loosest first), e.g. [0.3, 0.5, 0.6]")
            )
            raise ValueError(f"thresholds.{key}={list(values)}: must be strictly {order}")


class ThresholdTracker(Callback):
    """Record when each threshold is first reached, and what it cost, at every validation.

    A loss threshold is reached at ``<=``, an mIoU one at ``>=``. With ``patience`` k, a threshold
    counts only once it has held for k validations in a row; it is credited to the first of them
    (its fractional epoch, step, images seen and seconds). With ``trainer.val_check_interval`` < 1
    there are several validations per epoch, so the epochs are fractional (``2.25`` = a quarter into
    the third epoch).

    Results go to ``thresholds.json`` in the trainer's ``default_root_dir`` (rewritten
    atomically after each validation): each threshold as ``{metric, mode, level, name,
    reached}``, the ``history`` of every validation (fractional epoch, step, images seen, seconds,
    the CPU share the run got, and the validation metrics), and ``finished`` once training ends. The
    epoch is also logged as ``thresholds/<name>`` (a column of TensorBoard's HPARAMS table:
    :class:`~segment.callbacks.HyperparameterTable`), and the table is printed at the end.

    Args:
        val_loss: Loss thresholds, e.g. ``[1.0, 0.7, 0.5]`` (strictly decreasing).
        val_miou: mIoU thresholds, e.g. ``[0.3, 0.5, 0.6]`` (strictly increasing).
        loss_metric: The logged loss the loss thresholds apply to: ``val/loss`` (the
            training loss) or ``val/ce`` (plain cross-entropy, comparable across losses).
        patience: Validations in a row a threshold must hold.
        stop_when_reached: Name of a threshold (``val_loss<=0.5``, ``val_miou>=0.6``) that
            ends training once reached; None trains on.
        filename: Name of the JSON file.
    """

    def __init__(
        self,
        val_loss: Sequence[float] = (),
        val_miou: Sequence[float] = (),
        loss_metric: str = "val/loss",
        patience: int = 1,
        stop_when_reached: str | None = None,
        filename: str = RunLayout.thresholds,
    ) -> None:
        _check_levels(val_loss, val_miou, loss_metric, patience)
        # Ordered from loosest to strictest, so that the tables and plots read in training order.
        self.thresholds = [Threshold(loss_metric, "min", float(v)) for v in val_loss] + [
            Threshold("val/miou", "max", float(v)) for v in val_miou
        ]
        self.patience = patience
        self.filename = filename
        names = [t.name for t in self.thresholds]
        if stop_when_reached is not None and stop_when_reached not in names:
            raise ValueError(
                f"thresholds.stop_when_reached={stop_when_reached!r}; expected one of {names}"
            )
        self.stop_when_reached = stop_when_reached
        self.reached: dict[str, dict[str, Any] | None] = dict.fromkeys(names)
        self.history: list[dict[str, Any]] = []
        self.finished = False
        self.images_seen = 0
        self.seconds = 0.0
        self._batches_in_epoch = 0
        self._clock: float | None = None
        self._cpu_clock: float | None = None

    # Lightning saves and restores this with checkpoints, so a resumed run keeps its record.
    def state_dict(self) -> dict[str, Any]:
        return {
            "reached": self.reached,
            "history": self.history,
            "images_seen": self.images_seen,
            "seconds": self.seconds,
            "batches_in_epoch": self._batches_in_epoch,  # a checkpoint written mid-epoch
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reached.update({k: v for k, v in state["reached"].items() if k in self.reached})
        self.history = list(state.get("history", []))
        self.images_seen, self.seconds = state["images_seen"], state["seconds"]
        self._batches_in_epoch = int(state.get("batches_in_epoch", 0))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._clock, self._cpu_clock = time.perf_counter(), time.process_time()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches_in_epoch = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.images_seen += int(batch["image"].shape[0]) * trainer.world_size
        self._batches_in_epoch += 1

    def _elapsed(self, trainer: Trainer) -> tuple[float, float | None]:
        """Seconds of training so far, and the CPU share this process got since the last call (CPU
        runs)."""
        now, cpu_now = time.perf_counter(), time.process_time()
        share = None
        if self._clock is not None:
            wall = now - self._clock
            self.seconds += wall
            if isinstance(trainer.accelerator, CPUAccelerator) and wall > 0:
                share = round((cpu_now - self._cpu_clock) / (wall * torch.get_num_threads()), 3)
        self._clock, self._cpu_clock = now, cpu_now
        return self.seconds, share

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the module logs its metrics.
        if trainer.sanity_checking:
            return
        seconds, share = self._elapsed(trainer)
        batches = max(int(trainer.num_training_batches), 1)
        point = {
            "epoch": round(
                trainer.current_epoch + min(self._batches_in_epoch, batches) / batches, 4
            ),
            "step": trainer.global_step,
            "images_seen": self.images_seen,
            "seconds": round(seconds, 2),
        }
        logged = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/") and value.numel() == 1
        }
        self.history.append({**point, "cpu_share": share, **logged})
        for threshold in self.thresholds:
            name = threshold.name
            crossing = (
                None
                if self.reached[name]
                else first_crossing(self.history, threshold, self.patience)
            )
            if crossing is None or not crossing.reached:
                continue
            row = next(row for row in self.history if row["step"] == crossing.step)
            self.reached[name] = {key: row[key] for key in point} | {"value": row[threshold.metric]}
            for logger in trainer.loggers:  # one metric per level (the HPARAMS table's column)
                logger.log_metrics({f"thresholds/{name}": row["epoch"]}, step=trainer.global_step)
            if name == self.stop_when_reached:
                log.info("threshold %s reached at epoch %g: stopping", name, row["epoch"])
                trainer.should_stop = True
        if trainer.is_global_zero:
            self._write(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.finished = True
        if trainer.is_global_zero:
            self._write(trainer)
            log.info("thresholds (first reached):\n%s", self.table())

    def _write(self, trainer: Trainer) -> None:
        path = Path(trainer.default_root_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "patience": self.patience,
            "finished": self.finished,
            "thresholds": [
                {**asdict(t), "name": t.name, "reached": self.reached[t.name]}
                for t in self.thresholds
            ],
            "history": self.history,
        }
        write_atomic(path, json.dumps(record, indent=2) + "\n")

    def table(self) -> str:
        lines = ["| threshold | epoch | step | images | seconds |", "|---|---|---|---|---|"]
        for name, point in self.reached.items():
            if point is None:
                lines.append(f"| {name} | not reached | | | |")
            else:
                lines.append(
                    f"| {name} | {point['epoch']:g} | {point['step']} | {point['images_seen']} | "
                    f"{point['seconds']:.0f} |"
                )
        return "\n".join(lines)
