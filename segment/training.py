"""One training run from a composed config: the body of ``train.py``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning import Callback, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from segment.data import SegmentationDataModule
from segment.models import SegmentationModule
from segment.provenance import RunRecord
from segment.schema import validate

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
    """Validate ``cfg``; seed, build data, model, callbacks, loggers and trainer; fit.

    The run folder's ``run.json`` (:class:`~segment.provenance.RunRecord`) says whether the
    run is running, completed, interrupted or failed (with the error), and holds the git
    commit and package versions next to Hydra's saved config. With ``skip_completed`` a
    run folder whose ``run.json`` says completed is not trained again, and one left
    incomplete with a ``last.ckpt`` continues from it (a rerun of a sweep into its folder).

    Returns:
        The metrics logged last (``val/loss``, ``val/miou``, ...) as floats.
    """
    output_dir = Path(cfg.paths.output_dir)
    previous = RunRecord.read(output_dir)
    if cfg.get("skip_completed") and previous is not None and previous.get("status") == "completed":
        log.info("skip_completed: %s already completed; not training again", output_dir)
        return dict(previous.get("metrics", {}))
    record = RunRecord(output_dir, seed=cfg.get("seed"))
    try:
        record.update()
    except OSError as error:
        raise OSError(
            f"cannot write to the run folder {output_dir}: {error}. "
            "Point paths.log_dir (or hydra.run.dir / hydra.sweep.dir) at a writable folder."
        ) from error
    try:
        validate(cfg)
        metrics, trainer = _fit(cfg, record, previous)
    except Exception as error:
        record.failed(error)
        raise
    if trainer.interrupted:
        record.update(status="interrupted", metrics=metrics)
    else:
        record.completed(metrics)
    _report(cfg, trainer, metrics)
    return metrics


def _fit(cfg: DictConfig, record: RunRecord, previous: dict | None) -> tuple[dict[str, float], Trainer]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    # Cheap constructors first: their argument checks fail before weights or data are fetched.
    callbacks: list[Callback] = instantiate_each(cfg.get("callbacks"))
    loggers: list[Logger] = instantiate_each(cfg.get("logger"))
    datamodule: SegmentationDataModule = instantiate(cfg.data)
    info = datamodule.info
    model: SegmentationModule = instantiate(
        cfg.model, class_names=list(info.class_names), ignore_index=info.ignore_index
    )
    trainer: Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    ckpt_path, keep_step = _resume_point(cfg, trainer, previous)
    if keep_step is not None:
        for logger in trainer.loggers:
            if hasattr(logger, "keep_until"):
                logger.keep_until(keep_step)
    record.update(encoder_weights_used=model.hparams.encoder_weights_used, resumed_from=ckpt_path)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    # What the run really started from, next to what it asked for (they differ after a fallback).
    resolved["encoder_weights_used"] = model.hparams.encoder_weights_used
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

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    return metrics, trainer


def _resume_point(cfg: DictConfig, trainer: Trainer, previous: dict | None) -> tuple[str | None, int | None]:
    """The checkpoint to continue from, and the last log step to keep of an earlier attempt.

    ``ckpt_path=last`` means the ``last.ckpt`` of this run folder's checkpoint callback;
    with ``skip_completed``, a run that was killed (``run.json`` still says running) or
    interrupted continues from it too. Returns ``(None, -1)`` for a fresh start in a folder
    an earlier attempt logged into (its rows and events are dropped), ``(None, None)`` for
    a fresh folder.
    """
    requested = cfg.get("ckpt_path")
    callback = trainer.checkpoint_callback
    last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}.ckpt" if callback and callback.dirpath else None
    if requested == "last":
        if last is None or not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last: no last checkpoint in this run folder ({last}). To continue a killed run, "
                "start in its folder: hydra.run.dir=<run folder> ckpt_path=last; or pass ckpt_path=<file.ckpt>"
            )
        requested = str(last)
    elif (
        requested is None
        and cfg.get("skip_completed")
        and (previous or {}).get("status") in ("running", "interrupted")
        and last is not None
        and last.is_file()
    ):
        log.info("skip_completed: continuing the incomplete run in %s", Path(cfg.paths.output_dir))
        requested = str(last)
    if requested is None:
        return None, (-1 if previous is not None else None)
    path = Path(requested)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={requested}: no such checkpoint file")
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if "global_step" not in checkpoint:
        raise ValueError(f"ckpt_path={requested} is not a Lightning training checkpoint (no global_step)")
    return str(path), int(checkpoint["global_step"])


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
