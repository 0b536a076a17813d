"""The run record, ``<run folder>/run.json``: one typed, versioned file, one reader, one writer.

Every reader of a run (the run folder's claim, the study report, evaluation) goes through
:func:`read_record`; the run folder writes it through :func:`write_record`. A record written before
it had a version (schema 1) is read as such; one from a newer version of this package is named,
never misread.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from segment.files import write_atomic

__all__ = [
    "SCHEMA",
    "Attempt",
    "RecordError",
    "RunRecord",
    "read_record",
    "versions",
    "write_record",
]

SCHEMA = 2
FILE = "run.json"
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


class RecordError(RuntimeError):
    """A run record that cannot be read as one; the message names the file and the fix."""


@dataclass
class Attempt:
    """One ``train.py`` invocation on the folder: accepted or not, and how it ended."""

    started: str = "?"
    host: str = "?"
    pid: int | None = None
    command: list[str] = field(default_factory=list)
    git: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    action: str | None = None  # fresh, continue, skip, archive (then fresh), refuse
    outcome: str | None = None  # completed, interrupted, failed, refused, skipped
    ended: str | None = None
    error: str | None = None
    signal: str | None = None
    resumed_from: str | None = None
    precision: dict[str, Any] | None = None
    machine: dict[str, Any] | None = None  # CPU/GPU model and speed index (segment.device)


@dataclass
class RunRecord:
    """What a run folder holds: its status, what it trained on and with, and every attempt.

    ``status``: ``new`` (no attempt has trained yet), ``running``, ``completed``, ``interrupted`` (a
    signal) or ``failed``. ``data_order``: what fixes the order and augmentation of its training
    data (the sampling code's version and the seed): two runs are paired by seed only where both
    match.
    """

    status: str = "new"
    started: str | None = None
    ended: str | None = None
    seed: int | None = None
    error: str | None = None
    data: dict[str, Any] | None = None
    data_order: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    encoder_weights_used: dict[str, Any] | None = None
    loss: Any = None
    tags: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    layout: dict[str, str] | None = None
    attempts: list[Attempt] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of older records, kept as read
    schema: int = SCHEMA

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def trained(self) -> Attempt | None:
        """The latest attempt that trained (its precision and machine are the run's)."""
        done = [a for a in self.attempts if a.action in ("fresh", "continue", None)]
        return next((a for a in reversed(done) if a.outcome not in ("refused", "skipped")), None)


def _split(cls: type, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls)}
    return (
        {k: v for k, v in values.items() if k in names},
        {k: v for k, v in values.items() if k not in names},
    )


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 (no ``schema`` key): the first attempt's fields may stand at the top level."""
    if not values.get("attempts"):
        first = {k: values.get(k) for k in ("host", "pid", "command", "git", "precision")}
        values["attempts"] = [{"started": values.get("started") or "?", **first}]
    values["attempts"] = [{"action": None, **a} for a in values["attempts"]]
    return values


def read_record(folder: str | Path) -> RunRecord | None:
    """A run folder's record; None without one. Raises :class:`RecordError` naming the file."""
    path = Path(folder) / FILE
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise RecordError(
            f"{path} is unreadable ({error}); move it aside (its run is then continued from its "
            "newest checkpoint, or started afresh)"
        ) from None
    if not isinstance(values, dict):
        raise RecordError(
            f"{path} holds a {type(values).__name__}, not a run record; move it aside"
        )
    version = values.pop("schema", 1)
    if not isinstance(version, int) or version > SCHEMA:
        raise RecordError(
            f"{path} is a run record of schema {version!r}, newer than this package reads "
            f"({SCHEMA}): upgrade road-segment-unet to read it"
        )
    values = _upgrade(values) if version == 1 else values
    known, extra = _split(RunRecord, values)
    try:
        from segment.layout import RunLayout  # here: it imports this module's FILE

        RunLayout.of(known.get("layout"))  # checked once for every reader: names inside the folder
        attempts = [Attempt(**_split(Attempt, item)[0]) for item in known.pop("attempts", [])]
        extra = {**known.pop("extra", {}), **extra}
        return RunRecord(**known, attempts=attempts, extra=extra)
    except (TypeError, ValueError, AttributeError) as error:  # AttributeError: layout no dict
        raise RecordError(f"{path} is not a run record ({error}); move it aside") from None


def write_record(folder: str | Path, record: RunRecord) -> None:
    """Write ``record`` to ``<folder>/run.json`` atomically."""
    text = json.dumps(dataclasses.asdict(record), indent=2, default=str)
    write_atomic(Path(folder) / FILE, text + "\n")


def versions() -> dict[str, str | None]:
    """Python's and the main packages' versions, as a run records them."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
