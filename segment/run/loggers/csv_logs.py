"""Lightning's CSV and TensorBoard loggers, continuing a resumed run's logs where its checkpoint
was written: what an earlier attempt logged after that checkpoint is dropped, so every row and every
point appears once, whenever the kill came.

Each logger counts what it has logged (:meth:`position`); the checkpoint callback stores the count
in every checkpoint (``log_position``) and ``build(cfg)`` passes it back as ``resume_at`` when the
run continues.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import MLFlowLogger as _MLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from segment.files import write_atomic
from segment.layout import METRICS

__all__ = ["CSVLogger", "MLFlowLogger", "TensorBoardLogger", "log_position"]


def log_position(loggers: Any) -> dict[str, int]:
    """What the loggers have logged so far: ``rows`` (CSV rows) and ``step`` (the last step)."""
    position = {"rows": 0, "step": -1}
    for logger in loggers:  # others count nothing (fast_dev_run's DummyLogger answers any name)
        if isinstance(logger, CSVLogger | TensorBoardLogger):
            for key, value in logger.position().items():
                position[key] = max(position[key], value)
    return position


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger, continuing an earlier attempt's ``metrics.csv`` from a checkpoint's
    log position (``resume_at``; None: a fresh log): the rows logged before the checkpoint, and
    those logged after it for steps before ``resume_at["global_step"]`` (the epoch's training
    metrics, which Lightning logs after a checkpoint written at the epoch's end and does not log
    again; -1 where it does: see segment.runfolder.resume_point). A row a kill cut short is dropped
    after the checkpoint's position (the resumed run logs it again) and refused before it.

    Building it reads the log and writes nothing. Lightning's writer deletes an existing
    ``metrics.csv`` when it starts: when logging begins, the kept rows wait in a holding file beside
    the log folder (renames only) and become the new log's beginning. Lightning rewrites the whole
    log when a column appears (``train/loss`` after the first validations): here atomically, as a
    rewrite in place that a kill cut short lost rows the checkpoint had counted.
    """

    runtime_args = ("resume_at",)  # given by segment.build

    def __init__(
        self, *args: Any, resume_at: Mapping[str, int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._kept: tuple[list[dict], list[str]] | None = None
        self._rows = self._step = 0
        metrics = Path(self.log_dir) / METRICS
        self._holding = metrics.parent.parent / f".{metrics.parent.name}-metrics-kept.csv"
        source = metrics if metrics.is_file() else self._holding  # a kill between the renames
        if resume_at is None or rank_zero_only.rank != 0 or not source.is_file():
            return
        self._kept = rows, _ = _read_rows(source, resume_at)
        self._rows = len(rows)
        self._step = max((int(float(r["step"])) for r in rows), default=0)

    def position(self) -> dict[str, int]:
        return {"rows": self._rows, "step": self._step}

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self._rows, self._step = self._rows + 1, max(self._step, step or 0)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        if self._kept is None:
            return _atomic(super().experiment)
        rows, header = self._kept
        write_atomic(self._holding, _text(rows, header))
        (Path(self.log_dir) / METRICS).unlink(missing_ok=True)
        # An empty folder: the writer neither deletes nor warns; hparams.yaml is rewritten.
        (Path(self.log_dir) / "hparams.yaml").unlink(missing_ok=True)
        experiment = _atomic(super().experiment)
        os.replace(self._holding, Path(self.log_dir) / METRICS)
        experiment.metrics_keys = list(header)  # new rows extend the kept file's header
        self._kept = None
        return experiment


def _text(rows: Sequence[Mapping[str, Any]], header: Sequence[str]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _atomic(experiment: Any) -> Any:
    """Lightning's writer, its rewrite under a new header (a new column) made atomic."""

    def rewrite(path: str, header: list[str]) -> None:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        write_atomic(path, _text(rows, header))

    experiment._rewrite_with_new_header = partial(rewrite, experiment.metrics_file_path)
    return experiment


def _read_rows(path: Path, resume_at: Mapping[str, int]) -> tuple[list[dict], list[str]]:
    """The rows to keep (see :class:`CSVLogger`); a checkpoint that predates the count keeps the
    rows with ``step <= resume_at["step"]``."""
    rows_before = resume_at.get("rows", 0)
    before_step = resume_at.get("global_step", resume_at["step"] + 1)
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        header, read = sorted(reader.fieldnames or []), list(reader)
    ended = path.read_bytes().endswith(b"\n")  # else a kill cut the last line short
    rows = []
    for index, row in enumerate(read):
        number = index + 2
        if None in row or None in row.values() or (index == len(read) - 1 and not ended):
            if index >= rows_before:  # after the checkpoint: the resumed run logs it again
                continue
            raise ValueError(
                f"{path}, line {number} is cut short (a kill while the log was rewritten), and "
                "the checkpoint the run continues from counted it: its values, and those of any "
                "rows after it, are lost. Delete that line to continue without them (every "
                "validation is also in thresholds.json)"
            )
        try:
            step = int(float(row["step"]))
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}, line {number}: step={row.get('step')!r} is not a number; correct or "
                "delete that line (every validation is also in thresholds.json)"
            ) from None
        if index < rows_before or step < before_step:
            rows.append(row)
    return rows, header


class TensorBoardLogger(_TensorBoardLogger):
    """Lightning's TensorBoardLogger, hiding the events an earlier attempt wrote after the
    checkpoint it continues from (the writer's ``purge_step``); None: nothing purged."""

    runtime_args = ("resume_at",)  # given by segment.build

    def __init__(
        self, *args: Any, resume_at: Mapping[str, int] | None = None, **kwargs: Any
    ) -> None:
        if resume_at is not None:
            kwargs["purge_step"] = resume_at["step"] + 1
        super().__init__(*args, **kwargs)
        self._step = resume_at["step"] if resume_at is not None else -1

    def position(self) -> dict[str, int]:
        return {"step": self._step}

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Lightning adds the epoch to every row: in TensorBoard a card of its own, before train/val
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
        self._step = max(self._step, step or 0)


class MLFlowLogger(_MLFlowLogger):
    """Lightning's MLFlowLogger whose ``log_model`` uploads the best checkpoint by the monitored
    metric under ``best/`` and the newest one under ``latest/`` when training ends (``"all"``: also
    after every checkpoint). Lightning's own upload scans only the checkpoint callback that saved
    last, so with a best and a ``last.ckpt`` callback it uploaded ``last.ckpt`` under both names.
    """

    def __init__(self, *args: Any, log_model: bool | str = False, **kwargs: Any) -> None:
        super().__init__(*args, log_model=False, **kwargs)
        self._upload = log_model
        self._callbacks: list[ModelCheckpoint] = []

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if checkpoint_callback not in self._callbacks:
            self._callbacks.append(checkpoint_callback)
        if self._upload == "all":
            self._log_checkpoints()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self._upload and self._initialized:
            self._log_checkpoints()
        super().finalize(status)

    def _log_checkpoints(self) -> None:
        """``best/<file>``: the monitored callback's best; ``latest/<file>``: the newest file any
        callback wrote."""
        best = [c.best_model_path for c in self._callbacks if c.monitor and c.best_model_path]
        written = [
            path
            for c in self._callbacks
            for path in (c.last_model_path, c.best_model_path)
            if path and Path(path).is_file()
        ]
        for folder, paths in (("best", best), ("latest", written)):
            if paths:
                newest = max(paths, key=lambda p: Path(p).stat().st_mtime)
                self.experiment.log_artifact(self.run_id, newest, artifact_path=folder)
