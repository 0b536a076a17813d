"""What an attempt does with its folder: :func:`decide`, a pure function of the folder's record,
what was asked and the checkpoint found (docs/reliability.md has its table, which a test compares
with it row by row), and the messages of its refusals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segment.config.names import comparable, identity
from segment.run.layout import ARCHIVE
from segment.run.record import Action, Attempt, RecordError, RunRecord, record_or_new

__all__ = [
    "AFRESH",
    "Asked",
    "Decision",
    "NOTHING_TO_CONTINUE",
    "OTHER_JOB",
    "REFUSALS",
    "RunFolderError",
    "busy_message",
    "decide",
    "refusal",
]


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
        saved, mine = comparable(
            record.attempts[0].overrides if record.attempts else [], asked.overrides
        )
        theirs = identity(saved)
        if theirs and theirs != identity(mine):
            return Decision("refuse", OTHER_JOB.format(theirs))
        return Decision("skip")
    if asked.skip_completed and found is not None:
        return Decision("continue", checkpoint=found, own_config=True)
    if has_run and not (asked.overwrite or asked.skip_completed):
        return Decision("refuse", occupied=True)
    return Decision("fresh", archive=holds or has_run)


def busy_message(path: Path) -> str:
    holder = record_or_new(path).last or Attempt()
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
        f"move to {path / ARCHIVE}/<start time>/)"
    )
