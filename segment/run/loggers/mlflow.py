"""MLflow: scalars, the mask panel, the hyperparameters with the resolved config and the run's
tags, and the checkpoints asked for (``log_model``)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger as _MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    from segment.callbacks.hparams import RunView

__all__ = ["MLFlowLogger"]


class MLFlowLogger(_MLFlowLogger):
    """Lightning's MLFlowLogger whose ``log_model`` uploads the best checkpoint by the monitored
    metric under ``best/`` and the newest one under ``latest/`` when training ends (``"all"``: also
    after every checkpoint). Lightning's own upload scans only the checkpoint callback that saved
    last, so with a best and a ``last.ckpt`` callback it uploaded ``last.ckpt`` under both names.
    """

    def __init__(self, *args: Any, log_model: bool | str = False, **kwargs: Any) -> None:
        super().__init__(*args, log_model=False, **kwargs)
        self._upload, self._uri = log_model, kwargs.get("tracking_uri")
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

    @rank_zero_only
    def log_masks(self, tag: str, sheet: np.ndarray, step: int, masks: tuple) -> None:
        self.experiment.log_image(self.run_id, sheet, key=tag.replace("/", "_"), step=step)

    @rank_zero_only
    def log_run(self, run: RunView) -> None:
        """The hyperparameters (the tags as MLflow tags), the resolved config as ``config.yaml``."""
        self.log_hyperparams({k: v for k, v in run.params.items() if k != "tags"})
        self.experiment.log_text(self.run_id, run.config, "config.yaml")
        for tag in run.tags:
            self.experiment.set_tag(self.run_id, str(tag), "")

    def viewer(self, run: Path) -> str:
        store = f" --backend-store-uri {shlex.quote(str(self._uri))}" if self._uri else ""
        return f"mlflow ui{store}"
