"""One training run from a composed config: the body of ``train.py``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning import Callback, Trainer
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from segment.checkpoints import ConfigInCheckpoint, newest_checkpoint, read_checkpoint, remove_partial_files
from segment.data import SegmentationDataModule
from segment.models import SegmentationModule
from segment.models.losses import needs_class_statistics, resolve_class_weights
from segment.precision import resolve_precision
from segment.provenance import RunRecord, hparams_summary
from segment.runfolder import RESUMABLE_KEYS, RunFolder, RunFolderError, config_differences
from segment.schema import validate

__all__ = ["instantiate_each", "resolve_trainer_precision", "train"]

log = logging.getLogger(__name__)


def instantiate_each(configs: Mapping | None, **kwargs: Any) -> list:
    """Instantiate every ``_target_`` entry of a named collection (callbacks, loggers).

    ``kwargs`` go to the entries whose config declares that key (``resume_step`` for loggers).
    """
    if not configs:
        return []
    objects = []
    for name, config in configs.items():
        if not isinstance(config, Mapping) or "_target_" not in config:
            raise ValueError(f"entry {name!r} has no _target_; got {config!r}")
        objects.append(instantiate(config, **{k: v for k, v in kwargs.items() if k in config}))
    return objects


@dataclass(frozen=True)
class _Plan:
    """What ``train()`` does with the run folder."""

    action: str  # "fresh", "resume" or "skip"
    checkpoint: Path | None = None
    step: int | None = None  # the checkpoint's global step: logs after it are dropped
    archive: bool = False  # move an earlier run's files to archive/ first


def train(cfg: DictConfig) -> dict[str, float]:
    """Claim the run folder, validate ``cfg``; seed, build data, model, callbacks, loggers and trainer; fit.

    The run folder is locked for the whole run and never silently reused: a folder that
    holds a run is continued (``ckpt_path=last``), skipped (``skip_completed`` and
    completed), archived and replaced (``overwrite=true``), or refused with the choices.
    ``run.json`` (:class:`~segment.provenance.RunRecord`) says whether the run is
    running, completed, interrupted or failed (with the error).

    Returns:
        The metrics logged last (``val/loss``, ``val/miou``, ...) as floats.
    """
    output_dir = Path(cfg.paths.output_dir)
    folder = RunFolder(output_dir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder.locked())
        except OSError as error:
            raise OSError(
                f"cannot write to the run folder {output_dir}: {error}. "
                "Point paths.log_dir (or hydra.run.dir / hydra.sweep.dir) at a writable folder."
            ) from error
        return _train_in(cfg, folder)


def _train_in(cfg: DictConfig, folder: RunFolder) -> dict[str, float]:
    previous = RunRecord.read(folder.path)
    try:
        plan = _plan(cfg, folder, previous)
    except Exception as error:
        if previous is None and not folder.holds_results():
            RunRecord(folder.path, seed=cfg.get("seed")).failed(error)  # a fresh folder: keep the reason
        else:
            folder.restore_owner_config()  # Hydra wrote this refused attempt's config over the owner's
        raise
    if plan.action == "skip":
        folder.restore_owner_config()
        log.info("skip_completed: %s already completed; not training again", folder.path)
        return dict(previous.get("metrics", {}))
    record = RunRecord(folder.path, previous=previous if plan.action == "resume" else None, seed=cfg.get("seed"))
    try:
        precision = resolve_trainer_precision(cfg)
        validate(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if plan.checkpoint is not None:
            _check_resume_config(cfg, resolved, plan.checkpoint)
        if plan.archive:
            folder.archive((previous or {}).get("started"))
        remove_partial_files(_checkpoint_dir(cfg))
        folder.save_owner_config()
        record.update(precision=precision, resumed_from=plan.checkpoint and str(plan.checkpoint))
        metrics, trainer = _fit(cfg, resolved, record, plan)
    except RunFolderError:
        folder.restore_owner_config()
        raise
    except Exception as error:
        record.failed(error)
        if plan.action == "resume" and (previous or {}).get("status") == "completed":
            folder.restore_owner_config()
        raise
    if trainer.interrupted:
        record.update(status="interrupted", metrics=metrics)
    else:
        record.completed(metrics)
    _report(cfg, trainer, metrics)
    return metrics


def resolve_trainer_precision(cfg: DictConfig) -> dict[str, Any]:
    """Replace ``trainer.precision=auto`` by what this host (or this sweep) measured; return how it was chosen."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    sweep = HydraConfig.get().sweep.dir if multirun else None
    cfg.trainer.precision, record = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator, sweep)
    return record


def _checkpoint_dir(cfg: DictConfig) -> Path:
    """Where the run's checkpoints go: the checkpoint callback's ``dirpath``, else ``<run folder>/checkpoints``."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    return Path(dirpath) if dirpath else Path(cfg.paths.output_dir) / "checkpoints"


def _plan(cfg: DictConfig, folder: RunFolder, previous: dict | None) -> _Plan:
    """Decide between a fresh start, a resume and a skip; refuse to reuse a folder that holds a run."""
    requested = cfg.get("ckpt_path")
    # Ranks other than 0 (srun starts train.py once per GPU) follow rank 0, which owns the folder
    # and may already have written this attempt's run.json: no reuse checks here.
    holds_run = folder.enabled and (previous is not None or folder.holds_results())
    if requested == "last":
        found = newest_checkpoint(_checkpoint_dir(cfg))
        if found is None:
            unreadable = sorted(p.name for p in _checkpoint_dir(cfg).glob("*.ckpt"))
            why = f" ({', '.join(unreadable)} cannot be read: see the warnings above)" if unreadable else ""
            raise FileNotFoundError(
                f"ckpt_path=last: no loadable checkpoint in this run folder ({_checkpoint_dir(cfg)}){why}. To continue "
                "a killed run, start in its folder: hydra.run.dir=<run folder> ckpt_path=last; or pass ckpt_path=<file>"
            )
        return _Plan("resume", *found)
    if requested is not None:
        path = Path(requested)
        step = int(read_checkpoint(path, "ckpt_path", require=("global_step",), mmap=True)["global_step"])
        elsewhere = folder.path.resolve() not in path.resolve().parents
        if holds_run and elsewhere and not cfg.get("overwrite"):
            why = f"ckpt_path={requested} is another run's checkpoint, and "
            raise RunFolderError(_occupied(folder, previous, why))
        return _Plan("resume", path, step, archive=holds_run and elsewhere)
    if cfg.get("skip_completed") and previous is not None:
        status = previous.get("status")
        if status == "completed":
            return _Plan("skip")
        found = newest_checkpoint(_checkpoint_dir(cfg)) if status in ("running", "interrupted") else None
        if found is not None:
            log.info("skip_completed: continuing the incomplete run in %s from %s", folder.path, found[0])
            return _Plan("resume", *found)
        return _Plan("fresh", archive=folder.holds_results())  # failed, or killed before its first checkpoint
    if not holds_run:
        return _Plan("fresh")
    if previous is not None and previous.get("status") == "failed" and not folder.holds_results():
        log.info("replacing the record of a failed attempt that left no results (%s)", previous.get("error"))
        return _Plan("fresh")
    if cfg.get("overwrite"):
        return _Plan("fresh", archive=True)
    raise RunFolderError(_occupied(folder, previous))


def _occupied(folder: RunFolder, previous: dict | None, why: str = "") -> str:
    return (
        f"{why}run folder {folder.path} already holds {folder.describe(previous)}; it is never silently reused. "
        "To continue that run: ckpt_path=last; to keep it and start another: choose a new folder "
        "(hydra.run.dir=<folder>); to replace it: overwrite=true (its files move to "
        f"{folder.path / 'archive'}/<start time>/)"
    )


def _path_keys(node: Any, prefix: str = "") -> set[str]:
    """Dotted keys whose value interpolates ``paths.*`` or Hydra's runtime: where files go, not what runs."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, str) and "${" in value and ("paths." in value or "hydra:" in value):
                keys.add(dotted)
            else:
                keys |= _path_keys(value, dotted)
    return keys


def _check_resume_config(cfg: DictConfig, resolved: dict, checkpoint: Path) -> None:
    """Refuse to resume under a config that differs from the checkpoint's in what training does."""
    saved = read_checkpoint(checkpoint, "ckpt_path", mmap=True).get("config")
    if saved is None:
        log.warning("%s holds no config (written before configs were saved): cannot check the resume", checkpoint)
        return
    ignore = set(RESUMABLE_KEYS) | {"paths"} | _path_keys(cfg)
    differences = config_differences(saved, resolved, ignore)
    if differences:
        shown = "\n  ".join(differences[:12]) + (f"\n  ... and {len(differences) - 12} more" if len(differences) > 12
                                                 else "")  # fmt: skip
        raise RunFolderError(
            f"cannot resume from {checkpoint} under a different config; it differs in:\n  {shown}\n"
            "A resume continues the same run: drop these overrides (only where files are, how long training "
            f"goes on and how it is shown may change: {', '.join(sorted(RESUMABLE_KEYS))}). To train on from "
            "these weights with new settings, start a new run with model.init_from=<checkpoint>"
        )


def _fit(cfg: DictConfig, resolved: dict, record: RunRecord, plan: _Plan) -> tuple[dict[str, float], Trainer]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    # Cheap constructors first: their argument checks fail before weights or data are fetched.
    callbacks: list[Callback] = instantiate_each(cfg.get("callbacks"))
    callbacks.append(ConfigInCheckpoint(resolved))
    loggers: list[Logger] = instantiate_each(cfg.get("logger"), resume_step=plan.step)
    datamodule: SegmentationDataModule = instantiate(cfg.data)
    info = datamodule.info
    loss = OmegaConf.to_container(cfg.model.loss, resolve=True)
    if needs_class_statistics(loss):  # class weights come from the training split's label counts
        datamodule.prepare_data()
        datamodule.setup("fit")
        loss = resolve_class_weights(loss, datamodule.train_dataset.statistics or datamodule.train_dataset.scan())
        log.info("loss with class weights: %s", loss)
        record.update(loss=loss)
    model: SegmentationModule = instantiate(
        cfg.model, class_names=list(info.class_names), ignore_index=info.ignore_index, loss=loss
    )
    trainer: Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    record.update(encoder_weights_used=model.hparams.encoder_weights_used, config=resolved)
    summary = hparams_summary(cfg, model, trainer)
    for logger in trainer.loggers:
        logger.log_hyperparams(summary)
    log.info(
        "model %s, encoder weights: %s; data %s, %d classes; precision %s",
        cfg.model.net.get("encoder_name", cfg.model.net._target_),
        model.weights_record,
        info.name,
        info.num_classes,
        trainer.precision,
    )

    trainer.fit(model, datamodule=datamodule, ckpt_path=plan.checkpoint and str(plan.checkpoint))
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if cfg.get("test_after_fit") and not trainer.interrupted:
        if datamodule.has_split("test"):
            # the best checkpoint by the monitored loss when there is one, else the weights as they are
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            [scores] = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update({name: float(value) for name, value in scores.items()})
        else:
            log.warning("test_after_fit: %s has no test split here; nothing to test", info.name)
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
    if any(lg.log_dir and Path(lg.log_dir).exists() for lg in trainer.loggers):
        lines.append(f"  dashboards:      tensorboard --logdir {output_dir}")
    log.info("\n".join(lines))
