"""The run record, ``<run folder>/run.json``: one typed, versioned file, one reader, one writer.

Every reader of a run (the run folder's claim, the study report, evaluation) goes through
:func:`read_record`; the run folder writes it through :func:`write_record`. The record is checked as
data (pydantic, strict): a wrong type or an unknown status names the field and the file, never
misreads. A record written before it had a version (schema 1) is read as such; one from a newer
version of this package is named.

A light module (pydantic and the standard library): the report and the run folder read records
without importing torch, Lightning or Hydra.
"""

from __future__ import annotations

import json
import logging
import platform
import reprlib
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from segment.files import write_atomic
from segment.run.layout import RunLayout

__all__ = [
    "SCHEMA",
    "Attempt",
    "RecordError",
    "RunRecord",
    "read_record",
    "record_or_new",
    "versions",
    "write_record",
]

log = logging.getLogger(__name__)

SCHEMA = 2
FILE = RunLayout.record  # the record's name in a run folder
_PACKAGES = (
    "torch",
    "lightning",
    "segmentation-models-pytorch",
    "albumentations",
    "hydra-core",
    "torchmetrics",
    "numpy",
    "road-segment-unet",
)

Status = Literal["new", "running", "completed", "stopped", "interrupted", "failed"]
Action = Literal["fresh", "continue", "skip", "refuse"]  # what segment.run.decision.decide chose
Outcome = Literal["completed", "stopped", "interrupted", "failed", "refused", "skipped"]


class RecordError(RuntimeError):
    """A run record that cannot be read as one; the message names the file and the fix."""


class Attempt(BaseModel):
    """One ``train.py`` invocation on the folder: accepted or not, and how it ended."""

    # strict: a record is data ("5" is no pid); keys of other versions are left out
    model_config = ConfigDict(strict=True, extra="ignore")

    started: str = "?"
    host: str = "?"
    pid: int | None = None
    command: list[str] = []
    git: dict[str, Any] = {}
    overrides: list[str] = []
    action: Action | None = None  # None: schema 1 recorded none
    outcome: Outcome | None = None  # None: still running, or killed (SIGKILL)
    ended: str | None = None
    error: str | None = None
    signal: str | None = None
    resumed_from: str | None = None
    precision: dict[str, Any] | None = None
    machine: dict[str, Any] | None = None  # CPU/GPU model and speed index (segment.device)


class RunRecord(BaseModel):
    """What a run folder holds: its status, what it trained on and with, and every attempt.

    ``status``: ``new`` (no attempt has trained yet), ``running``, ``completed``, ``interrupted`` (a
    signal) or ``failed``. ``data_order``: what fixes the order and augmentation of its training
    data (the sampling code's version and the seed): two runs are paired by seed only where both
    match. Keys this version does not know (an older record's) are kept as read.
    """

    model_config = ConfigDict(strict=True, extra="allow")

    status: Status = "new"
    started: str | None = None
    ended: str | None = None
    seed: int | None = None
    error: str | None = None
    data: dict[str, Any] | None = None
    # the dataset's label set: name, class_names, palette (what a report draws masks with)
    labels: dict[str, Any] | None = None
    data_order: dict[str, Any] | None = None
    versions: dict[str, Any] = {}
    encoder_weights_used: dict[str, Any] | None = None
    loss: Any = None
    tags: list[str] = []
    metrics: dict[str, float] = {}
    config: dict[str, Any] | None = None
    layout: dict[str, str] | None = None
    # SHA-256 of each checkpoint by its path in the folder; two while one is being replaced
    checkpoints: dict[str, list[str]] = {}
    attempts: list[Attempt] = []

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def trained(self) -> Attempt | None:
        """The latest attempt that trained (its precision and machine are the run's)."""
        done = [a for a in self.attempts if a.action in ("fresh", "continue", None)]
        return next((a for a in reversed(done) if a.outcome not in ("refused", "skipped")), None)


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 (no ``schema`` key): the first attempt's fields may stand at the top level."""
    if values.get("attempts") in (None, []):
        first = {
            k: values[k] for k in ("host", "pid", "command", "git", "precision") if k in values
        }
        values["attempts"] = [{"started": values.get("started") or "?", **first}]
    return values


def _validate(path: Path, values: dict[str, Any]) -> RunRecord:
    """``values`` as a record, or :class:`RecordError` naming each wrong field."""
    try:
        return RunRecord.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{_where(e['loc'])}: {reprlib.repr(e['input'])} ({e['msg'][0].lower()}{e['msg'][1:]})"
            for e in error.errors()[:3]
        )
        raise RecordError(f"{path}: {problems}; move the file aside or fix it") from None


def _where(loc: tuple[int | str, ...]) -> str:
    """``("attempts", 0, "pid")`` -> ``attempts[0].pid``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def read_record(folder: str | Path) -> RunRecord | None:
    """A run folder's record; None without one. Raises :class:`RecordError` naming the file (and
    the field)."""
    path = Path(folder) / FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        raise RecordError(
            f"{path} is unreadable ({error}); move it aside (its run is then continued from its "
            "newest checkpoint, or started afresh)"
        ) from None
    if not isinstance(values, dict):
        raise RecordError(
            f"{path} holds a {type(values).__name__}, not a run record; move it aside"
        )
    version = values.pop("schema", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA:
        raise RecordError(
            f"{path} is a run record of schema {version!r}, newer than this package reads "
            f"({SCHEMA}): upgrade road-segment-unet to read it"
        )
    record = _validate(path, _upgrade(values) if version == 1 else values)
    try:
        RunLayout.of(record.layout)  # checked once for every reader: names inside the folder
    except ValueError as error:
        raise RecordError(f"{path}: {error}; move the file aside or fix it") from None
    return record


def record_or_new(folder: str | Path) -> RunRecord:
    """A folder's record, or a new one where it has none or one that cannot be read (a stopped
    sweep's summary, a busy folder's holder, a job found again): the reason is logged, never
    raised."""
    try:
        return read_record(folder) or RunRecord()
    except RecordError as error:
        log.warning("%s", error)
        return RunRecord()


def write_record(folder: str | Path, record: RunRecord) -> None:
    """Write ``record`` to ``<folder>/run.json`` atomically; a record that would not read back
    (a wrong type) raises :class:`RecordError` and writes nothing."""
    path = Path(folder) / FILE
    values = json.loads(json.dumps(record.model_dump(), default=str))
    _validate(path, values)
    text = json.dumps({**values, "schema": SCHEMA}, indent=2)
    write_atomic(path, text + "\n")


def versions() -> dict[str, str | None]:
    """Python's and the main packages' versions, as a run records them."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
