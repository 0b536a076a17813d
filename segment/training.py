"""One training run from a composed config: the body of ``train.py``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning import Callback, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from segment.data import SegmentationDataModule
from segment.models import SegmentationModule
from segment.provenance import RunRecord

__all__ = ["train", "instantiate_each"]

log = logging.getLogger(__name__)


def instantiate_each(configs: Mapping | None) -> list:
    """Instantiate every ``_target_`` entry of a named collection (callbacks, loggers)."""
    if not configs:
        return []
    objects = []
    for name, config in configs.items():
        if not isinstance(config, Mapping) or "_target_" not in config:
            raise ValueError(f"entry {name!r} has no _target_; got {config!r}")
        objects.append(instantiate(config))
    return objects


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, build data, model, callbacks, loggers and trainer from ``cfg``, then fit.

    The run folder's ``run.json`` (:class:`~segment.provenance.RunRecord`) says whether the
    run is running, completed, interrupted or failed (with the error), and holds the git
    commit and package versions next to Hydra's saved config.

    Returns:
        The metrics logged last (``val/loss``, ``val/miou``, ...) as floats.
    """
    record = RunRecord(cfg.paths.output_dir, seed=cfg.get("seed"))
    record.update()
    try:
        metrics, trainer = _fit(cfg, record)
    except Exception as error:
        record.failed(error)
        raise
    if trainer.interrupted:
        record.update(status="interrupted", metrics=metrics)
    else:
        record.completed(metrics)
    _report(cfg, trainer, metrics)
    return metrics


def _fit(cfg: DictConfig, record: RunRecord) -> tuple[dict[str, float], Trainer]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule: SegmentationDataModule = instantiate(cfg.data)
    info = datamodule.info
    model: SegmentationModule = instantiate(
        cfg.model, class_names=list(info.class_names), ignore_index=info.ignore_index
    )
    callbacks: list[Callback] = instantiate_each(cfg.get("callbacks"))
    loggers: list[Logger] = instantiate_each(cfg.get("logger"))
    trainer: Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    # What the run really started from, next to what it asked for (they differ after a fallback).
    resolved["encoder_weights_used"] = model.hparams.encoder_weights_used
    record.update(encoder_weights_used=model.hparams.encoder_weights_used)
    # Metrics that TensorBoard's hparams view should show next to the config (the thresholds).
    hparams_metrics = {}
    for callback in callbacks:
        if hasattr(callback, "hparams_metrics"):
            hparams_metrics.update(callback.hparams_metrics())
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and hparams_metrics:
            logger.log_hyperparams(resolved, metrics=hparams_metrics)
        else:
            logger.log_hyperparams(resolved)
    log.info(
        "model %s, encoder weights: %s; data %s, %d classes; precision %s",
        cfg.model.net.get("encoder_name", cfg.model.net._target_),
        model.weights_record,
        info.name,
        info.num_classes,
        trainer.precision,
    )

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    return metrics, trainer


def _report(cfg: DictConfig, trainer: Trainer, metrics: dict[str, float]) -> None:
    """Tell the user where the results went and how the run ended."""
    output_dir = Path(cfg.paths.output_dir)
    lines = [f"Run folder: {output_dir}", f"  encoder weights: {trainer.lightning_module.weights_record}"]
    for name in ("val/loss", "val/miou", "val/pixel_acc"):
        if name in metrics:
            lines.append(f"  {name:14s} {metrics[name]:.4f} after {trainer.current_epoch} epoch(s)")
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
        lines.append(f"  best checkpoint: {trainer.checkpoint_callback.best_model_path}")
    if any(Path(lg.log_dir or "").exists() for lg in trainer.loggers if hasattr(lg, "log_dir")):
        lines.append(f"  dashboards:      tensorboard --logdir {output_dir}")
    log.info("\n".join(lines))
