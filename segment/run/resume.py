"""Continuing a run from a checkpoint: what every checkpoint carries for it (the run's resolved
config, data fingerprint and log position: :class:`RunInCheckpoint`), and the checks before a
continuation (:func:`resume_point`: its bytes, its config against the one asked for)."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf

from segment.checkpoints import read_checkpoint, run_of, verify_checksum
from segment.config.names import RESUMABLE, is_infrastructure, nodes, place_keys
from segment.run.decision import RunFolderError
from segment.run.loggers import log_position

__all__ = [
    "RunInCheckpoint",
    "check_longer",
    "continue_command",
    "follows_length",
    "resume_differences",
    "resume_point",
]

log = logging.getLogger(__name__)


# Keys that give a schedule's length; null: the run's own length (it follows trainer.max_epochs).
_LENGTH_KEYS = ("T_max", "total_steps", "total_iters")


class RunInCheckpoint(Callback):
    """Store the run's resolved config, data fingerprint and log position in every checkpoint
    (``config``, ``data``, ``log_position``): a resume compares the first two with its own and
    continues the logs from the third; ``evaluate.py`` takes the data config from it."""

    def __init__(self, config: dict[str, Any], data: dict[str, Any] | None = None) -> None:
        self.config, self.data = config, data

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["config"], checkpoint["data"] = self.config, self.data
        checkpoint["log_position"] = log_position(trainer.loggers)


def resume_point(
    path: Path, cfg: DictConfig, completed: bool = False
) -> tuple[dict[str, int], dict[str, Any] | None]:
    """A checkpoint's log position and data fingerprint, once its bytes are those its run recorded,
    its config agrees with ``cfg`` and, for a ``completed`` run, ``cfg`` trains it on
    (:func:`check_longer`)."""
    verify_checksum(path)
    checkpoint = read_checkpoint(path, "ckpt_path", mmap=True)
    saved, step = checkpoint.get("config"), int(checkpoint["global_step"])
    log.info("continuing from %s: epoch %s, global step %s", path, checkpoint.get("epoch"), step)
    if saved is None:
        log.warning("%s holds no config: resuming unchecked", path)
    elif differences := resume_differences(saved, cfg):
        shown = "\n  ".join(differences[:12]) + ("\n  ..." if len(differences) > 12 else "")
        raise RunFolderError(
            f"cannot resume from {path} under a different config; it differs in:\n  {shown}\nA "
            "resume continues the same run under its config (only where files are, how training "
            "is shown and, under a schedule that does not follow it, how long it goes on may "
            "change): leave out what changes these keys. To train on from these weights with "
            "other settings, start a new run with model.init_from=<checkpoint>"
            + _continue_there(path)
        )
    if completed:  # asked to train on: refused if it would not
        check_longer(path, checkpoint, cfg)
    if "log_position" not in checkpoint:  # written before positions were: by step alone
        return {"step": step, "global_step": step + 1}, checkpoint.get("data")
    # global_step: rows logged after the checkpoint for steps before it (the epoch's metrics) are
    # kept, unless Lightning logs them again; then -1: none are
    again = _progress(checkpoint)[2]
    position = {**checkpoint["log_position"], "global_step": -1 if again else step}
    return position, checkpoint.get("data")


def resume_differences(saved: dict[str, Any], cfg: DictConfig) -> list[str]:
    """Why a checkpoint written under ``saved`` (a resolved config) cannot continue under
    ``cfg``: the keys that differ (where files are, how a run is shown or continued left out), and a
    longer run under a schedule that follows the run's length."""
    now = OmegaConf.to_container(cfg, resolve=True)
    where = place_keys(OmegaConf.to_container(cfg))

    def flat(config: Any) -> dict[str, str]:
        leaves = nodes(config, lists=False)
        return {
            place: repr(value) for place, value in leaves if not (isinstance(value, dict) and value)
        }

    old, new = flat(saved), flat(now)
    keys = sorted(
        k
        for k in old.keys() | new.keys()
        if old.get(k) != new.get(k) and not is_infrastructure(k, (*RESUMABLE, *where))
    )
    found = [f"{k}: {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in keys]
    length = [k for k in ("trainer.max_epochs", "trainer.max_steps") if old.get(k) != new.get(k)]
    if length and (follows_length(saved) or any(k.endswith(_LENGTH_KEYS) for k in keys)):
        found += [
            f"{k}: {old[k]} -> {new[k]} (the schedule follows the run's length: cosine, "
            "warmup_poly and warmup_cosine cannot train longer; constant, warmup_constant and "
            "plateau can)"
            for k in length
        ]
    return found


def follows_length(config: Any) -> bool:
    """Whether a config's schedule lasts the run's own length, which changes with
    ``trainer.max_epochs``: a length of ``null`` (``warmup_poly``, ``warmup_cosine``) or one that
    interpolates ``trainer`` (cosine's ``T_max``). Read from the values, not resolved."""
    scheduler = OmegaConf.select(
        OmegaConf.create(config), "model.scheduler.scheduler", default=None
    )
    raw = OmegaConf.to_container(scheduler) if isinstance(scheduler, DictConfig) else {}
    lengths = [raw[key] for key in _LENGTH_KEYS if key in raw]
    return any(value is None or "${trainer." in str(value) for value in lengths)


def _progress(checkpoint: dict[str, Any]) -> tuple[int | None, int, bool]:
    """A checkpoint's epochs and steps done, and whether Lightning runs the end of its epoch again
    on resume (logging the epoch's metrics, ``train/loss``, again).

    A checkpoint written by a validation after an epoch's last batch (several validations an epoch)
    precedes the epoch's end, which a resume runs again; one written at the epoch's end (one
    validation an epoch) or by a batch (``every_n_train_steps``) does not.
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = (fit.get("epoch_progress") or {}).get("current") or {}
    batches = fit.get("epoch_loop.batch_progress") or {}
    last, batch = bool(batches.get("is_last_batch")), batches.get("current") or {}
    # after the last batch of an epoch, that epoch's training is done
    done = epochs.get("started" if last else "completed")
    again = (
        last
        and epochs.get("processed", 0) < epochs.get("started", 0)
        and batch.get("completed") == batch.get("processed")
    )
    return done, int(checkpoint["global_step"]), again


def continue_command(folder: str | Path, *more: str) -> str:
    """The command that continues the run in ``folder`` from its newest checkpoint, as it pastes
    into a shell from any folder (``more``: overrides added, ``trainer.max_epochs=...``)."""
    return shlex.join(["segment-train", f"hydra.run.dir={folder}", "ckpt_path=last", *more])


def _continue_there(checkpoint: Path) -> str:
    """For a checkpoint of a run folder: the command that continues that run in its own folder."""
    if (owner := run_of(checkpoint)) is None:
        return ""
    return f". To continue the run it belongs to, in its own folder: {continue_command(owner)}"


def check_longer(path: Path, checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """Refuse a continuation that would train nothing: the checkpoint already holds the epochs
    (or steps) asked for, as when an old "train longer" line is pasted again."""
    epochs, steps, _ = _progress(checkpoint)
    for key, done in (("max_epochs", epochs), ("max_steps", steps)):
        limit = cfg.trainer.get(key)
        if isinstance(done, int) and isinstance(limit, int) and 0 < limit <= done:
            unit = key.removeprefix("max_")
            raise RunFolderError(
                f"{path} is already at {done} {unit}: trainer.{key}={limit} trains nothing more; "
                f"give trainer.{key}={2 * done} (or any number above {done})"
            )
