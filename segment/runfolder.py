"""A run folder belongs to one run: a lock while it trains, no silent reuse, a record of its config.

Hydra writes ``.hydra/`` (the composed config) into the run folder *before* ``train()``
starts, so a second ``train.py`` aimed at a folder that holds a run would already have
replaced the first run's config. :class:`RunFolder` therefore keeps a copy of the config
of the run that owns the folder (``.hydra/owner/``) and puts it back whenever it refuses
a newcomer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

__all__ = ["RunFolder", "RunFolderError", "config_differences"]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
HYDRA_DIR = ".hydra"
OWNER_DIR = "owner"  # inside .hydra/: the config of the run that owns the folder
ARCHIVE_DIR = "archive"
# What a run leaves in its folder besides .hydra/ and train.log (archived by overwrite=true).
_RUN_ENTRIES = ("run.json", "thresholds.json", "checkpoints", "csv", "tensorboard", "masks")


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


class RunFolder:
    """Guards ``path`` for one training run (only global rank 0 writes or locks).

    Args:
        path: The run folder (``paths.output_dir``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.enabled = rank_zero_only.rank == 0
        self._lock_handle = None

    # --- the lock -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunFolder]:
        """Hold an exclusive lock on the folder; a second run gets an error naming the holder.

        ``flock`` locks die with their process, so a killed run never leaves a stale lock.
        """
        if not self.enabled:
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 -- held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            self.restore_owner_config()
            raise RunFolderError(
                f"run folder {self.path} is in use by {holder}: two runs in one folder would mix their logs. "
                "Wait for it to finish, or choose another folder (hydra.run.dir=<new folder>)"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}")
        handle.flush()
        self._lock_handle = handle
        try:
            yield self
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            self._lock_handle = None

    # --- what the folder holds ------------------------------------------------------------------------

    def holds_results(self) -> bool:
        """Whether an earlier run left results here (checkpoints, metrics, events, masks)."""
        for name in ("checkpoints", "csv", "tensorboard", "masks"):
            folder = self.path / name
            if folder.is_dir() and any(folder.iterdir()):
                return True
        return False

    # --- the owner's config ---------------------------------------------------------------------------

    def save_owner_config(self) -> None:
        """Copy Hydra's ``.hydra/*.yaml`` (this run's config) to ``.hydra/owner/``."""
        hydra = self.path / HYDRA_DIR
        if not self.enabled or not hydra.is_dir():
            return
        owner = hydra / OWNER_DIR
        owner.mkdir(exist_ok=True)
        for file in hydra.glob("*.yaml"):
            shutil.copy2(file, owner / file.name)

    def restore_owner_config(self) -> None:
        """Put the owning run's config back into ``.hydra/`` (Hydra overwrote it with a refused newcomer's)."""
        owner = self.path / HYDRA_DIR / OWNER_DIR
        if not self.enabled or not owner.is_dir():
            return
        for file in owner.glob("*.yaml"):
            shutil.copy2(file, self.path / HYDRA_DIR / file.name)

    # --- archiving ------------------------------------------------------------------------------------

    def archive(self, started: str | None = None) -> Path:
        """Move an earlier run's files to ``archive/<its start time>/`` (``overwrite=true``).

        Its ``.hydra/`` comes from ``.hydra/owner/`` and its ``train.log`` is copied (Hydra
        is appending to the open file, which then starts afresh for the new run).
        """
        if not self.enabled:
            return self.path / ARCHIVE_DIR
        stamp = (started or datetime.now().isoformat(timespec="seconds")).replace(":", "-")
        target = self.path / ARCHIVE_DIR / stamp
        suffix = 1
        while target.exists():
            target, suffix = self.path / ARCHIVE_DIR / f"{stamp}-{suffix}", suffix + 1
        target.mkdir(parents=True)
        for name in _RUN_ENTRIES:
            if (self.path / name).exists():
                shutil.move(str(self.path / name), str(target / name))
        owner = self.path / HYDRA_DIR / OWNER_DIR
        if owner.is_dir():
            shutil.move(str(owner), str(target / HYDRA_DIR))
        log_file = self.path / "train.log"
        if log_file.is_file():
            shutil.copy2(log_file, target / "train.log")
            with log_file.open("r+") as handle:  # truncate in place: Hydra's handler appends to it
                handle.truncate(0)
        log.warning("overwrite=true: archived the earlier run of %s in %s", self.path, target)
        return target

    def describe(self, record: dict[str, Any] | None) -> str:
        """One line about the run that holds the folder, for error messages."""
        if record is None:
            return "results of an earlier run (no run.json)"
        metrics = record.get("metrics") or {}
        loss = f", val/loss {metrics['val/loss']:.4f}" if isinstance(metrics.get("val/loss"), int | float) else ""
        started = record.get("started", "?")
        return f"a {record.get('status', '?')} run started {started} (seed {record.get('seed')}{loss})"


# Keys a resume may change: where things are, how they are shown, and how long training goes on.
RESUMABLE_KEYS = frozenset({
    "ckpt_path", "skip_completed", "overwrite", "task_name",
    "trainer.max_epochs", "trainer.max_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "data.root", "data.download", "data.num_workers", "data.pin_memory", "data.persistent_workers",
    "callbacks.thresholds.stop_when_reached",
})  # fmt: skip


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: node}


def config_differences(saved: dict[str, Any], new: dict[str, Any], ignore: set[str] | frozenset[str] = frozenset(),
                       ) -> list[str]:  # fmt: skip
    """Keys (dotted) whose resolved values differ between two configs, ``ignore`` and its children left out.

    Returns:
        ``["model.optimizer.lr: 0.001 -> 0.5", ...]``, sorted.
    """
    old, now = _flatten(saved), _flatten(new)

    def ignored(key: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for prefix in ignore)

    lines = []
    for key in sorted(set(old) | set(now)):
        if ignored(key):
            continue
        before, after = old.get(key, "<absent>"), now.get(key, "<absent>")
        if json.dumps(before, sort_keys=True, default=str) != json.dumps(after, sort_keys=True, default=str):
            lines.append(f"{key}: {before!r} -> {after!r}")
    return lines
