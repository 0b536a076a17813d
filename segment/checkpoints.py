"""Checkpoint files: written atomically in their own folder, read with errors that name the file,
found for a resume, and carrying the run's resolved config.

Lightning's own writer (``TorchCheckpointIO``) goes through an fsspec transaction that
writes a temporary file in ``$TMPDIR`` and moves it into place: when the run folder is on
another filesystem (a cluster's scratch vs. a node-local /tmp) that move is a truncating
copy, and a kill during it leaves a 0-byte ``last.ckpt`` and no previous copy.
:class:`AtomicCheckpointIO` writes beside the target and renames instead.
"""

from __future__ import annotations

import errno
import logging
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform
from hydra.utils import get_object
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from segment.files import atomic_open

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "check_trusted_targets",
    "ConfigInCheckpoint",
    "find_checkpoint",
    "newest_checkpoint",
    "read_checkpoint",
    "remove_partial_files",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it and says what to do."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the checkpoint's own folder, fsync, rename.

    A kill at any moment leaves the previous checkpoint intact (and at worst a hidden
    ``.<name>.*.partial`` file, removed when the run folder is next claimed). Remote
    (``s3://`` ...) paths keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_open(path, "wb") as file:
                torch.save(checkpoint, file)
        except RuntimeError as error:  # torch's writer reports a full disk as "[enforce fail at ...]"
            free = shutil.disk_usage(path.parent).free
            if "write failed" not in str(error) or free > 4 * 2**20:
                raise
            raise OSError(errno.ENOSPC, f"No space left on device: writing checkpoint {path} failed with "
                          f"{free / 2**20:.1f} MiB free; the previous checkpoint is intact. Free space (or point "
                          "paths.log_dir elsewhere), then continue: ckpt_path=last") from None  # fmt: skip


def read_checkpoint(path: str | Path, key: str = "ckpt_path", require: tuple[str, ...] = (),
                    mmap: bool = False) -> dict[str, Any]:  # fmt: skip
    """Load a checkpoint's dict with ``weights_only=True``, or raise an error naming the file.

    Args:
        path: The file.
        key: The config key it came from, named in errors (``ckpt_path``, ``model.init_from``).
        require: Keys the dict must hold (``global_step`` for a resume, ``state_dict`` ...).
        mmap: Map tensors instead of reading them (a cheap look at a large file).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a torch archive (a text file, a truncated copy), corrupt,
            holding code objects or a string OmegaConf would resolve (``${...}``; refused: a
            checkpoint is data), or lacking ``require``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: no such checkpoint file (checkpoints are in <run folder>/checkpoints/)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{key}={path} is not a checkpoint: not a torch archive ({path.stat().st_size} bytes; truncated, "
            "or another kind of file). Pass a .ckpt written by train.py"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # torch's message advises loading without the safety check; a checkpoint is data, never code
        raise CheckpointError(
            f"{key}={path} holds objects other than tensors and plain values, so it was not written by train.py "
            "(or was altered); refusing to load it"
        ) from None
    except Exception as error:  # noqa: BLE001 -- zip, storage and mmap errors come in many types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{key}={path} is a damaged checkpoint ({first_line}); use another one") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{key}={path} holds a {type(checkpoint).__name__}, not a train.py checkpoint")
    missing = [name for name in require if name not in checkpoint]
    if missing:
        raise CheckpointError(f"{key}={path} is not a train.py checkpoint: it has no {', '.join(missing)}")
    for name, value in checkpoint.items():
        if name not in ("state_dict", "optimizer_states"):
            _refuse_interpolations(value, f"{key}={path}: {name}")
    return checkpoint


def _refuse_interpolations(node: Any, where: str) -> None:
    """A checkpoint is data: a string that OmegaConf would resolve (``${...}``) never reaches a config."""
    if isinstance(node, str) and "${" in node:
        raise CheckpointError(
            f"{where}={node!r}: a checkpoint's strings may not hold interpolations or resolvers ('${{...}}'), which "
            "would run when its config is built; refusing the checkpoint"
        )
    if isinstance(node, dict):
        for name, value in node.items():
            _refuse_interpolations(value, f"{where}.{name}")
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            _refuse_interpolations(value, f"{where}[{index}]")


def newest_checkpoint(folder: str | Path) -> tuple[Path, int] | None:
    """The loadable checkpoint with the most training steps in ``folder`` (``last.ckpt`` on ties), or None.

    A run killed between two checkpoint writes may have a best checkpoint newer than its
    ``last.ckpt`` (or none at all); unreadable files are skipped with a warning.
    """
    folder = Path(folder)
    found: list[tuple[int, bool, float, Path]] = []
    for path in folder.glob("*.ckpt") if folder.is_dir() else ():
        try:
            step = int(read_checkpoint(path, require=("global_step",), mmap=True)["global_step"])
        except (CheckpointError, OSError) as error:
            log.warning("skipping unreadable checkpoint %s: %s", path, error)
            continue
        found.append((step, path.stem == "last", path.stat().st_mtime, path))
    if not found:
        return None
    step, _, _, path = max(found)
    return path, step


def find_checkpoint(path: str | Path, key: str = "ckpt_path") -> tuple[Path, int]:
    """A checkpoint file, or a run folder's newest checkpoint (``<folder>/checkpoints/``), and its global step.

    Raises:
        FileNotFoundError: no such file or folder, or a folder without a loadable checkpoint, named.
        CheckpointError: a file that is not a usable checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        found = newest_checkpoint(path / "checkpoints") or newest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{key}={path}: a folder without a loadable checkpoint (none in it or its "
                                    "checkpoints/); pass a run folder or a .ckpt file")  # fmt: skip
        return found
    return path, int(read_checkpoint(path, key, require=("global_step",), mmap=True)["global_step"])


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Delete what killed atomic writes left behind in ``folder`` (``.<name>.*.partial``)."""
    folder = Path(folder)
    removed = sorted(folder.glob(".*.partial")) if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


class ConfigInCheckpoint(Callback):
    """Store the run's resolved config and its data fingerprint in every checkpoint (``config``, ``data``).

    A resume compares both with its own; ``evaluate.py`` takes the data config from it.
    """

    def __init__(self, config: dict[str, Any], data: dict[str, Any] | None = None) -> None:
        self.config, self.data = config, data

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["config"], checkpoint["data"] = self.config, self.data


# What a checkpoint may ask to be built. Model parts: classes from these modules (checked by name
# first, so nothing else is even imported) that are nets, losses, optimisers or LR schedulers, and
# smp's model factory. The data config (evaluate.py reads it from the checkpoint): this package's
# data modules and albumentations transforms. Anything else in a ``_target_`` -- ``builtins.open``,
# ``shutil.copyfile``, ``pathlib.Path.write_text`` -- is refused, however deeply nested.
_MODEL_MODULES = (
    "segment.models.", "segmentation_models_pytorch.", "torch.nn.", "torch.optim.", "torchvision.models.",
)  # fmt: skip
_DATA_MODULES = ("segment.data.", "albumentations.")
_TRUSTED_FUNCTIONS = ("segmentation_models_pytorch.create_model",)


def _trusted_bases(kind: str) -> tuple[type, ...]:
    if kind == "data":
        return (LightningDataModule, BasicTransform, BaseCompose)
    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    return (nn.Module, torch.optim.Optimizer, *schedulers)


def _trusted_object(target: Any, kind: str) -> bool:
    modules = _DATA_MODULES if kind == "data" else _MODEL_MODULES
    if kind == "model" and target in _TRUSTED_FUNCTIONS:
        return True
    if not isinstance(target, str) or not target.startswith(modules) or "__" in target:
        return False
    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001 -- not importable: not buildable either
        return False
    if not isinstance(obj, type) or not str(getattr(obj, "__module__", "")).startswith(
            tuple(m.rstrip(".") for m in modules)):  # fmt: skip
        return False
    return issubclass(obj, _trusted_bases(kind))


def check_trusted_targets(config: Any, where: str, kind: str = "model") -> None:
    """Refuse any ``_target_`` in ``config`` (nested included) that is not an allow-listed class.

    Args:
        config: Plain containers from a checkpoint.
        where: Named in the error (``<file>: hyper_parameters.net``).
        kind: ``model`` (nets, losses, optimisers, schedulers) or ``data`` (data modules, transforms).

    Raises:
        CheckpointError: naming the target and where it was found.
    """
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None and not _trusted_object(target, kind):
            what = ("data modules of segment.data and albumentations transforms" if kind == "data" else
                    "nets, losses, optimisers and LR schedulers of segment.models, segmentation_models_pytorch, "
                    "torch.nn, torch.optim and torchvision.models")  # fmt: skip
            raise CheckpointError(
                f"{where}: refusing to build _target_={target!r} from a checkpoint; a checkpoint may only name {what}"
            )
        for key, value in config.items():
            check_trusted_targets(value, f"{where}.{key}", kind)
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            check_trusted_targets(value, f"{where}[{index}]", kind)
