"""A run folder belongs to one run: claimed once per attempt, locked while it trains, never silently reused.

:meth:`RunFolder.claim` is the one call the training driver makes about its folder. It
locks the folder, decides what this attempt does (train afresh, continue the run from its
newest checkpoint, skip a completed run, or archive the earlier run first), checks that a
continued or skipped run is the same run (config, data), and keeps the folder's record
(``run.json``): the run's status and, for every attempt, when, how and with what outcome.

Hydra is told not to write ``.hydra/`` itself (``hydra.output_subdir: null``): the claim
writes it once an attempt owns the folder, so a refused attempt never touches the run it
refused. ``.hydra/config.yaml`` is the resolved config the run trains with.
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
from segment.files import write_atomic
from segment.precision import resolve_trainer_precision
from segment.schema import validate

__all__ = ["RUN_FILE", "RunFolder", "RunFolderError", "config_differences", "read_record"]

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
# What a run leaves in its folder besides train.log (moved to archive/ by overwrite=true).
_RUN_ENTRIES = (RUN_FILE, ".hydra", "thresholds.json", "checkpoints", "csv", "tensorboard", "masks")
_PACKAGES = ("torch", "lightning", "segmentation-models-pytorch", "albumentations", "hydra-core", "torchmetrics",
             "numpy", "road-segment-unet")  # fmt: skip
# How an attempt treats the folder, not the run: never carried over from the run's saved overrides.
_ATTEMPT_KEYS = ("ckpt_path", "skip_completed", "overwrite")
# Schedules that follow trainer.max_epochs: a resume may not change the length under them.
_LENGTH_KEYS = ("model.scheduler.scheduler.T_max", "model.scheduler.scheduler.total_steps",
                "model.scheduler.scheduler.total_iters")  # fmt: skip


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """A folder's ``run.json``, None without one; an unreadable one is named with the fix."""
    path = Path(folder) / RUN_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} is unreadable ({error}); move it aside to let this run start afresh") from None
    if not isinstance(record, dict):
        raise RunFolderError(f"{path} holds a {type(record).__name__}, not a run record; move it aside")
    return record


def config_differences(saved: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ``ignore`` and its children left out."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict) and node:
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}

    old, now = flat(saved), flat(new)
    absent = "<absent>"
    return [f"{key}: {old.get(key, absent)!r} -> {now.get(key, absent)!r}" for key in sorted(old.keys() | now.keys())
            if not is_infrastructure(key, ignore)
            and json.dumps(old.get(key, absent), default=str) != json.dumps(now.get(key, absent), default=str)]


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        folder = Path(__file__).resolve().parent
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}  # an installed wheel, or no git


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class RunFolder:
    """One attempt at the run in ``cfg.paths.output_dir`` (only global rank 0 locks or writes).

    After :meth:`claim`: ``cfg`` (the config this attempt trains with), ``checkpoint`` and
    ``step`` (what it continues from; None: from scratch), ``skip`` (a completed run: nothing
    to do), ``record`` (``run.json``).
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.path = Path(cfg.paths.output_dir)
        dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
        self.checkpoints = Path(dirpath) if dirpath else self.path / "checkpoints"
        self.enabled = rank_zero_only.rank == 0
        self.checkpoint: Path | None = None
        self.step: int | None = None
        self.skip = False
        self.refused = False  # an attempt turned away before it trained: the run's status stays as it was
        self.signal: int | None = None
        self._checkpoint_data: dict | None = None
        self._before: dict[str, Any] = {}
        self.record: dict[str, Any] = {}
        self.attempt: dict[str, Any] = {"started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                                        "command": sys.argv, "git": _git()}  # fmt: skip

    # --- the claim -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def claim(self) -> Iterator[RunFolder]:
        """Lock the folder, decide and check this attempt, and record how it ends.

        Raises:
            RunFolderError: the folder is in use, holds another run, or the run it holds cannot
                continue as asked; the run's files and status are left as they were.
            SystemExit: a SIGTERM or SIGINT, once recorded as ``interrupted`` (exit status 128 + signal).
        """
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
        previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        try:
            self._claim_locked()
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, self._interrupt)
            try:
                yield self
            except BaseException as error:
                self._end(error)
                if self.signal is not None:
                    raise SystemExit(128 + self.signal) from None
                raise
        finally:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
            lock.release()

    def _claim_locked(self) -> None:
        previous = read_record(self.path)
        try:
            self._decide(previous, holds_run=previous is not None or self._holds_results())
        except BaseException as error:
            fresh = previous is None and not self._holds_results()
            failed = {"status": "failed", "seed": self.cfg.get("seed"), "error": f"{type(error).__name__}: {error}"}
            self.record = failed if fresh else previous or {}
            self.refused = True  # a fresh folder keeps the reason; a run's status stays as it was
            self._end(error)
            raise
        if self.skip:
            self.record = previous
            return
        if self.checkpoint is None and (previous is not None or self._holds_results()):
            self._archive((previous or {}).get("started"))
            previous = None
        remove_partial_files(self.checkpoints)
        self._write_hydra()
        self.record = previous if previous is not None else {"started": self.attempt["started"]}
        self._before = {key: self.record.get(key) for key in ("status", "error")}  # restored if refused later
        self.attempt.update(overrides=self._overrides(), resumed_from=self.checkpoint and str(self.checkpoint))
        self.update(status="running", seed=self.cfg.get("seed"), versions=_versions(), error=None)

    def _decide(self, previous: dict | None, holds_run: bool) -> RunFolder:
        """Fresh, resume, skip or archive; then this attempt's config, precision, validation and resume check."""
        requested, status = self.cfg.get("ckpt_path"), (previous or {}).get("status")
        incomplete = self.cfg.get("skip_completed") and status in ("running", "interrupted", "failed")
        if requested == "last" or incomplete:
            found = newest_checkpoint(self.checkpoints)
            if found is None and requested == "last":
                raise FileNotFoundError(
                    f"ckpt_path=last: no loadable checkpoint in {self.checkpoints}. To continue a killed run, start "
                    "in its folder: hydra.run.dir=<run folder> ckpt_path=last; or pass ckpt_path=<file or run folder>"
                )
            if found is not None:  # else a skip_completed job killed before its first checkpoint: archived, rerun
                self.checkpoint, self.step = found
                self.cfg = self._own_config()
        elif requested is not None:
            self.checkpoint, self.step = find_checkpoint(requested)
            if holds_run and self.path.resolve() not in self.checkpoint.resolve().parents and not self.cfg.overwrite:
                why = f"ckpt_path={requested} is another run's checkpoint, and "
                raise RunFolderError(self._occupied(previous, why))
        elif self.cfg.get("skip_completed") and status == "completed":
            self.skip = True
            self._check_same_run(previous)
            return self
        elif holds_run and not self.cfg.get("overwrite") and not self.cfg.get("skip_completed") and not (
                status == "failed" and not self._holds_results()):  # fmt: skip
            raise RunFolderError(self._occupied(previous))
        self.attempt["precision"] = resolve_trainer_precision(self.cfg)
        validate(self.cfg)
        if self.checkpoint is not None:
            self._check_resume()
            saved = read_checkpoint(self.checkpoint, mmap=True)
            epoch, self._checkpoint_data = saved.get("epoch"), saved.get("data")
            log.info("continuing from %s: epoch %s, global step %d", self.checkpoint, epoch, self.step)
        return self

    # --- the checks -----------------------------------------------------------------------------------

    def _own_config(self) -> DictConfig:
        """The run's own config: its saved overrides, then those typed now (checked against the checkpoint later)."""
        saved = self.path / ".hydra" / "overrides.yaml"
        if not HydraConfig.initialized() or not saved.is_file():
            return self.cfg
        typed = list(HydraConfig.get().overrides.task)
        given = set(parse_overrides(typed))
        kept = [str(item) for item in OmegaConf.load(saved) if not given & set(parse_overrides([str(item)]))
                and not is_infrastructure(next(iter(parse_overrides([str(item)]))), _ATTEMPT_KEYS)]  # fmt: skip
        return compose(HydraConfig.get().job.config_name, overrides=[*kept, *typed])

    def _check_resume(self) -> None:
        saved = read_checkpoint(self.checkpoint, "ckpt_path", mmap=True).get("config")
        if saved is None:
            log.warning("%s holds no config (written before configs were saved): resuming unchecked", self.checkpoint)
            return
        now = OmegaConf.to_container(self.cfg, resolve=True)
        differences = config_differences(saved, now, (*RESUMABLE, *_path_keys(OmegaConf.to_container(self.cfg))))
        if not differences:
            return
        shown = "\n  ".join(differences[:12]) + (f"\n  ... and {len(differences) - 12} more" if len(differences) > 12
                                                 else "")  # fmt: skip
        longer = saved.get("trainer", {}).get("max_epochs") != now["trainer"].get("max_epochs")
        length = longer and any(line.startswith(_LENGTH_KEYS) for line in differences)
        raise RunFolderError(
            f"cannot resume from {self.checkpoint} under a different config; it differs in:\n  {shown}\n"
            + ("The schedule follows trainer.max_epochs (cosine, warmup_poly, warmup_cosine), so this run cannot train "
               "longer; constant, warmup_constant and plateau do not. " if length else "")
            + "A resume continues the same run: drop these overrides (only where files are, how training is shown "
            "and how long it goes on may change). To train on from these weights with other settings, start a new "
            "run with model.init_from=<checkpoint>"
        )

    def _check_same_run(self, previous: dict) -> None:
        """A skip: the completed run must be this job (same overrides) on the same data (fingerprint)."""
        attempts = previous.get("attempts") or []
        if HydraConfig.initialized() and attempts and "overrides" in attempts[0]:
            theirs, ours = identity(attempts[0]["overrides"]), identity(HydraConfig.get().overrides.task)
            if theirs != ours:
                raise RunFolderError(
                    f"skip_completed: {self.path} holds a completed run of other overrides ({theirs}, not {ours}): "
                    "two jobs share a folder name. Give this sweep its own folder (hydra.sweep.dir=<new folder>)"
                )

    def check_data(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to continue or skip a run on other data than it trained on; record the data otherwise."""
        recorded = self._checkpoint_data if self.checkpoint is not None else self.record.get("data")
        if recorded and (self.skip or self.checkpoint is not None) and recorded != fingerprint:
            what = "skip it as completed" if self.skip else "continue it"
            self.refused = True
            raise RunFolderError(
                f"{self.path} trained on other data than data.root now holds ({recorded} vs {fingerprint}); "
                f"refusing to {what}. Point data.root at the data it trained on, or start a new run (another "
                "folder, or overwrite=true)"
            )
        if not self.skip:
            self.update(data=fingerprint)

    # --- the record -----------------------------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into ``run.json`` (rewritten atomically) with this attempt as its latest."""
        self.record.update(fields)
        if not self.enabled:
            return
        attempts = self.record.setdefault("attempts", [])
        if not attempts or attempts[-1] is not self.attempt:
            attempts.append(self.attempt)
        write_atomic(self.path / RUN_FILE, json.dumps(self.record, indent=2, default=str) + "\n")

    def finish(self, metrics: dict[str, float], trainer: Any) -> None:
        """Record a completed run and its final metrics; print where its results are and commands to paste."""
        self.attempt.update(ended=_now(), outcome="completed")
        self.update(status="completed", ended=self.attempt["ended"], metrics=metrics)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        scores = [f"  {name:14s} {metrics[name]:.4f}" for name in ("val/loss", "val/miou", "val/pixel_acc", "test/loss",
                                                                  "test/miou", "test/pixel_acc") if name in metrics]
        log.info("\n".join([
            f"Run folder: {self.path} ({trainer.current_epoch} epochs; encoder weights: "
            f"{trainer.lightning_module.weights_record})", *scores,
            f"  best checkpoint: {best or 'none kept'}",
            f"  dashboards:      tensorboard --logdir {self.path}",
            f"  evaluate:        python evaluate.py ckpt_path={best or self.path}",
            f"  train longer:    python train.py hydra.run.dir={self.path} ckpt_path=last trainer.max_epochs=<more>",
        ]))  # fmt: skip

    def _end(self, error: BaseException) -> None:
        """Record how an attempt ended early; a refused one leaves the run's status as it was."""
        name = signal.Signals(self.signal).name if self.signal is not None else None
        message = f"interrupted by {name}" if name else f"{type(error).__name__}: {error}".strip()
        self.attempt.update(ended=_now(), outcome="interrupted" if name else "refused" if self.refused else "failed",
                            error=message, signal=name)  # fmt: skip
        if not self.refused:
            self.record.update(status="interrupted" if name else "failed", error=message)
        elif self._before.get("status"):
            self.record.update(self._before)
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

    # --- the folder -----------------------------------------------------------------------------------

    def _holds_results(self) -> bool:
        return any((self.path / name).is_dir() and any((self.path / name).iterdir())
                   for name in ("checkpoints", "csv", "tensorboard", "masks"))  # fmt: skip

    def _overrides(self) -> list[str]:
        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []

    def _write_hydra(self) -> None:
        """``.hydra/`` as Hydra writes it, with the resolved config: written only once this attempt owns the folder."""
        folder = self.path / ".hydra"
        folder.mkdir(exist_ok=True)
        write_atomic(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.to_container(self.cfg, resolve=True)))
        write_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(self._overrides()))
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
        log_file = self.path / "train.log"
        if log_file.is_file():  # Hydra's handler is appending to it: copy, then truncate in place
            shutil.copy2(log_file, target / "train.log")
            with log_file.open("r+") as handle:
                handle.truncate(0)
        why = "overwrite=true" if self.cfg.get("overwrite") else "the earlier run left no checkpoint to continue"
        log.warning("%s: archived the earlier run of %s in %s", why, self.path, target)

    def _occupied(self, previous: dict | None, why: str = "") -> str:
        metrics = (previous or {}).get("metrics") or {}
        loss = f", val/loss {metrics['val/loss']:.4f}" if isinstance(metrics.get("val/loss"), int | float) else ""
        held = (f"a {previous.get('status', '?')} run started {previous.get('started', '?')} "
                f"(seed {previous.get('seed')}{loss})" if previous else "results of an earlier run (no run.json)")
        return (
            f"{why}run folder {self.path} already holds {held}; it is never silently reused. To continue that run: "
            "ckpt_path=last; to keep it and start another: choose a new folder (hydra.run.dir=<folder>); to replace "
            f"it: overwrite=true (its files move to {self.path / 'archive'}/<start time>/)"
        )


def _path_keys(node: Any, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys whose value interpolates ``paths.*`` or Hydra's runtime: where files go, not what runs."""
    if isinstance(node, dict):
        return tuple(k for key, value in node.items() for k in _path_keys(value, f"{prefix}{key}."))
    text = str(node)
    return (prefix.rstrip("."),) if "${" in text and ("paths." in text or "hydra:" in text) else ()
