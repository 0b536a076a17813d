"""One training run from a composed config: the body of ``train.py``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segment.callbacks.hparams import hyperparameters
from segment.checkpoints import ConfigInCheckpoint
from segment.config import print_config_tree
from segment.models.losses import with_class_weights
from segment.runfolder import RunFolder

__all__ = ["instantiate_each", "train"]

log = logging.getLogger(__name__)


def instantiate_each(configs: Mapping | None, **kwargs: Any) -> list:
    """Instantiate every entry of a named collection (callbacks, loggers); ``kwargs`` go to the entries whose
    config declares that key (``resume_step`` for loggers)."""
    objects = []
    for name, config in (configs or {}).items():
        if not isinstance(config, Mapping) or "_target_" not in config:
            raise ValueError(f"entry {name!r} has no _target_; got {config!r}")
        objects.append(instantiate(config, **{k: v for k, v in kwargs.items() if k in config}))
    return objects


def train(cfg: DictConfig) -> dict[str, float]:
    """Claim the run folder; data, model, callbacks, loggers, trainer; fit (and test); record the outcome.

    Returns:
        The metrics logged last (``val/loss``, ``val/miou``, ...; ``test/*`` with ``test_after_fit``).
    """
    with RunFolder(cfg).claim() as run:  # fresh / continue / skip / archive, checked; run.json
        cfg = run.cfg  # a continued run trains under its own saved config
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        # cheap constructors first: their argument checks fail before data or weights are fetched
        params, swept = hyperparameters(cfg, run.overrides, choices)  # TensorBoard's HPARAMS table
        callbacks = instantiate_each(cfg.callbacks, params=params, swept=swept)
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        run.check_data(datamodule.fingerprint())  # a continued or skipped run must see the same data
        if run.skip:
            log.info("skip_completed: %s already completed; not training again", run.path)
            return dict(run.record.get("metrics", {}))
        if OmegaConf.select(cfg, "extras.print_config"):
            print_config_tree(cfg)
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)

        info = datamodule.info
        loss = with_class_weights(cfg.model.loss, datamodule)  # class weights from the training split's labels
        model = instantiate(cfg.model, class_names=list(info.class_names), ignore_index=info.ignore_index, loss=loss)
        callbacks.append(ConfigInCheckpoint(OmegaConf.to_container(cfg, resolve=True), run.record["data"]))
        loggers = instantiate_each(cfg.logger, resume_step=run.step)
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        run.update(loss=loss, encoder_weights_used=model.weights_record.as_dict(), tags=list(cfg.get("tags") or []))
        log.info("model %s (encoder weights: %s); data %s, %d classes; precision %s",
                 cfg.model.net.get("encoder_name", cfg.model.net._target_), model.weights_record, info.name,
                 info.num_classes, trainer.precision)  # fmt: skip

        trainer.fit(model, datamodule=datamodule, ckpt_path=run.checkpoint)
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if cfg.get("test_after_fit"):
            metrics |= _test(trainer, model, datamodule)
        run.finish(metrics, trainer)
        return metrics


def _test(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    """Score the test split with the best checkpoint by the monitored loss (else the weights as they are)."""
    if not datamodule.has_split("test"):
        log.warning("test_after_fit: %s has no test split here; nothing to test", datamodule.info.name)
        return {}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    [scores] = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    return {name: float(value) for name, value in scores.items()}
