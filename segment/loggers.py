"""Lightning's CSV and TensorBoard loggers, able to continue a run's logs after a resume."""

from __future__ import annotations

import csv
import io
import os
import warnings

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from segment.files import write_text_atomic

__all__ = ["CSVLogger", "TensorBoardLogger"]


class CSVLogger(_CSVLogger):
    """:class:`lightning.pytorch.loggers.CSVLogger` that keeps the rows of the run it continues.

    Lightning's writer deletes an existing ``metrics.csv``. After :meth:`keep_until`,
    rows logged at or before that step are kept (and later ones, from an epoch the
    checkpoint does not hold, dropped), so the file lists every epoch once.
    """

    _keep_step: int | None = None

    def keep_until(self, step: int) -> None:
        """Keep the rows logged at steps <= ``step``; call before anything is logged (-1: keep none)."""
        self._keep_step = step

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None or self._keep_step is None:
            return super().experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        header, rows = [], []
        if os.path.isfile(path):
            with open(path, newline="") as file:
                reader = csv.DictReader(file)
                header = list(reader.fieldnames or [])
                rows = [row for row in reader if row.get("step") and int(float(row["step"])) <= self._keep_step]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Experiment logs directory")  # we keep what it would delete
            experiment = super().experiment
        if header and rows:
            experiment.metrics_keys = sorted(header)
            write_text_atomic(path, _csv_text(experiment.metrics_keys, rows))
        return experiment


def _csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class TensorBoardLogger(_TensorBoardLogger):
    """:class:`lightning.pytorch.loggers.TensorBoardLogger` that can hide a killed attempt's events.

    After :meth:`keep_until`, TensorBoard discards events written after that step by an
    earlier process (the writer's ``purge_step``), so a resumed run shows one curve.
    """

    def keep_until(self, step: int) -> None:
        """Drop earlier events at steps > ``step``; call before anything is logged (-1: drop all)."""
        self._kwargs["purge_step"] = step + 1
