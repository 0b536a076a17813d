"""``metrics.csv``: Lightning's CSV logger, continuing a resumed run's log where its checkpoint
was written (what an earlier attempt logged after that checkpoint is dropped, so every row appears
once, whenever the kill came), its rewrites atomic."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from segment.files import write_atomic
from segment.run.layout import METRICS

__all__ = ["CSVLogger"]


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger, continuing an earlier attempt's ``metrics.csv`` from a checkpoint's
    log position (``log_position``; None: a fresh log): the rows logged before the checkpoint, and
    those logged after it for steps before ``log_position["global_step"]`` (the epoch's training
    metrics, which Lightning logs after a checkpoint written at the epoch's end and does not log
    again; -1 where it does: see segment.run.resume.resume_point). A row a kill cut short is dropped
    after the checkpoint's position (the resumed run logs it again) and refused before it.

    Building it reads the log and writes nothing. Lightning's writer deletes an existing
    ``metrics.csv`` when it starts: when logging begins, the kept rows wait in a holding file beside
    the log folder (renames only) and become the new log's beginning. Lightning rewrites the whole
    log when a column appears (``train/loss`` after the first validations): here atomically, as a
    rewrite in place that a kill cut short lost rows the checkpoint had counted.
    """

    runtime_args = ("log_position",)  # given by segment.build

    def __init__(
        self, *args: Any, log_position: Mapping[str, int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._kept: tuple[list[dict], list[str]] | None = None
        self._rows = self._step = 0
        metrics = Path(self.log_dir) / METRICS
        self._holding = metrics.parent.parent / f".{metrics.parent.name}-metrics-kept.csv"
        source = metrics if metrics.is_file() else self._holding  # a kill between the renames
        if log_position is None or rank_zero_only.rank != 0 or not source.is_file():
            return
        self._kept = rows, _ = _read_rows(source, log_position)
        self._rows = len(rows)
        self._step = max((int(float(r["step"])) for r in rows), default=0)

    @property
    def log_position(self) -> dict[str, int]:
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


def _read_rows(path: Path, log_position: Mapping[str, int]) -> tuple[list[dict], list[str]]:
    """The rows to keep (see :class:`CSVLogger`); a checkpoint that predates the count keeps the
    rows with ``step <= log_position["step"]``."""
    rows_before = log_position.get("rows", 0)
    before_step = log_position.get("global_step", log_position["step"] + 1)
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
