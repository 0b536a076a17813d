"""Weights & Biases (``pip install -e ".[wandb]"``): scalars, the masks as interactive overlays
with class labels, the hyperparameters with the resolved config in its config panel; its files in
the run folder's ``wandb/``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    from segment.callbacks.hparams import RunView

__all__ = ["WandbLogger"]


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger with the project's mask panel, run config and summary line."""

    @rank_zero_only
    def log_masks(self, tag: str, sheet: np.ndarray, step: int, masks: tuple) -> None:
        """Each image with its truth and prediction as overlays with class labels."""
        import wandb  # noqa: PLC0415 -- the optional extra, present whenever this logger is

        images, truths, predictions, names = masks
        labels = dict(enumerate(names))
        overlays = [
            wandb.Image(
                picture,
                masks={
                    "prediction": {"mask_data": pred, "class_labels": labels},
                    "truth": {"mask_data": truth, "class_labels": labels},
                },
            )
            for picture, truth, pred in zip(images, truths, predictions, strict=True)
        ]
        self.experiment.log({tag: overlays, "trainer/global_step": step})

    @rank_zero_only
    def log_run(self, run: RunView) -> None:
        self.log_hyperparams(run.params)
        config_panel = {"config": yaml.safe_load(run.config) or {}}
        self.experiment.config.update(config_panel, allow_val_change=True)

    def viewer(self, run: Path) -> str:
        return f"wandb sync {shlex.quote(str(self.save_dir or run))}/wandb"

    def results(self, run: Path) -> list[Path]:
        return [Path(self.save_dir or run) / "wandb"]
