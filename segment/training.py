"""One training run from a composed config: the body of ``train.py``."""

from __future__ import annotations

import logging
import shlex

from hydra.core.hydra_config import HydraConfig
from lightning import Trainer, seed_everything
from lightning.pytorch.callbacks import Timer
from omegaconf import DictConfig, OmegaConf

from segment.build import Built, build, build_callbacks, build_data
from segment.config.compose import print_config_tree
from segment.config.names import sweep_dir
from segment.config.schema import validate
from segment.config.trust import without_pretrained
from segment.data.sampling import data_order
from segment.device.precision import machine, resolve_precision
from segment.models.weights import WeightsRecord
from segment.run.folder import RunFolder
from segment.run.record import versions
from segment.run.resume import continue_command, follows_length

__all__ = ["train"]

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Claim the run folder, build the run, train it (and test it), record how it ended.

    Returns:
        The metrics logged last (``val/loss``, ``val/miou``, ...; ``test/*`` with
        ``test_after_fit``).
    """
    with RunFolder(cfg).claim() as run:
        cfg = run.own_config(cfg)  # a continued run's own: its saved overrides, then the typed
        cfg, chosen = _with_precision(cfg)
        validate(cfg)
        log_position = run.check_resume(cfg)  # the checkpoint's log position; None: a fresh start
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        callbacks = build_callbacks(cfg, run.overrides, choices)  # their checks before the data
        datamodule = build_data(cfg, prepare=not run.decision.own_config)
        fingerprint = datamodule.fingerprint()
        run.check_data(fingerprint)
        if run.decision.action == "skip":
            log.info("skip_completed: %s already completed; not training again", run.path)
            return run.skip()
        if OmegaConf.select(cfg, "extras.print_config"):
            print_config_tree(cfg)
        if cfg.get("seed") is not None:
            seed_everything(cfg.seed, workers=True)
        continuing = run.decision.checkpoint is not None  # its weights: the checkpoint's
        built = build(
            _fetching_none(cfg) if continuing else cfg,
            datamodule,
            callbacks=callbacks,
            log_position=log_position,
            data=fingerprint,
        )
        if continuing and run.record.encoder_weights_used:
            built.module.weights_record = WeightsRecord(**run.record.encoder_weights_used)
        run.attempt.precision, run.attempt.machine = chosen, machine(cfg.trainer.accelerator)
        run.start(cfg, built.trainer, **_recorded(cfg, built, fingerprint))
        trainer = built.trainer
        trainer.fit(built.module, datamodule=datamodule, ckpt_path=run.decision.checkpoint)
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if cfg.get("test_after_fit"):
            metrics |= _test(built)
        run.finish(metrics, stopped=_stopped_by(trainer))
        log.info("%s", summary(cfg, run, built, metrics))
        return metrics


def _stopped_by(trainer: Trainer) -> str | None:
    """``max_time`` where the trainer's time limit ended the run before its length."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    return "max_time" if remaining is not None and remaining <= 0 else None


def _fetching_none(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every net, at any depth, told to fetch no pretrained weights."""
    built = cfg.copy()
    built.model = without_pretrained(OmegaConf.to_container(cfg.model))
    return built


def _recorded(cfg: DictConfig, built: Built, fingerprint: dict) -> dict:
    """What the run record keeps of what a run trains on and with."""
    return {
        "seed": cfg.get("seed"),
        "data": fingerprint,
        "labels": built.datamodule.info.as_record(),
        "data_order": data_order(cfg.get("seed")),
        "versions": versions(),
        "tags": list(cfg.get("tags") or []),
        "encoder_weights_used": built.module.weights_record.as_dict(),
        "loss": OmegaConf.to_container(cfg.model.loss, resolve=True),
    }


def _with_precision(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """``cfg`` with ``trainer.precision`` measured (``auto``) or as given (a continued run's saved
    config says what ran), and what was chosen."""
    precision, chosen = resolve_precision(
        cfg.trainer.precision, cfg.trainer.accelerator, sweep_dir()
    )
    cfg.trainer.precision = precision
    return cfg, chosen


def _test(built: Built) -> dict[str, float]:
    """Score the test split with the best checkpoint by the monitored loss (else the weights)."""
    datamodule, trainer = built.datamodule, built.trainer
    if not datamodule.has_split("test"):
        log.warning("test_after_fit: %s has no test split here", datamodule.info.name)
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    [scores] = trainer.test(
        built.module, datamodule=datamodule, ckpt_path=best or None, verbose=False
    )
    return {name: float(value) for name, value in scores.items()}


def summary(cfg: DictConfig, run: RunFolder, built: Built, metrics: dict[str, float]) -> str:
    """Where a finished run's results are, and commands that paste and run as printed."""
    trainer = built.trainer
    callback = trainer.checkpoint_callback
    best = callback.best_model_path if callback and callback.best_model_path else None
    names = ("val/loss", "val/miou", "val/pixel_acc", "test/loss", "test/miou", "test/pixel_acc")
    lines = [
        f"Run folder: {run.path} ({trainer.current_epoch} epochs; encoder weights: "
        f"{built.module.weights_record})",
        *(f"  {name:14s} {metrics[name]:.4f}" for name in names if name in metrics),
        f"  best checkpoint: {best or 'none kept'}",
    ]
    for logger in trainer.loggers:  # each logger's own command (segment.run.loggers)
        viewer = getattr(logger, "viewer", None)
        if callable(viewer) and (command := viewer(run.path)):
            lines.append(f"  dashboards:      {command}")
    if best:
        lines.append(f"  evaluate:        segment-evaluate ckpt_path={shlex.quote(best)}")
    if best and (trainer.max_epochs or 0) > 0 and not follows_length(cfg):
        longer = continue_command(run.path, f"trainer.max_epochs={2 * trainer.max_epochs}")
        lines.append(f"  train longer:    {longer}")
    return "\n".join(lines)
