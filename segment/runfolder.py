"""A run folder belongs to one run: claimed once per attempt, locked while it trains, never silently reused.

:meth:`RunFolder.claim`, the driver's one call about its folder, locks it, decides what this attempt does
(train afresh, continue from the newest checkpoint, skip a completed run, archive the earlier one), checks
that a continued or skipped run is the same run (config, data) and keeps ``run.json`` (status, every attempt).
A refused attempt leaves the run as it was. Hydra does not write ``.hydra/`` (``output_subdir: null``): the
claim does, once the attempt owns the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from segment.checkpoints import find_checkpoint, newest_checkpoint, read_checkpoint, remove_partial_files
from segment.config import RESUMABLE, identity, is_infrastructure, parse_overrides, sweep_jobs
from segment.device.precision import resolve_trainer_precision
from segment.files import write_atomic
from segment.schema import validate

__all__ = ["RunFolder", "RunFolderError", "config_differences", "read_record"]

log = logging.getLogger(__name__)

# What a run leaves in its folder besides train.log (moved to archive/ by overwrite=true).
_RUN_ENTRIES = ("run.json", ".hydra", "thresholds.json", "checkpoints", "csv", "tensorboard", "masks")
_PACKAGES = ("torch", "lightning", "segmentation-models-pytorch", "albumentations", "hydra-core", "torchmetrics",
             "numpy", "road-segment-unet")  # fmt: skip
_ATTEMPT_KEYS = ("ckpt_path", "skip_completed", "overwrite")  # how one attempt treats the folder, not the run
# The schedules' keys that follow trainer.max_epochs (cosine, warmup_poly, warmup_cosine).
_LENGTH_KEYS = tuple(f"model.scheduler.scheduler.{k}" for k in ("T_max", "total_steps", "total_iters"))


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """A folder's ``run.json``, None without one; an unreadable one is named with the fix."""
    path = Path(folder) / "run.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} is unreadable ({error}); move it aside (its run is then continued from "
                             "its newest checkpoint, or started afresh without one)") from None  # fmt: skip
    if not isinstance(record, dict):
        raise RunFolderError(f"{path} holds a {type(record).__name__}, not a run record; move it aside")
    return record


def config_differences(saved: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ``ignore`` and its children left out."""

    def flat(node: Any, prefix: str = "") -> dict[str, str]:
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): repr(node)}

    old, now = flat(saved), flat(new)
    keys = sorted(key for key in old.keys() | now.keys() if old.get(key) != now.get(key))
    return [f"{key}: {old.get(key, '<absent>')} -> {now.get(key, '<absent>')}" for key in keys
            if not is_infrastructure(key, ignore)]  # fmt: skip


def _path_keys(node: Any, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys whose value interpolates ``paths.*`` or Hydra's runtime: where files go, not what runs."""
    if isinstance(node, dict):
        return tuple(k for key, value in node.items() for k in _path_keys(value, f"{prefix}{key}."))
    return (prefix.rstrip("."),) if "${" in str(node) and ("paths." in str(node) or "hydra:" in str(node)) else ()


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        folder = Path(__file__).resolve().parent
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}  # an installed wheel, or no git


def _version(package: str) -> str | None:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(package)
    return None


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class RunFolder:
    """One attempt at the run in ``cfg.paths.output_dir`` (only global rank 0 locks or writes). After :meth:`claim`:
    ``cfg`` (what it trains with), ``checkpoint``/``step`` (continued from; None: scratch), ``skip``, ``record``."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.path = cfg, Path(cfg.paths.output_dir)
        dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
        self.checkpoints = Path(dirpath) if dirpath else self.path / "checkpoints"
        self.enabled = rank_zero_only.rank == 0
        self.checkpoint, self.step = None, None  # what this attempt continues from
        self.skip = self.refused = False  # refused: turned away before training; the run's status stays
        self.signal: int | None = None  # the SIGTERM or SIGINT that stopped this attempt
        self.overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        self.record: dict[str, Any] = {}
        # the run's status and error (put back if this attempt is refused); the checkpoint's data fingerprint
        self._before, self._data = {}, None
        self.attempt: dict[str, Any] = {"started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                                        "command": sys.argv, "git": _git(), "overrides": self.overrides}  # fmt: skip

    @contextlib.contextmanager
    def claim(self) -> Iterator[RunFolder]:
        """Lock the folder, decide and check this attempt, and record how it ends. Raises :class:`RunFolderError`
        (in use, another run, cannot continue as asked), or ``SystemExit(128 + signal)`` on SIGTERM/SIGINT."""
        if not self.enabled:  # DDP ranks > 0 (srun starts one train.py per GPU) follow rank 0
            yield self._decide(read_record(self.path), holds_run=False)
            return
        lock = FileLock(self.path / ".lock", timeout=0)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:  # a TimeoutError, so an OSError: first
            holder = ((read_record(self.path) or {}).get("attempts") or [{}])[-1]
            raise RunFolderError(
                f"run folder {self.path} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                f"{holder.get('started', '?')}: two runs in one folder would mix their logs. Wait for it to finish, "
                "or choose another folder (hydra.run.dir=<new folder>)"
            ) from None
        except OSError as error:
            raise OSError(f"cannot write to the run folder {self.path}: {error}. Point paths.log_dir (or hydra.run.dir "
                          "/ hydra.sweep.dir) at a writable folder") from None  # fmt: skip
        handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._claim_locked()
            for number in handlers:
                signal.signal(number, self._interrupt)
            try:
                yield self
            except BaseException as error:
                self._end(error)
                if self.signal is not None:
                    raise SystemExit(128 + self.signal) from None
                raise
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
            lock.release()

    def _claim_locked(self) -> None:
        previous = read_record(self.path)
        holds_run = previous is not None or self._holds_results()
        try:
            self._decide(previous, holds_run)
        except BaseException as error:  # a fresh folder keeps the reason; a run's status stays as it was
            self.record = previous or {"status": "failed", "seed": self.cfg.get("seed"),
                                       "error": f"{type(error).__name__}: {error}"}  # fmt: skip
            self.refused = True
            self._end(error)
            raise
        if self.skip:
            self.record = previous
            return
        if self.checkpoint is None and holds_run:
            self._archive((previous or {}).get("started"))
            previous = None
        remove_partial_files(self.checkpoints)
        self._write_hydra()
        self.record = previous or {"started": self.attempt["started"]}
        self._before = {key: self.record.get(key) for key in ("status", "error")}
        self.attempt["resumed_from"] = self.checkpoint and str(self.checkpoint)
        versions = {"python": platform.python_version(), **{name: _version(name) for name in _PACKAGES}}
        self.update(status="running", seed=self.cfg.get("seed"), versions=versions, error=None)

    def _decide(self, previous: dict | None, holds_run: bool) -> RunFolder:
        """Fresh, continue, skip or archive; then this attempt's config, precision, validation and resume check."""
        requested, status = self.cfg.get("ckpt_path"), (previous or {}).get("status")
        if requested == "last" or (self.cfg.get("skip_completed") and status in ("running", "interrupted", "failed")):
            found = newest_checkpoint(self.checkpoints)
            if found is None and requested == "last":
                raise FileNotFoundError(
                    f"ckpt_path=last: no loadable checkpoint in {self.checkpoints}. To continue a killed run, start "
                    "in its folder: hydra.run.dir=<run folder> ckpt_path=last; or pass ckpt_path=<file or run folder>"
                )
            if found is not None:  # else a skip_completed job killed before its first checkpoint: archived, rerun
                (self.checkpoint, self.step), self.cfg = found, self._own_config()
        elif requested is not None:
            self.checkpoint, self.step = find_checkpoint(requested)
            if holds_run and self.path.resolve() not in self.checkpoint.resolve().parents and not self.cfg.overwrite:
                raise RunFolderError(self._occupied(previous, f"ckpt_path={requested} is another run's checkpoint, "))
        elif self.cfg.get("skip_completed") and status == "completed":
            self.skip = True
            theirs = identity(((previous.get("attempts") or [{}])[0]).get("overrides") or self.overrides)
            if theirs != identity(self.overrides):
                raise RunFolderError(f"skip_completed: {self.path} holds a completed run of other overrides ({theirs}):"
                                     " two jobs share a folder name; give this sweep a folder of its own")  # fmt: skip
            return self
        elif holds_run and not (self.cfg.get("overwrite") or self.cfg.get("skip_completed")):
            if not (status == "failed" and not self._holds_results()):  # a failure that left nothing: replaced
                raise RunFolderError(self._occupied(previous))
        self.attempt["precision"] = resolve_trainer_precision(self.cfg)
        validate(self.cfg)
        if self.checkpoint is not None:
            self._check_resume()
        return self

    def _own_config(self) -> DictConfig:
        """The run's own config: its saved overrides, then those typed now (checked against the checkpoint)."""
        saved = self.path / ".hydra" / "overrides.yaml"
        if not HydraConfig.initialized() or not saved.is_file():
            return self.cfg
        typed = set(parse_overrides(self.overrides))
        kept = [str(o) for o in OmegaConf.load(saved) if not (set(parse_overrides([str(o)])) & typed)
                and not is_infrastructure(next(iter(parse_overrides([str(o)]))), _ATTEMPT_KEYS)]  # fmt: skip
        self.overrides = [*kept, *self.overrides]
        return compose(HydraConfig.get().job.config_name, overrides=self.overrides)

    def _check_resume(self) -> None:
        checkpoint = read_checkpoint(self.checkpoint, "ckpt_path", mmap=True)
        self._data, saved = checkpoint.get("data"), checkpoint.get("config")
        log.info("continuing from %s: epoch %s, global step %d", self.checkpoint, checkpoint.get("epoch"), self.step)
        if saved is None:
            log.warning("%s holds no config (written before configs were saved): resuming unchecked", self.checkpoint)
            return
        now = OmegaConf.to_container(self.cfg, resolve=True)
        differences = config_differences(saved, now, (*RESUMABLE, *_path_keys(OmegaConf.to_container(self.cfg))))
        if not differences:
            return
        longer = saved.get("trainer", {}).get("max_epochs") != now["trainer"].get("max_epochs")
        raise RunFolderError(
            f"cannot resume from {self.checkpoint} under a different config; it differs in:\n  "
            + "\n  ".join(differences[:12]) + (f"\n  ... and {len(differences) - 12} more" if len(differences) > 12
                                               else "") + "\n"  # fmt: skip
            + ("The schedule follows trainer.max_epochs (cosine, warmup_poly, warmup_cosine), so this run cannot train "
               "longer; constant, warmup_constant and plateau do not. "
               if longer and any(line.startswith(_LENGTH_KEYS) for line in differences) else "")
            + "A resume continues the same run: drop these overrides (only where files are, how training is shown "
            "and how long it goes on may change). To train on from these weights with other settings, start a new "
            "run with model.init_from=<checkpoint>"
        )

    def check_data(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to continue or skip a run on other data than it trained on; record the data otherwise."""
        recorded = self._data if self.checkpoint is not None else self.record.get("data") if self.skip else None
        if recorded and recorded != fingerprint:
            self.refused = True
            raise RunFolderError(
                f"{self.path} trained on other data than data.root now holds ({recorded} vs {fingerprint}); refusing "
                f"to {'skip it as completed' if self.skip else 'continue it'}. Point data.root at the data it "
                "trained on, or start a new run (another folder, or overwrite=true)"
            )
        if not self.skip:
            self.update(data=fingerprint)

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into ``run.json`` (rewritten atomically) with this attempt as its latest."""
        self.record.update(fields)
        if self.enabled:
            attempts = self.record.setdefault("attempts", [])
            if not attempts or attempts[-1] is not self.attempt:
                attempts.append(self.attempt)
            write_atomic(self.path / "run.json", json.dumps(self.record, indent=2, default=str) + "\n")

    def finish(self, metrics: dict[str, float], trainer: Any) -> None:
        """Record a completed run and its final metrics; print where its results are, and commands to paste."""
        self.attempt.update(ended=_now(), outcome="completed")
        self.update(status="completed", ended=self.attempt["ended"], metrics=metrics)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        names = ("val/loss", "val/miou", "val/pixel_acc", "test/loss", "test/miou", "test/pixel_acc")
        log.info("\n".join([
            f"Run folder: {self.path} ({trainer.current_epoch} epochs; encoder weights: "
            f"{trainer.lightning_module.weights_record})",
            *(f"  {name:14s} {metrics[name]:.4f}" for name in names if name in metrics),
            f"  best checkpoint: {best or 'none kept'}",
            f"  dashboards:      tensorboard --logdir {self.path}",
            f"  evaluate:        python evaluate.py ckpt_path={best or self.path}",
            f"  train longer:    python train.py hydra.run.dir={self.path} ckpt_path=last trainer.max_epochs=<more>",
        ]))  # fmt: skip

    def _end(self, error: BaseException) -> None:
        """Record how an attempt ended early; a refused one leaves the run's status as it was."""
        name = signal.Signals(self.signal).name if self.signal is not None else None
        message = f"interrupted by {name}" if name else f"{type(error).__name__}: {error}".strip()
        outcome = "interrupted" if name else "refused" if self.refused else "failed"
        self.attempt.update(ended=_now(), outcome=outcome, error=message, signal=name)
        self.record.update({"status": outcome, "error": message} if outcome != "refused" else self._before)
        with contextlib.suppress(OSError):
            self.update()
        if name and HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
            sweep = Path(HydraConfig.get().sweep.dir)
            pending = [job for job in sweep_jobs() if (read_record(sweep / job) or {}).get("status") != "completed"]
            log.error("%s: the sweep stops; %d job(s) not completed: %s. Continue it: the same command with "
                      "skip_completed=true", message, len(pending), ", ".join(pending))  # fmt: skip

    def _interrupt(self, number: int, frame: Any) -> None:
        """SIGTERM or SIGINT: stop where training is (Lightning shuts down cleanly on KeyboardInterrupt)."""
        if self.signal is None:
            self.signal = number
            log.warning("%s received: stopping; last.ckpt holds the last validation", signal.Signals(number).name)
            raise KeyboardInterrupt

    def _holds_results(self) -> bool:
        return any(any((self.path / name).glob("*")) for name in ("checkpoints", "csv", "tensorboard", "masks"))

    def _write_hydra(self) -> None:
        """``.hydra/`` as Hydra writes it (the config resolved), once this attempt owns the folder."""
        folder = self.path / ".hydra"
        folder.mkdir(exist_ok=True)
        write_atomic(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.to_container(self.cfg, resolve=True)))
        write_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(self.overrides))
        if HydraConfig.initialized() and self.checkpoint is None:
            write_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))

    def _archive(self, started: str | None) -> None:
        """Move the earlier run's files to ``archive/<its start time>/`` (``overwrite=true``, a failed run)."""
        stamp = (started or _now()).replace(":", "-")
        target, suffix = self.path / "archive" / stamp, 1
        while target.exists():
            target, suffix = self.path / "archive" / f"{stamp}-{suffix}", suffix + 1
        target.mkdir(parents=True)
        for name in _RUN_ENTRIES:
            if (self.path / name).exists():
                shutil.move(str(self.path / name), str(target / name))
        if (log_file := self.path / "train.log").is_file():  # Hydra's handler appends to it: copy, then truncate
            shutil.copy2(log_file, target / "train.log")
            os.truncate(log_file, 0)
        why = "overwrite=true" if self.cfg.get("overwrite") else "the earlier run left no checkpoint to continue"
        log.warning("%s: archived the earlier run of %s in %s", why, self.path, target)

    def _occupied(self, previous: dict | None, why: str = "") -> str:
        metrics = (previous or {}).get("metrics") or {}
        loss = f", val/loss {metrics['val/loss']:.4f}" if isinstance(metrics.get("val/loss"), int | float) else ""
        held = (f"a {previous.get('status', '?')} run started {previous.get('started', '?')} "
                f"(seed {previous.get('seed')}{loss})" if previous else "results of an earlier run (no run.json)")
        return (
            f"{why}{'and ' if why else ''}run folder {self.path} already holds {held}; it is never silently reused. "
            "To continue that run: ckpt_path=last; to keep it and start another: choose a new folder "
            f"(hydra.run.dir=<folder>); to replace it: overwrite=true (its files move to {self.path / 'archive'}/"
            "<start time>/)"
        )
