"""Lightning's CSV and TensorBoard loggers, continuing a resumed run's logs in place: given ``resume_step`` (the
continued checkpoint's global step, passed by ``train()`` to each logger config declaring it), what an earlier
attempt logged up to that step is kept and what it logged after is dropped, so every step appears once.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from segment.files import write_atomic

__all__ = ["CSVLogger", "TensorBoardLogger"]


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger, keeping the rows with ``step <= resume_step`` (None: a fresh log).

    Lightning's writer deletes an existing ``metrics.csv`` when it starts: the kept rows wait
    in a holding file beside the log folder (renames only) and become the new log's beginning.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header: list[str] = []
        self._holding: Path | None = None
        metrics = Path(self.log_dir) / "metrics.csv"
        holding = metrics.parent.parent / f".{metrics.parent.name}-metrics-kept.csv"
        # an attempt killed between these renames left its rows in the holding file
        source = metrics if metrics.is_file() else holding
        if resume_step is None or rank_zero_only.rank != 0 or not source.is_file():
            return
        with source.open(newline="") as file:
            reader = csv.DictReader(file)
            header = list(reader.fieldnames or [])
            rows = []
            for number, row in enumerate(reader, start=2):
                try:
                    if row.get("step") and int(float(row["step"])) <= resume_step:
                        rows.append(row)
                except ValueError:
                    raise ValueError(f"{source}, line {number}: step={row['step']!r} is not a number; correct or "
                                     "delete that line (every validation is also in thresholds.json)") from None
        self._header, self._holding, text = sorted(header), holding, io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self._header)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(holding, text.getvalue())
        metrics.unlink(missing_ok=True)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._holding is None:
            return super().experiment
        # An empty folder: the writer neither deletes nor warns. hparams.yaml is rewritten when hparams are logged.
        (Path(self.log_dir) / "hparams.yaml").unlink(missing_ok=True)
        writer = super().experiment
        os.replace(self._holding, Path(self.log_dir) / "metrics.csv")
        writer.metrics_keys = list(self._header)  # new rows extend the kept file's header
        self._holding = None
        return writer


class TensorBoardLogger(_TensorBoardLogger):
    """Lightning's TensorBoardLogger, hiding the events a killed attempt wrote after ``resume_step`` (the
    writer's ``purge_step``), so a resumed run shows one curve; None: nothing purged."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        if resume_step is not None:
            kwargs["purge_step"] = resume_step + 1
        super().__init__(*args, **kwargs)
