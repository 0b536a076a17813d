"""A module's weights from a checkpoint: ``init_from`` (weights only) and a trained module rebuilt
from its checkpoint alone (a checkpoint is data: what it rebuilds passes the allow-list)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import TypeVar

import torch
from lightning import LightningModule

from segment.checkpoints import read_checkpoint
from segment.config.trust import check_trusted_targets, without_pretrained
from segment.models.weights import WeightsRecord

# a SegmentationModule (this module stays below module.py, which calls it)
Module = TypeVar("Module", bound=LightningModule)

__all__ = ["init_weights", "load_module"]

log = logging.getLogger(__name__)


def init_weights(module: LightningModule, path: str | Path) -> None:
    """Copy net and normalisation weights into ``module`` from a checkpoint of the same net and
    classes (``model.init_from``); its running states are left as they start."""
    state = read_checkpoint(path, "model.init_from", require=("state_dict",))["state_dict"]
    running = module.running_state()
    ours = {k: v for k, v in module.state_dict().items() if k not in running}
    mismatched = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    missing = [k for k in ours if k not in state]
    if mismatched or missing:
        raise ValueError(
            f"model.init_from: {path} does not fit this model: {len(missing)} missing and "
            f"{len(mismatched)} differently shaped tensors (first: "
            f"{(missing + mismatched)[0]}); was it trained with another net or number of "
            "classes?"
        )
    module.load_state_dict({**running, **{k: state[k] for k in ours}})
    log.info("weights initialised from %s (training starts at epoch 0)", path)


def load_module(
    cls: type[Module], path: str | Path, map_location: str | torch.device = "cpu"
) -> Module:
    """Rebuild a trained ``cls`` from its checkpoint alone, without downloading anything.

    Its net, loss, optimiser and scheduler configs are rebuilt only from allow-listed targets
    (:func:`~segment.config.trust.check_trusted_targets`), every pretrained switch at any depth is
    off (:func:`~segment.config.trust.without_pretrained`), and its encoder weights come from its
    own state dict (``load_from_checkpoint`` would fetch pretrained weights the checkpoint already
    holds).
    """
    checkpoint = read_checkpoint(path, "ckpt_path", require=("hyper_parameters", "state_dict"))
    hparams = dict(checkpoint["hyper_parameters"])
    # the checkpoint's own weights replace any pretrained ones: build nothing else, and fetch
    # nothing, whatever sits where (a net in a ModuleDict, in the loss, a key left to smp's default)
    for key in ("net", "loss", "optimizer", "scheduler"):
        check_trusted_targets(hparams.get(key), f"{path}: hyper_parameters.{key}")
        if key in hparams:
            hparams[key] = without_pretrained(hparams[key])
    hparams |= {"init_from": None, "compile": False}
    scheduler = hparams.get("scheduler")
    if scheduler and "scheduler" not in scheduler:  # written before schedulers were Lightning dicts
        hparams["scheduler"] = {"scheduler": scheduler, "interval": "epoch"}
    known = inspect.signature(cls.__init__).parameters
    module = cls(**{key: value for key, value in hparams.items() if key in known})
    module.load_state_dict({**module.running_state(), **checkpoint["state_dict"]})
    # what the run started from (older checkpoints kept it among the hyperparameters)
    used = checkpoint.get("encoder_weights_used") or hparams.get("encoder_weights_used")
    module.weights_record = WeightsRecord(**used) if used else module.weights_record
    return module.to(map_location)
