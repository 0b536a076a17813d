"""What produced a run: its status, error, code version and package versions (``run.json``)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from segment.files import write_text_atomic

__all__ = ["RUN_FILE", "RunRecord", "git_state", "package_versions"]

RUN_FILE = "run.json"
_PACKAGES = (
    "torch", "torchvision", "lightning", "segmentation-models-pytorch", "albumentations",
    "hydra-core", "omegaconf", "torchmetrics", "numpy", "road-segment-unet",
)  # fmt: skip


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None where missing)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(folder: str | Path | None = None) -> dict[str, Any]:
    """Commit of the checkout holding this package and whether it has uncommitted changes.

    ``{"commit": None}`` outside a git checkout (e.g. an installed wheel) or without git.
    """
    folder = Path(folder or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit, changes = git("rev-parse", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}
    return {"commit": commit, "dirty": bool(changes)}


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class RunRecord:
    """``<run folder>/run.json``: rewritten atomically at each status change (by global rank 0 only).

    ``status`` is ``running``, then ``completed`` (with the final metrics) or ``failed``
    (with the error). A run killed from outside stays ``running``, which the study report
    lists as incomplete, and a sweep rerun with ``skip_completed=true`` runs again.
    """

    def __init__(self, folder: str | Path, **fields: Any) -> None:
        self.path = Path(folder) / RUN_FILE
        # Under DDP on a cluster every rank runs train(); one writer is enough.
        self.enabled = rank_zero_only.rank == 0
        self.record: dict[str, Any] = {
            "status": "running",
            "started": _now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": sys.argv,
            "git": git_state(),
            "versions": package_versions(),
            **fields,
        }

    def update(self, **fields: Any) -> None:
        self.record.update(fields)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self.record, indent=2, default=str) + "\n")

    def completed(self, metrics: dict[str, float]) -> None:
        self.update(status="completed", ended=_now(), metrics=metrics)

    def failed(self, error: BaseException) -> None:
        self.update(status="failed", ended=_now(), error=f"{type(error).__name__}: {error}")

    @staticmethod
    def read(folder: str | Path) -> dict[str, Any] | None:
        """The record of a run folder, None if it has none or it is unreadable."""
        path = Path(folder) / RUN_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
