"""TensorBoard: scalars, the mask panel, the HPARAMS table with the run's scores, and a resumed
run's events continued where its checkpoint was written."""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard.summary import hparams as hparams_summary

if TYPE_CHECKING:
    from segment.callbacks.hparams import RunView

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(_TensorBoardLogger):
    """Lightning's TensorBoardLogger, hiding the events an earlier attempt wrote after the
    checkpoint it continues from (the writer's ``purge_step``); None: nothing purged."""

    runtime_args = ("log_position",)  # given by segment.build

    def __init__(
        self, *args: Any, log_position: Mapping[str, int] | None = None, **kwargs: Any
    ) -> None:
        if log_position is not None:
            kwargs["purge_step"] = log_position["step"] + 1
        super().__init__(*args, **kwargs)
        self._step = log_position["step"] if log_position is not None else -1

    @property
    def log_position(self) -> dict[str, int]:
        return {"step": self._step}

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Lightning adds the epoch to every row: in TensorBoard a card of its own, before train/val
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
        self._step = max(self._step, step or 0)

    @rank_zero_only
    def log_masks(self, tag: str, sheet: np.ndarray, step: int, masks: tuple) -> None:
        self.experiment.add_image(tag, sheet, global_step=step, dataformats="HWC")

    @rank_zero_only  # other DDP ranks have no event writer (as for Lightning's log_hyperparams)
    def log_run(self, run: RunView) -> None:
        """The HPARAMS tab's column list, the swept keys marked as ``differs``: TensorBoard (2.21)
        orders the columns by ``differs``, then by name, and shows the first ones; unmarked,
        ``batch_size`` and ``data`` came before ``model`` and ``seed``. Lightning writes these
        summaries only with metrics, which it also logs as a point at step 0; the file writer is
        Lightning's private API, as Lightning itself uses it to write the same summaries."""
        experiment, start, end = hparams_summary(run.params, dict.fromkeys(run.columns, math.nan))
        value = experiment.value[0]
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in run.swept
        value.metadata.plugin_data.content = data.SerializeToString()
        writer = self.experiment._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)
        self.log_hyperparams(run.params)

    @rank_zero_only
    def log_scores(self, scores: Mapping[str, float], step: int) -> None:
        """The final and best scores, once, in the run's own event file (the HPARAMS table reads
        them there): one TensorBoard run per job."""
        for name, value in scores.items():
            self.experiment.add_scalar(name, value, step)
        self.experiment.flush()

    def viewer(self, run: Path) -> str:
        return f"tensorboard --logdir {shlex.quote(str(run))}"
