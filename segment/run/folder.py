"""A run folder belongs to one run: claimed per attempt, locked while it trains, never silently
reused.

What an attempt does with its folder is :func:`~segment.run.decision.decide`, a pure function of
the folder's record, what was asked and the checkpoint found (docs/reliability.md has its table).
:class:`RunFolder` carries it out: it locks the folder, records every attempt in the run record,
and changes the run (its status, ``.hydra/``, an archive of the earlier run) only when
:meth:`RunFolder.start` is called, right before training. An attempt refused, failing or stopped
before that is recorded and changes nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from lightning import Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from segment.checkpoints import (
    AtomicCheckpointIO,
    find_checkpoint,
    newest_checkpoint,
)
from segment.config.names import sweep_dir, sweep_jobs
from segment.config.trust import saved_config
from segment.files import sha256, write_atomic
from segment.run.decision import (
    REFUSALS,
    Asked,
    Decision,
    RunFolderError,
    busy_message,
    decide,
    refusal,
)
from segment.run.layout import ARCHIVE, RunLayout
from segment.run.loggers import log_position
from segment.run.record import (
    Attempt,
    RecordError,
    RunRecord,
    read_record,
    record_or_new,
    write_record,
)
from segment.run.resume import continue_command, resume_point

__all__ = ["RunFolder", "archive", "check_same_data", "remove_partial_files", "write_hydra"]

log = logging.getLogger(__name__)


# Signals that end a run: a preemption or kill (TERM), Ctrl-C (INT), a closed terminal (HUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _git() -> dict[str, Any]:
    folder = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}  # an installed wheel, or no git


class RunFolder:
    """One attempt at the run in ``cfg.paths.output_dir`` (only global rank 0 locks or writes).

    After :meth:`claim`: ``decision``, ``record`` (the folder's, as found), ``attempt``.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.path, self.layout = Path(cfg.paths.output_dir), RunLayout.from_config(cfg)
        self.enabled = rank_zero_only.rank == 0
        self.overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        asked = (cfg.get("ckpt_path"), bool(cfg.get("skip_completed")), bool(cfg.get("overwrite")))
        self.asked = Asked(*asked, tuple(self.overrides))
        self.attempt = Attempt(
            started=_now(),
            host=socket.gethostname(),
            pid=os.getpid(),
            command=list(sys.argv),
            git=_git(),
            overrides=list(self.overrides),
        )
        self.record, self.decision, self.seed = RunRecord(), Decision("refuse"), cfg.get("seed")
        self.started, self.signal = False, None
        self._data: dict[str, Any] | None = None  # the continued checkpoint's data fingerprint
        self._found = self.record  # the record as found, kept by an attempt that changes nothing
        self._loggers: Sequence[Logger] = ()
        self._results_at_start: tuple = ()  # where the run's results stood when training began

    @contextlib.contextmanager
    def claim(self) -> Iterator[RunFolder]:
        """Lock the folder, decide, and record how the attempt ends. Raises :class:`RunFolderError`,
        or ``SystemExit(128 + signal)`` on a stop signal."""
        if not self.enabled:  # DDP ranks > 0 follow rank 0
            self._decide()
            yield self
            return
        lock = _lock(self.path)
        handlers = {number: signal.signal(number, self._stop) for number in STOP_SIGNALS}
        try:
            self._decide()
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

    def _decide(self) -> None:
        # Until the record is read nothing is written: a damaged one is left byte for byte as it
        # is, this attempt unrecorded, whatever the reader raised.
        enabled, self.enabled = self.enabled, False
        try:
            known = read_record(self.path)
        except RecordError as error:
            raise RunFolderError(str(error)) from None
        if links := _links_out(self.path):  # refused for what the folder holds: left as it is
            raise RunFolderError(
                f"{links[0]} is a symbolic link out of the run folder (or to nothing): a run would "
                "write through it. Replace it by a copy of what it points to, or remove it"
            )
        self.enabled = enabled
        self.record = self._found = known or RunRecord()
        found, inside = _asked_checkpoint(self.asked, self.path, self.layout)
        holds = self.layout.holds_results(self.path)
        try:
            self.decision = decide(known, holds, self.asked, found, inside)
        except ValueError as error:  # the record's own overrides, compared by skip_completed
            raise RunFolderError(
                f"{self.path / self.layout.record}: {error}: skip_completed compares its first "
                "attempt's overrides with the job's; write that override as Hydra reads it"
            ) from None
        self.attempt.action = self.decision.action
        if self.decision.action == "refuse":
            raise RunFolderError(refusal(self.path, self.record, self.decision))
        if self.decision.reason:
            log.warning("%s: %s", self.path, self.decision.reason)

    def own_config(self, cfg: DictConfig) -> DictConfig:
        """A continued run's own config: its saved overrides, checked as data
        (:func:`~segment.config.trust.saved_config`), then those typed now; ``cfg`` itself for any
        other attempt. A saved file that is refused leaves the folder byte-identical (the attempt
        goes unrecorded)."""
        saved = self.path / self.layout.hydra / "overrides.yaml"
        if not (self.decision.own_config and HydraConfig.initialized() and saved.is_file()):
            return cfg
        name = HydraConfig.get().job.config_name
        try:
            self.overrides, own = saved_config(saved, self.overrides, name)
        except Exception:  # the folder's own file, unusable however: the folder stays as it was
            self.enabled = False
            raise
        return own

    def check_resume(self, cfg: DictConfig) -> dict[str, int] | None:
        """Refuse to continue from a checkpoint under another config; returns its log position (None
        when starting afresh)."""
        if self.decision.checkpoint is None:
            return None
        completed = self.record.status == "completed"
        position, self._data = resume_point(self.decision.checkpoint, cfg, completed)
        return position

    def check_data(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to continue or skip a run on other data than it trained on."""
        skip = self.decision.action == "skip"
        check_same_data(self.path, self.record.data if skip else self._data, fingerprint, skip)

    def start(self, config: DictConfig, trainer: Trainer, **fields: Any) -> None:
        """The attempt is accepted and trains: archive the earlier run if decided, write
        ``.hydra/``, mark the run ``running`` with ``fields`` (data, seed, versions ...).
        ``trainer``: its loggers' position tells whether a continuation changed the run; its
        checkpoint writer records each checkpoint's checksum here."""
        self.attempt.resumed_from = self.decision.checkpoint and str(self.decision.checkpoint)
        if self.enabled:
            if self.decision.archive:
                kept = [p for lg in trainer.loggers for p in _logger_results(lg, self.path)]
                archive(self.path, self.layout, self.record.started or _now(), kept)
                self.record = self._found = RunRecord()  # the earlier record went with its run
            remove_partial_files(self.path)
            write_hydra(self.path / self.layout.hydra, config, self.overrides)
        self.started, self._loggers = True, trainer.loggers
        if isinstance(io := trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            io.ledger = self._checkpoint_sums
        self._results_at_start = self._results()
        update = {
            "status": "running",
            "error": None,
            "ended": None,
            "layout": self.layout.as_dict(),
        }
        started = self.record.started or self.attempt.started
        self.record = self.record.model_copy(update={**update, "started": started, **fields})
        self._save()

    def _checkpoint_sums(self, path: Path, digest: str | None, renamed: bool) -> None:
        """Record a checkpoint file's SHA-256 (None: removed). Until the new file is renamed into
        place the old file's sum stays accepted too: a kill between leaves a file the record
        vouches for. Files outside the folder are not recorded."""
        path, folder = path.absolute(), self.path.absolute()  # as named: a folder may be a link
        if not path.is_relative_to(folder):
            return
        name = path.relative_to(folder).as_posix()
        sums = dict(self.record.checkpoints)
        old = sums.pop(name, None) or ([sha256(path)] if path.is_file() and not renamed else [])
        if digest is not None:
            sums[name] = [digest] if renamed else [*old[-1:], digest]
        self.record = self.record.model_copy(update={"checkpoints": sums})
        self._save()

    def finish(self, metrics: dict[str, float], stopped: str | None = None) -> None:
        """Record a completed run and its final metrics; ``stopped``: what ended it early
        (``max_time``): the run is ``stopped``, to be continued, not completed."""
        status = "stopped" if stopped else "completed"
        self.attempt.ended, self.attempt.outcome = _now(), status
        update = {"status": status, "ended": self.attempt.ended, "metrics": metrics}
        update |= {"error": f"stopped: {stopped}"} if stopped else {}
        self.record = self.record.model_copy(update=update)
        self._save()

    def skip(self) -> dict[str, float]:
        """Record the attempt as skipped (the run is completed, and stays as it is); its
        metrics."""
        self.attempt.ended, self.attempt.outcome = _now(), "skipped"
        self._save()
        return dict(self.record.metrics)

    def _results(self) -> tuple:
        """Where the run's results stand: its loggers' position and its checkpoint files."""
        folder = self.path / self.layout.checkpoints
        files = sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.ckpt"))
        return log_position(self._loggers), files

    def _changed(self) -> bool:
        """Whether the attempt changed the run: began one (afresh, or from another run's
        checkpoint), or continued it and logged a row or wrote a checkpoint since."""
        if not self.started:
            return False
        began = self.decision.checkpoint is None or self._found.status == "new"
        return began or self._results() != self._results_at_start

    def _save(self) -> None:
        if not self.enabled:
            return
        if not self.record.attempts or self.record.attempts[-1] is not self.attempt:
            self.record.attempts.append(self.attempt)
        write_record(self.path, self.record)

    def _end(self, error: BaseException) -> None:
        """Record an attempt that ended early. The run's status says what the folder holds: it
        changes only if the attempt changed the run (:meth:`_changed`), or the folder holds
        nothing else."""
        name = signal.Signals(self.signal).name if self.signal is not None else None
        message = f"interrupted by {name}" if name else f"{type(error).__name__}: {error}".strip()
        refused = isinstance(error, REFUSALS) and not self.started
        outcome = "interrupted" if name else "refused" if refused else "failed"
        self.attempt.ended, self.attempt.outcome = _now(), outcome
        self.attempt.error, self.attempt.signal = message, name
        changed = self._changed()
        if self.started and not changed:  # a continuation that failed before it changed the run
            self.record = self._found
        nothing = self.record.status in ("new", "failed") and not self.layout.holds_results(
            self.path
        )
        if changed or nothing:
            update = {"status": outcome if changed else "failed", "error": message}
            self.record = self.record.model_copy(update={**update, "seed": self.seed})
        with contextlib.suppress(OSError):
            self._save()
        if name and sweep_dir() is not None:
            _sweep_stopped(message)
        elif name:
            log.error("%s. Continue it: %s", message, continue_command(self.path.resolve()))

    def _stop(self, number: int, frame: Any) -> None:
        """A stop signal: end training where it is (Lightning shuts down on KeyboardInterrupt)."""
        if self.signal is None:
            self.signal = number
            log.warning(
                "%s received: stopping; the last checkpoint holds the last validation",
                signal.Signals(number).name,
            )
            raise KeyboardInterrupt


def _lock(path: Path) -> FileLock:
    """The run folder's lock, taken (a second run in the folder is refused, naming the holder)."""
    lock = FileLock(path / ".lock", timeout=0)
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # a TimeoutError, so an OSError: first
        raise RunFolderError(busy_message(path)) from None
    except OSError as error:  # read-only, not ours, a full disk: refused, named
        raise RunFolderError(
            f"cannot write to the run folder {path}: {error.strerror or error}. Point "
            "paths.log_dir (or hydra.run.dir / hydra.sweep.dir) at a writable folder"
        ) from None
    return lock


def _links_out(path: Path) -> list[Path]:
    """Symbolic links in a run folder (``archive/`` aside) that lead out of it or nowhere."""
    root = path.resolve()
    return [
        link
        for link in path.rglob("*")
        if link.is_symlink()
        and link.relative_to(path).parts[0] != ARCHIVE
        and root not in link.resolve().parents
    ]


def _asked_checkpoint(asked: Asked, path: Path, layout: RunLayout) -> tuple[Path | None, bool]:
    """The checkpoint an attempt asks for (``ckpt_path=last`` or ``skip_completed``: the folder's
    newest; a path: that file) and whether it lies in the run folder."""
    if asked.ckpt_path not in (None, "last"):
        found = find_checkpoint(asked.ckpt_path)
        return found, path.resolve() in found.resolve().parents
    if asked.ckpt_path == "last" or asked.skip_completed:
        return newest_checkpoint(path / layout.checkpoints), True
    return None, True


def check_same_data(path: Path, recorded: dict | None, fingerprint: dict, skip: bool) -> None:
    """Refuse a run folder's data fingerprint that differs from what it recorded (the keys both
    have: a fingerprint of an older version has fewer)."""
    if any(recorded[key] != fingerprint[key] for key in set(recorded or {}) & set(fingerprint)):
        raise RunFolderError(
            f"{path} trained on other data than data.root now holds ({recorded} vs {fingerprint}); "
            f"refusing to {'skip it as completed' if skip else 'continue it'}. Point data.root at "
            "the data it trained on, or start a new run (another folder, or overwrite=true)"
        )


def _sweep_stopped(message: str) -> None:
    """Name the jobs a stopped sweep did not complete, and the command that continues it: the
    same overrides into the same folder, completed jobs skipped."""
    sweep = Path(sweep_dir()).resolve()
    pending = [job for job in sweep_jobs() if record_or_new(sweep / job).status != "completed"]
    typed = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "skip_completed="))]
    command = ["segment-train", *typed, f"hydra.sweep.dir={sweep}", "skip_completed=true"]
    log.error(
        "%s: the sweep stops; %d job(s) not completed: %s. Continue it: %s",
        message,
        len(pending),
        ", ".join(pending),
        shlex.join(command),
    )


def _logger_results(logger: Any, path: Path) -> list[str]:
    """The folders a logger keeps in the run folder ``path`` (its ``results``), by their names
    there."""
    named = getattr(logger, "results", None)
    found = named(path) if callable(named) else None  # fast_dev_run's logger answers any name
    inside = [Path(p).absolute() for p in found or () if isinstance(p, str | Path)]
    root = path.absolute()
    return [p.relative_to(root).as_posix() for p in inside if p.is_relative_to(root) and p != root]


def write_hydra(folder: Path, config: DictConfig, overrides: list[str]) -> None:
    """``.hydra/`` as Hydra writes it (the config resolved), once the attempt trains."""
    folder.mkdir(exist_ok=True)
    resolved = OmegaConf.to_container(config, resolve=True)
    write_atomic(folder / "config.yaml", OmegaConf.to_yaml(resolved))
    write_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(overrides))
    if HydraConfig.initialized() and not (folder / "hydra.yaml").is_file():
        write_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))


def remove_partial_files(path: Path) -> None:
    """What killed atomic writes left behind (``.<name>.*.partial``), archive/ aside."""
    for partial in path.rglob(".*.partial"):
        if ARCHIVE not in partial.relative_to(path).parts:
            partial.unlink(missing_ok=True)


def archive(path: Path, layout: RunLayout, started: str, also: Sequence[str] = ()) -> Path:
    """Move the earlier run's files (the layout's results, and ``also``: names in ``path``) to
    ``archive/<its start time>/``; a symbolic link moves as a link, never followed: nothing outside
    ``path`` changes."""
    if (path / ARCHIVE).is_symlink():  # archiving would write where it points
        raise RunFolderError(f"{path / ARCHIVE} is a symbolic link: replace it by a folder")
    stamp = re.sub(r"[^\w+.-]", "-", str(started)).strip(".") or "earlier"  # one name, in archive/
    target, suffix = path / ARCHIVE / stamp, 1
    while target.exists():
        target, suffix = path / ARCHIVE / f"{stamp}-{suffix}", suffix + 1
    target.mkdir(parents=True)
    linked_log = (layout.log,) if (path / layout.log).is_symlink() else ()  # its target not emptied
    for name in dict.fromkeys((*layout.results, *also, *linked_log)):
        if os.path.lexists(path / name):  # a rename: a link is moved, not what it points to
            shutil.move(str(path / name), str(target / name))
    if (log_file := path / layout.log).is_file():  # Hydra appends to it: copy, then truncate
        shutil.copy2(log_file, target / layout.log)
        os.truncate(log_file, 0)
    log.warning("archived the earlier run of %s in %s", path, target)
    return target
