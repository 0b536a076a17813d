"""The one way a run is built from its config: ``build(cfg)`` -> data, module, callbacks, loggers
and trainer. ``train.py``, the benchmarks, the data check and the tests all use it.

Values known only at run time (the continued checkpoint's log position, the hyperparameter table's
keys, the resolved config) are passed as arguments, never through placeholders in the YAML: to each
callback or logger whose class asks for them by name in its ``runtime_args`` (a class that merely
has a parameter of that name gets nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from segment.callbacks.hparams import hyperparameters
from segment.checkpoints import init_weights
from segment.data.datamodule import SegmentationDataModule
from segment.models.losses import with_class_weights
from segment.run.resume import RunInCheckpoint

__all__ = ["Built", "build", "build_callbacks", "build_data", "instantiate_each"]


@dataclass
class Built:
    """What a run trains with."""

    datamodule: SegmentationDataModule
    module: L.LightningModule
    callbacks: list[L.Callback]
    loggers: list[Any]
    trainer: L.Trainer


def build_data(cfg: DictConfig, prepare: bool = True) -> SegmentationDataModule:
    """The data module, its files present (``prepare``: ``prepare_data`` downloads, renders,
    checks; a run continued from its folder reads its data and never fetches or writes it)."""
    datamodule = instantiate(cfg.data)
    if prepare:
        datamodule.prepare_data()
    return datamodule


def instantiate_each(configs: Mapping | None, **runtime: Any) -> list:
    """Every entry of a named collection (callbacks, loggers); each gets the ``runtime`` values its
    class names in its ``runtime_args``."""
    built = []
    for name, config in (configs or {}).items():
        if not isinstance(config, Mapping) or "_target_" not in config:
            raise ValueError(f"entry {name!r} has no _target_; got {config!r}")
        asks = getattr(get_object(config["_target_"]), "runtime_args", ())
        built.append(instantiate(config, **{k: v for k, v in runtime.items() if k in asks}))
    return built


def build_callbacks(
    cfg: DictConfig, overrides: Sequence[str] = (), choices: Mapping[str, Any] | None = None
) -> list[L.Callback]:
    """The config's callbacks; built first, their argument checks fail before data is read."""
    params, swept = hyperparameters(cfg, overrides, choices or {})
    resolved = OmegaConf.to_yaml(cfg, resolve=True)  # text: instantiate would build its _target_s
    return instantiate_each(cfg.get("callbacks"), params=params, swept=swept, run_config=resolved)


def build(
    cfg: DictConfig,
    datamodule: SegmentationDataModule | None = None,
    *,
    callbacks: list[L.Callback] | None = None,
    log_position: Mapping[str, int] | None = None,
    data: dict[str, Any] | None = None,
    **trainer_args: Any,
) -> Built:
    """Build a run from ``cfg`` (``trainer.precision`` resolved). Nothing is written: loggers touch
    their files when logging begins.

    Args:
        cfg: The composed train config.
        datamodule: Built already by :func:`build_data` (the run folder checks its data first).
        callbacks: Built already by :func:`build_callbacks` (with the hyperparameter table's
            keys); default: built here, without them.
        log_position: The log position of the checkpoint a run continues from.
        data: The data fingerprint stored in every checkpoint.
        **trainer_args: Passed to the ``Trainer`` over the config; ``logger=False``: no loggers.
    """
    callbacks = build_callbacks(cfg) if callbacks is None else list(callbacks)
    datamodule = datamodule or build_data(cfg)
    info = datamodule.info
    loss = with_class_weights(cfg.model.loss, datamodule)  # from the training split's labels
    names, ignore = list(info.class_names), info.ignore_index
    module = instantiate(
        cfg.model, class_names=names, ignore_index=ignore, loss=loss, init_from=None
    )
    if (init_from := cfg.model.get("init_from")) is not None:  # the module reads no checkpoint
        init_weights(module, init_from)
    callbacks.append(RunInCheckpoint(OmegaConf.to_container(cfg, resolve=True), data))
    wanted = trainer_args.pop("logger", True) is not False
    loggers = instantiate_each(cfg.get("logger"), log_position=log_position) if wanted else []
    options = {"callbacks": callbacks, "logger": loggers or False, **trainer_args}
    return Built(datamodule, module, callbacks, loggers, instantiate(cfg.trainer, **options))
