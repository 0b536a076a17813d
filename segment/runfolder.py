"""A run folder belongs to one run: claimed per attempt, locked while it trains, never silently
reused.

What an attempt does with its folder is :func:`decide`, a pure function of the folder's record, what
was asked and the checkpoint found (docs/reliability.md has its table). :class:`RunFolder` carries
it out: it locks the folder, records every attempt in the run record, and changes the run (its
status, ``.hydra/``, an archive of the earlier run) only when :meth:`RunFolder.start` is called,
right before training. An attempt refused, failing or stopped before that is recorded and changes
nothing else.
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from lightning import Trainer
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from segment.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_composed_targets,
    check_saved_overrides,
    find_checkpoint,
    newest_checkpoint,
    read_checkpoint,
    run_of,
    verify_checksum,
)
from segment.config import (
    ATTEMPT,
    RESUMABLE,
    config_dir,
    identity,
    is_infrastructure,
    nodes,
    parse_overrides,
    place_keys,
    sweep_dir,
    sweep_jobs,
)
from segment.files import sha256, write_atomic
from segment.layout import RunLayout
from segment.loggers import log_position
from segment.record import (
    Action,
    Attempt,
    RecordError,
    RunRecord,
    read_record,
    record_or_none,
    write_record,
)

__all__ = [
    "Asked",
    "Decision",
    "RunFolder",
    "RunFolderError",
    "decide",
    "follows_length",
    "resume_differences",
]

log = logging.getLogger(__name__)

# Signals that end a run: a preemption or kill (TERM), Ctrl-C (INT), a closed terminal (HUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_INPUTS = ("data.root", "paths.data_dir")  # places a saved override may name: where data is read
# Config groups a saved file may choose: what is trained (loggers, trainer: the command line's)
_TRAINED = "model data loss optimizer scheduler measurement protocol experiment callbacks".split()
_ABSENT = object()
# Keys that give a schedule's length; null: the run's own length (it follows trainer.max_epochs).
_LENGTH_KEYS = ("T_max", "total_steps", "total_iters")


# The reasons decide() gives.
NOTHING_TO_CONTINUE = (
    "ckpt_path=last: nothing to continue (no run record, no checkpoint). To continue a killed "
    "run, start in its folder: hydra.run.dir=<run folder> ckpt_path=last"
)
AFRESH = "no checkpoint yet (stopped before its first validation): starting it afresh"
OTHER_JOB = (
    "skip_completed: it holds a completed run of other overrides ({}): two jobs share a name"
)


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


# Errors that refuse an attempt before it trains: the folder, its record, the config (ConfigError
# and CheckpointError are ValueErrors), a file or folder handed in that is missing or unreadable.
REFUSALS = (
    RunFolderError,
    RecordError,
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)


@dataclass(frozen=True)
class Asked:
    """What the command line asks of the folder."""

    ckpt_path: str | None = None
    skip_completed: bool = False
    overwrite: bool = False
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What an attempt does with its folder; ``archive``: move the earlier run's files aside
    first; ``own_config``: continue under the run's saved overrides; ``occupied``: refused because
    the folder holds a run (the message then gives the three ways on)."""

    action: Action
    reason: str = ""
    checkpoint: Path | None = None
    archive: bool = False
    own_config: bool = False
    occupied: bool = False


def decide(
    record: RunRecord | None, holds: bool, asked: Asked, found: Path | None, inside: bool = True
) -> Decision:
    """The attempt's action on a folder: ``record`` (None: none), ``holds``: results on disk,
    ``found``: the checkpoint asked for (``ckpt_path=last`` or ``skip_completed``: the folder's
    newest; a path: that file), ``inside``: it lies in this folder."""
    status = record.status if record else None
    has_run = holds or status not in (None, "new", "failed")
    if asked.ckpt_path == "last":
        if found is not None:
            return Decision("continue", checkpoint=found, own_config=True)
        if status == "completed":
            return Decision("refuse", "a completed run that left no checkpoint to continue")
        if record is None and not holds:
            return Decision("refuse", NOTHING_TO_CONTINUE)
        return Decision("fresh", AFRESH, archive=holds, own_config=True)
    if asked.ckpt_path is not None:
        if not inside and has_run and not asked.overwrite:
            return Decision(
                "refuse", f"ckpt_path={asked.ckpt_path} is another run's", occupied=True
            )
        return Decision("continue", checkpoint=found, archive=has_run and not inside)
    if asked.skip_completed and status == "completed":
        theirs = identity(record.attempts[0].overrides) if record.attempts else {}
        if theirs and theirs != identity(asked.overrides):
            return Decision("refuse", OTHER_JOB.format(theirs))
        return Decision("skip")
    if asked.skip_completed and found is not None:
        return Decision("continue", checkpoint=found, own_config=True)
    if has_run and not (asked.overwrite or asked.skip_completed):
        return Decision("refuse", occupied=True)
    return Decision("fresh", archive=holds or has_run)


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
        self._held: tuple = ()  # where the run's results stood when training began

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
        self.decision = decide(known, holds, self.asked, found, inside)
        self.attempt.action = self.decision.action
        if self.decision.action == "refuse":
            raise RunFolderError(refusal(self.path, self.record, self.decision))
        if self.decision.reason:
            log.warning("%s: %s", self.path, self.decision.reason)

    def own_config(self, cfg: DictConfig) -> DictConfig:
        """A continued run's own config: its saved overrides (checked as data, see
        :func:`saved_overrides`), then those typed now; ``cfg`` itself for any other attempt. A
        saved file that is refused leaves the folder byte-identical (the attempt goes unrecorded).
        """
        saved = self.path / self.layout.hydra / "overrides.yaml"
        if not (self.decision.own_config and HydraConfig.initialized() and saved.is_file()):
            return cfg
        name = HydraConfig.get().job.config_name
        try:
            kept, reference = saved_overrides(saved, self.overrides, name)
            own = _compose(name, [*kept, *self.overrides], saved)
            check_composed_targets(own, reference, str(saved))
        except Exception:  # the folder's own file, unusable however: the folder stays as it was
            self.enabled = False
            raise
        self.overrides = [*kept, *self.overrides]
        return own

    def check_resume(self, cfg: DictConfig) -> dict[str, int] | None:
        """Refuse to continue from a checkpoint under another config; returns its log position (None
        when starting afresh)."""
        if self.decision.checkpoint is None:
            return None
        position, self._data = resume_point(self.decision.checkpoint, cfg)
        if self.record.status == "completed":  # asked to train on: refused if it would not
            checkpoint = read_checkpoint(self.decision.checkpoint, "ckpt_path", mmap=True)
            _check_longer(self.decision.checkpoint, checkpoint, cfg)
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
                archive(self.path, self.layout, self.record.started or _now())
                self.record = self._found = RunRecord()  # the earlier record went with its run
            remove_partial_files(self.path)
            write_hydra(self.path / self.layout.hydra, config, self.overrides)
        self.started, self._loggers = True, trainer.loggers
        if isinstance(io := trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            io.ledger = self._checkpoint_sums
        self._held = self._results()
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
        return began or self._results() != self._held

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
            log.error(
                "%s. Continue it: %s",
                message,
                shlex.join(
                    ["segment-train", f"hydra.run.dir={self.path.resolve()}", "ckpt_path=last"]
                ),
            )

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
        and link.relative_to(path).parts[0] != "archive"
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
    pending = [
        job
        for job in sweep_jobs()
        if (record_or_none(sweep / job) or RunRecord()).status != "completed"
    ]
    typed = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "skip_completed="))]
    command = ["segment-train", *typed, f"hydra.sweep.dir={sweep}", "skip_completed=true"]
    log.error(
        "%s: the sweep stops; %d job(s) not completed: %s. Continue it: %s",
        message,
        len(pending),
        ", ".join(pending),
        shlex.join(command),
    )


def saved_overrides(saved: Path, typed: list[str], config: str) -> tuple[list[str], DictConfig]:
    """The saved overrides a continued run composes from, and the config they are checked against.

    Only what defines the run comes from the file: lines the typed ones replace, and how one attempt
    treats the folder (``ckpt_path`` ...), are left out; a Hydra key (a search path, a launcher)
    is refused; where output and traffic go comes from this command line or the folder itself, so
    a line setting a place (``paths.*`` but the data's, a logger's settings, any key whose default
    in the project's config lies under ``paths``), deleting a key, or adding one with a text value
    or naming a file or folder is left out, named. Of the groups, only those that say what is
    trained (:data:`_TRAINED`) are taken, from the project's own config tree; a logger or trainer
    is the command line's. The reference is the config of the typed overrides and those group
    choices alone.
    """
    try:  # plain strings: OmegaConf would resolve them
        items = yaml.safe_load(saved.read_text())
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError("not a list of overrides")
        lines = [(item, *next(iter(parse_overrides([item]).items()))) for item in items]
    except (ValueError, yaml.YAMLError) as error:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{saved}: {error}; move it aside") from None
    mine = set(parse_overrides(typed))
    for item, key, _ in lines:
        if key.replace("/", ".").split(".")[0] == "hydra":
            raise CheckpointError(
                f"{saved}: {item!r}: a saved override may not set Hydra's own keys (search paths, "
                "launchers); refusing the folder. Type it on the command line if it is yours"
            )
    lines = [
        line for line in lines if line[1] not in mine and not is_infrastructure(line[1], ATTEMPT)
    ]
    check_saved_overrides([item for item, *_ in lines], str(saved))  # the typed: the user's
    groups = [
        item
        for item, key, _ in lines
        if _is_group(key) and key.split("/")[0] in _TRAINED and not item.startswith("~")
    ]
    reference = _compose(config, [*groups, *typed], saved)
    places = ("paths", "logger", "data.download", *place_keys(OmegaConf.to_container(reference)))
    kept, dropped = [], []
    for item, key, value in lines:
        new = (
            OmegaConf.select(reference, key, default=_ABSENT, throw_on_resolution_failure=False)
            is _ABSENT
        )
        where = key not in _INPUTS and (
            is_infrastructure(key, places)
            or any(p.startswith(f"{key}.") for p in places)
            or _names_a_place(key, value)
        )
        if (
            item in groups
            or not _is_group(key)
            and not (where or item.startswith("~") or (new and isinstance(value, str)))
        ):
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        log.warning(
            "%s: left out (where output and traffic go comes from the command line, never from a "
            "saved file; type them again to keep them): %s",
            saved,
            " ".join(dropped),
        )
    return kept, reference


def _names_a_place(key: str, value: Any) -> bool:
    """Whether an override names a file or folder: by its key's last word, or by a text value that
    is absolute, starts at home or climbs (``..``) anywhere in it."""
    text = [str(n) for _, n in nodes(value) if isinstance(n, str)]
    named = re.search(r"(file|dir|path|uri|url|root)(name)?$", key.split(".")[-1], re.I)
    return bool(named) or any(t.startswith(("/", "~")) or ".." in Path(t).parts for t in text)


def _is_group(key: str) -> bool:
    """Whether an override's key is one of the project's config groups (``data/transforms``)."""
    return "." not in key and (config_dir() / key.split("@")[0]).is_dir()


def _compose(config: str, overrides: list[str], saved: Path) -> DictConfig:
    """``config`` composed with ``overrides``: one that does not compose (an option from outside the
    project's config groups) refuses the folder."""
    try:
        return compose(config, overrides=overrides)
    except Exception as error:  # noqa: BLE001 -- Hydra's own exceptions, any of them
        raise CheckpointError(
            f"{saved}: the run's saved overrides do not compose from this project's config groups "
            f"({error}); a saved folder adds no search paths. Type the overrides again to continue"
        ) from None


def resume_point(path: Path, cfg: DictConfig) -> tuple[dict[str, int], dict[str, Any] | None]:
    """A checkpoint's log position and data fingerprint, once its bytes are those its run recorded
    and its config agrees with ``cfg``."""
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
    if "log_position" not in checkpoint:  # written before positions were: by step alone
        return {"step": step, "global_step": step + 1}, checkpoint.get("data")
    # global_step: rows logged after the checkpoint for steps before it (the epoch's metrics) are
    # kept, unless Lightning logs them again; then -1: none are
    again = _progress(checkpoint)[2]
    position = {**checkpoint["log_position"], "global_step": -1 if again else step}
    return position, checkpoint.get("data")


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


def _continue_there(checkpoint: Path) -> str:
    """For a checkpoint of a run folder: the command that continues that run in its own folder."""
    if (owner := run_of(checkpoint)) is None:
        return ""
    command = shlex.join(["segment-train", f"hydra.run.dir={owner}", "ckpt_path=last"])
    return f". To continue the run it belongs to, in its own folder: {command}"


def _check_longer(path: Path, checkpoint: dict[str, Any], cfg: DictConfig) -> None:
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
        if "archive" not in partial.relative_to(path).parts:
            partial.unlink(missing_ok=True)


def archive(path: Path, layout: RunLayout, started: str) -> Path:
    """Move the earlier run's files to ``archive/<its start time>/``; a symbolic link moves as a
    link, never followed: nothing outside ``path`` changes."""
    if (path / "archive").is_symlink():  # archiving would write where it points
        raise RunFolderError(f"{path / 'archive'} is a symbolic link: replace it by a folder")
    stamp = re.sub(r"[^\w+.-]", "-", str(started)).strip(".") or "earlier"  # one name, in archive/
    target, suffix = path / "archive" / stamp, 1
    while target.exists():
        target, suffix = path / "archive" / f"{stamp}-{suffix}", suffix + 1
    target.mkdir(parents=True)
    linked_log = (layout.log,) if (path / layout.log).is_symlink() else ()  # its target not emptied
    for name in (*layout.results, *linked_log):
        if os.path.lexists(path / name):  # a rename: a link is moved, not what it points to
            shutil.move(str(path / name), str(target / name))
    if (log_file := path / layout.log).is_file():  # Hydra appends to it: copy, then truncate
        shutil.copy2(log_file, target / layout.log)
        os.truncate(log_file, 0)
    log.warning("archived the earlier run of %s in %s", path, target)
    return target


def busy_message(path: Path) -> str:
    holder = (record_or_none(path) or RunRecord()).last or Attempt()
    return (
        f"run folder {path} is in use by pid {holder.pid} on {holder.host} since {holder.started}: "
        "two runs in one folder would mix their logs. Wait for it to finish, or choose another "
        "folder (hydra.run.dir=<new folder>)"
    )


def refusal(path: Path, record: RunRecord, decision: Decision) -> str:
    """The refusal's message: the reason, and for a folder holding a run, the three ways on."""
    if not decision.occupied:
        return f"{path}: {decision.reason}"
    why = decision.reason
    loss = record.metrics.get("val/loss")
    held = (
        f"a {record.status} run started {record.started} (seed "
        f"{record.seed}{f', val/loss {loss:.4f}' if isinstance(loss, int | float) else ''})"
        if record.status != "new"
        else "results of an earlier run (no run.json)"
    )
    return (
        f"{why + ', and ' if why else ''}run folder {path} already holds {held}; it is never "
        "silently reused. To continue that run: ckpt_path=last; to keep it and start another: "
        "choose a new folder (hydra.run.dir=<folder>); to replace it: overwrite=true (its files "
        f"move to {path / 'archive'}/<start time>/)"
    )
