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

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from segment.files import write_atomic

__all__ = ["RUN_FILE", "RunRecord", "git_state", "hparams_summary", "package_versions"]

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
    lists as incomplete, and a sweep rerun with ``skip_completed=true`` continues it.

    Args:
        folder: The run folder.
        previous: The record this attempt continues (a resume), if any. A completed record
            is never downgraded: a later attempt that fails (a resume with a bad override)
            is added to its ``failed_attempts`` instead.
        **fields: More fields to record (``seed``, ...).
    """

    def __init__(self, folder: str | Path, previous: dict[str, Any] | None = None, **fields: Any) -> None:
        self.path = Path(folder) / RUN_FILE
        # Under DDP on a cluster every rank runs train(); one writer is enough.
        self.enabled = rank_zero_only.rank == 0
        self.previous = previous
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
        self._write(self.record)

    def _write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(record, indent=2, default=str) + "\n")

    def completed(self, metrics: dict[str, float]) -> None:
        self.update(status="completed", ended=_now(), metrics=metrics)

    def failed(self, error: BaseException) -> None:
        message = f"{type(error).__name__}: {error}"
        if self.previous and self.previous.get("status") == "completed":
            attempt = {"started": self.record["started"], "ended": _now(), "command": sys.argv, "error": message}
            self.previous.setdefault("failed_attempts", []).append(attempt)
            self._write(self.previous)
            return
        self.update(status="failed", ended=_now(), error=message)

    @staticmethod
    def read(folder: str | Path) -> dict[str, Any] | None:
        """The record of a run folder, None if it has none or it is unreadable."""
        path = Path(folder) / RUN_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def _short(target: Any) -> str | None:
    return None if target is None else str(target).rsplit(".", 1)[-1]


def hparams_summary(cfg: Any, model: Any, trainer: Any) -> dict[str, Any]:
    """The keys a researcher compares runs by, for TensorBoard's hparams view and ``csv/hparams.yaml``.

    Model, encoder weights actually used, seed, optimiser and learning rate, schedule, loss,
    batch and image size, precision, epochs, and every key given on the command line (the
    swept ones among them). The whole resolved config is in ``run.json`` and in every
    checkpoint.
    """
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    select = lambda key: OmegaConf.select(cfg, key, default=None)  # noqa: E731
    image_size = select("data.image_size")
    summary: dict[str, Any] = {
        "model": choices.get("model") or _short(select("model.net._target_")),
        "net": _short(select("model.net._target_")),
        "encoder": select("model.net.encoder_name"),
        "encoder_weights": (model.hparams.get("encoder_weights_used") or {}).get("source"),
        "data": choices.get("data") or _short(select("data._target_")),
        "image_size": "x".join(str(v) for v in image_size) if image_size is not None else None,
        "batch_size": select("data.batch_size"),
        "seed": select("seed"),
        "optimizer": _short(select("model.optimizer._target_")),
        "lr": select("model.optimizer.lr"),
        "scheduler": _short(select("model.scheduler.scheduler._target_") or select("model.scheduler._target_")),
        "loss": _short(select("model.loss._target_")),
        "precision": str(trainer.precision),
        "max_epochs": select("trainer.max_epochs"),
    }
    if HydraConfig.initialized():
        for override in HydraConfig.get().overrides.task:
            key = override.split("=", 1)[0].lstrip("+~")
            if key.startswith(("hydra", "paths")):
                continue
            if key in choices:  # a config group: its option's name
                summary[key] = choices[key]
            elif "/" not in key:
                value = select(key)
                summary[key] = value if value is None or isinstance(value, bool | int | float | str) else str(value)
    return {key: value for key, value in summary.items() if value is not None}
