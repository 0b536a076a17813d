"""The run's hyperparameters and scores for every logger (TensorBoard's HPARAMS table first): what
a sweep varies, and how runs did."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import yaml
from lightning import Callback, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf

from segment.callbacks.thresholds import ThresholdTracker
from segment.config.names import identity, ordered, short_names, swept_keys, value_text

__all__ = ["HyperparameterTable", "RunView", "hyperparameters"]


class RunView(NamedTuple):
    """What a logger is shown of a run when training starts (its ``log_run``)."""

    params: dict[str, Any]  # the hyperparameters, named as in job folders
    columns: list[str]  # the metrics a table of runs shows: final and best scores, thresholds
    swept: list[str]  # the keys the sweep varies
    config: str  # the resolved config, as YAML
    tags: list[str]


def hyperparameters(
    cfg: DictConfig, overrides: Sequence[str], choices: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The keys a researcher compares runs by (TensorBoard's HPARAMS, csv/hparams.yaml), each once,
    named as in job folders: the run's own overrides first (what a sweep varies), then model, seed,
    rate, batch, image size, epochs, optimiser, schedule and loss. Also the names of the keys the
    sweep varies (a single run: its overrides)."""
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
    metrics, and give every logger what it shows best.

    The keys come from :func:`hyperparameters` (``build(cfg)`` passes them as ``params``): the
    run's own overrides first, named as in job folders, each key once; the encoder weights actually
    loaded and the precision trained in are added here. Metrics: ``final/<name>`` and
    ``best/<name>`` for each of ``metrics`` (best: lowest loss, highest score), written once, when
    training ends (in TensorBoard into the run's own event file, where the HPARAMS table reads
    them), and ``thresholds/<level>``. MLflow and W&B get the
    resolved config (``run_config``: an artifact, W&B's config panel) and the run's tags as tags.

    Args:
        params: The hyperparameters (passed by ``build(cfg)``).
        swept: The keys the sweep varies (first in the table).
        metrics: Validation metrics to report, losses first (``*loss*`` is minimised).
        run_config: The run's resolved config, as YAML.
    """

    runtime_args = ("params", "swept", "run_config")  # given by segment.build

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        swept: Sequence[str] = (),
        metrics: Sequence[str] = ("val/loss", "val/miou", "val/pixel_acc"),
        run_config: str = "",
    ) -> None:
        self.params, self.swept = dict(params or {}), list(swept)
        self.metrics, self.config = list(metrics), run_config
        self.best: dict[str, float] = {}
        self.final: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "final": self.final}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.final = dict(state.get("best", {})), dict(state.get("final", {}))

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
        summary = [f"{kind}/{name}" for name in self.metrics for kind in ("final", "best")]
        tags = list((yaml.safe_load(self.config) or {}).get("tags") or [])
        for logger in trainer.loggers:  # a logger's own view of the run (segment.run.loggers)
            if callable(getattr(logger, "log_run", None)):
                logger.log_run(RunView(params, [*summary, *levels], self.swept, self.config, tags))
            else:
                logger.log_hyperparams(params)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        logged = trainer.callback_metrics
        self.final = {name: float(logged[name]) for name in self.metrics if name in logged}
        for name, value in self.final.items():
            previous = self.best.get(name)
            if previous is None or (value < previous if "loss" in name else value > previous):
                self.best[name] = value

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scores = {f"final/{name}": value for name, value in self.final.items()}
        scores |= {f"best/{name}": value for name, value in self.best.items()}
        for logger in trainer.loggers:
            if callable(getattr(logger, "log_scores", None)):
                logger.log_scores(scores, trainer.global_step)
            elif scores:
                logger.log_metrics(scores, step=trainer.global_step)
