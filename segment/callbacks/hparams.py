"""TensorBoard's HPARAMS table (and the other loggers' hyperparameters): what a sweep varies, and
how runs did."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard.summary import hparams as hparams_summary

from segment.callbacks.thresholds import ThresholdTracker
from segment.config import identity, ordered, short_names, swept_keys, value_text

__all__ = ["HyperparameterTable", "hyperparameters"]


def hyperparameters(
    cfg: DictConfig, overrides: Sequence[str], choices: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The keys a researcher compares runs by (TensorBoard's HPARAMS, csv/hparams.yaml), each once,
    named as in
    job folders: the run's own overrides first (what a sweep varies), then model, seed, rate, batch,
    image size, epochs, optimiser, schedule and loss. Also the names of the keys the sweep varies (a
    single
    run: its overrides)."""
    values = identity(overrides)
    keys = ordered(values, choices.keys())
    names = short_names(keys)
    params = {names[key]: values[key] for key in keys}
    varied = swept_keys()
    swept = [names[key] for key in keys if key in varied] or list(params)
    select = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    short = lambda key: (select(key) or "").rsplit(".", 1)[-1] or None  # noqa: E731
    described = {
        "model": choices.get("model"),
        "seed": cfg.get("seed"),
        "lr": select("model.optimizer.lr"),
        "batch_size": select("data.batch_size"),
        "image_size": select("data.image_size"),
        "max_epochs": select("trainer.max_epochs"),
        "optimizer": short("model.optimizer._target_"),
        "scheduler": short("model.scheduler.scheduler._target_"),
        "loss": short("model.loss._target_"),
        "data": choices.get("data"),
        "tags": ",".join(cfg.get("tags") or []) or None,
    }
    params |= {
        name: value for name, value in described.items() if name not in params and value is not None
    }
    plain = lambda v: v if isinstance(v, bool | int | float | str) else value_text(v)  # noqa: E731
    return {name: plain(value) for name, value in params.items()}, swept


class HyperparameterTable(Callback):
    """Log a run's hyperparameters once, with its final and best validation scores and thresholds as
    metrics.

    The keys come from :func:`hyperparameters` (``train.py`` passes them as ``params``): the run's
    own overrides first, named as in job folders, each key once; the encoder weights actually loaded
    and the precision trained in are added here. Metrics: ``final/<name>`` and ``best/<name>`` for
    each of ``metrics`` (best: lowest loss, highest score) and ``thresholds/<level>``, the
    fractional epoch at which the threshold tracker found each level reached (NaN until then).

    Args:
        params: The hyperparameters (set by ``train.py``).
        metrics: Validation metrics to report, losses first (``*loss*`` is minimised).
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        swept: Sequence[str] = (),
        metrics: Sequence[str] = ("val/loss", "val/miou", "val/pixel_acc"),
    ) -> None:
        self.params, self.swept = dict(params or {}), list(swept)
        self.metrics = list(metrics)
        self.best: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        params = {
            **self.params,
            "encoder_weights": pl_module.weights_record.source,
            "precision": str(trainer.precision),
        }
        levels = [
            f"thresholds/{t.name}"
            for cb in trainer.callbacks
            if isinstance(cb, ThresholdTracker)
            for t in cb.thresholds
        ]
        metrics = {
            f"{kind}/{name}": math.nan for name in self.metrics for kind in ("final", "best")
        }
        for logger in trainer.loggers:
            if isinstance(
                logger, TensorBoardLogger
            ):  # the HPARAMS tab shows only metrics declared with the params
                metrics |= dict.fromkeys(levels, math.nan)
                _write_experiment(logger, params, metrics, self.swept)
                logger.log_hyperparams(params, metrics=metrics)
            else:
                logger.log_hyperparams(params)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        logged = trainer.callback_metrics
        found = {name: float(logged[name]) for name in self.metrics if name in logged}
        for name, value in found.items():
            lower = "loss" in name
            previous = self.best.get(name)
            if previous is None or (value < previous if lower else value > previous):
                self.best[name] = value
        scores = {f"final/{name}": value for name, value in found.items()}
        scores |= {f"best/{name}": value for name, value in self.best.items()}
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=trainer.global_step)


@rank_zero_only  # other DDP ranks have no event writer (as for Lightning's log_hyperparams)
def _write_experiment(
    logger: TensorBoardLogger,
    params: dict[str, Any],
    metrics: dict[str, float],
    swept: Sequence[str],
) -> None:
    """The HPARAMS tab's column list, the swept keys marked as ``differs``: TensorBoard (2.21)
    orders the columns by ``differs``, then by name, and shows the first ones; unmarked,
    ``batch_size`` and ``data`` came before ``model`` and ``seed``. Written before Lightning's own
    (TensorBoard keeps a tag's first metadata); the file writer is Lightning's private API, as
    Lightning itself uses it to write the same summary."""
    experiment, _, _ = hparams_summary(params, metrics)
    value = experiment.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in swept
    value.metadata.plugin_data.content = data.SerializeToString()
    logger.experiment._get_file_writer().add_summary(experiment)
