"""Checkpoint files: written atomically in their own folder, read as data (errors name the file),
found for a resume, carrying the run's resolved config and data fingerprint.

Lightning's writer (``TorchCheckpointIO``) writes a temporary file in ``$TMPDIR`` and moves it into
place: on another filesystem (a cluster's scratch vs. a node-local /tmp) that is a truncating copy,
and a kill during it leaves a 0-byte ``last.ckpt``. :class:`AtomicCheckpointIO` writes beside the
target and renames instead.
"""

from __future__ import annotations

import copy
import errno
import inspect
import logging
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform
from hydra.utils import get_object
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segment.config import nodes, parse_overrides
from segment.files import atomic_open, sha256
from segment.layout import RunLayout
from segment.loggers import log_position
from segment.record import FILE as RECORD
from segment.record import RecordError, RunRecord, read_record

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "RunInCheckpoint",
    "check_composed_targets",
    "check_saved_overrides",
    "check_trusted_targets",
    "find_checkpoint",
    "newest_checkpoint",
    "read_checkpoint",
    "run_of",
    "verify_checksum",
    "without_pretrained",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it and says what to do."""


Ledger = Callable[[Path, str | None, bool], None]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the checkpoint's own folder, fsync, rename: a kill
    leaves the previous checkpoint intact (and at worst a ``.<name>.*.partial`` file, removed when
    the folder is next claimed); a full disk is named as such. Remote (``s3://`` ...) paths keep
    Lightning's writer.

    ``ledger`` (set by the run folder when its attempt trains) is told each file's SHA-256 before
    the rename and after it (``ledger(path, sum, renamed)``; ``sum`` None: the file was removed);
    Lightning's loads are checked against it.
    """

    ledger: Ledger | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options (got {storage_options!r})"
            )
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        before = path.stat().st_size if path.is_file() else 0
        digest = ""

        def vouch(partial: Path) -> None:
            nonlocal digest
            digest = sha256(partial)
            self.ledger(path, digest, False)  # type: ignore[misc]

        try:
            with atomic_open(path, "wb", vouch if self.ledger else None) as file:
                torch.save(checkpoint, file)
            if self.ledger:
                self.ledger(path, digest, True)
        except (RuntimeError, OSError) as error:
            free = shutil.disk_usage(path.parent).free
            if not _disk_full(error) and free > max(2 * before, 4 * 2**20):
                raise
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: writing checkpoint {path} failed with "
                f"{free / 2**20:.1f} MiB free; the previous checkpoint is intact. Free space (or "
                "point paths.log_dir elsewhere), then continue: "
                "ckpt_path=last",
            ) from None

    def load_checkpoint(self, path, map_location: Any = None, weights_only: Any = None) -> dict:
        """Lightning's own loads (a resume, ``test_after_fit``'s best checkpoint), checked against
        the run's record first (:func:`verify_checksum`)."""
        verify_checksum(Path(path))
        options = {"map_location": map_location} if map_location is not None else {}
        return super().load_checkpoint(path, weights_only=weights_only, **options)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        if self.ledger:
            self.ledger(Path(path), None, True)


def _disk_full(error: BaseException | None) -> bool:
    """ENOSPC or EDQUOT anywhere in an error's chain (torch's writer wraps it in a RuntimeError
    whose words change between releases: told by errno or free space, never by the words)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def read_checkpoint(
    path: str | Path, key: str = "ckpt_path", require: tuple[str, ...] = (), mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint's dict as data (``weights_only``; ``mmap``: a cheap look at a large file).

    ``key`` is the config key it came from, named in errors; ``require``, keys it must hold. Raises
    ``FileNotFoundError``, or :class:`CheckpointError` for anything that is not a
    train.py checkpoint: not a torch archive, damaged, holding code objects, a string that OmegaConf
    would resolve (``${...}``, at any depth), positional ``_args_`` (a checkpoint's config names
    arguments by key, so that loading can blank the ones that would fetch weights), or lacking a
    ``require`` key.
    """
    checkpoint = _load(Path(path), key, mmap)
    if missing := [name for name in require if name not in checkpoint]:
        raise CheckpointError(
            f"{key}={path} is not a train.py checkpoint: it has no {', '.join(missing)}"
        )
    data = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
    for where, node in nodes(data, f"{key}={path}:"):
        place = where.replace(":.", ": ")
        if isinstance(node, str) and "${" in node:  # OmegaConf would resolve it
            raise CheckpointError(
                f"{place}={node!r}: a checkpoint's strings may not hold interpolations or "
                "resolvers ('${...}'); refusing the checkpoint"
            )
        if isinstance(node, dict) and "_args_" in node:
            raise CheckpointError(
                f"{place}._args_: a checkpoint's config may not give positional arguments (they "
                "could ask for a download); refusing it"
            )
    return checkpoint


def _load(path: Path, key: str, mmap: bool) -> dict[str, Any]:
    """``torch.load`` with ``weights_only``, every failure named with the file; a full load is
    first checked against its run's record (:func:`verify_checksum`)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}={path}: no such checkpoint file (checkpoints are in <run folder>/checkpoints/)"
        )
    if not mmap:
        verify_checksum(path, key)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{key}={path} is not a checkpoint: not a torch archive ({path.stat().st_size} bytes; "
            "truncated, or another kind of file). Pass a .ckpt written by train.py"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # torch advises loading unchecked: a checkpoint is never code
        raise CheckpointError(
            f"{key}={path} holds objects other than tensors and plain values, so it was not "
            "written by train.py (or was altered); refusing to load it"
        ) from None
    except Exception as error:  # noqa: BLE001 -- zip, storage and mmap errors come in many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{key}={path} is a damaged checkpoint ({first}); use another one"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{key}={path} holds a {type(checkpoint).__name__}, not a train.py checkpoint"
        )
    return checkpoint


def run_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to: the nearest folder above it with a record."""
    return next((p for p in checkpoint.resolve().parents if (p / RECORD).is_file()), None)


def verify_checksum(path: Path, key: str = "ckpt_path") -> None:
    """Refuse a checkpoint whose bytes are not those its run recorded (a flipped bit, a partial
    copy, a file renamed or copied in). Its run is the nearest folder above it, as named or as
    resolved, whose record keeps its checkpoints there; a record on the way that cannot be read
    refuses it. Loaded unchecked only outside any run folder, or from a run written before
    checksums were recorded (a warning says so)."""
    for named in dict.fromkeys((Path(path).absolute(), Path(path).resolve())):
        for folder in named.parents:
            if not (folder / RECORD).is_file():
                continue
            try:
                record = read_record(folder)
            except RecordError as error:
                raise CheckpointError(
                    f"{key}={path} cannot be checked against its run's record: {error}"
                ) from None
            name = named.relative_to(folder).as_posix()
            if name.startswith(f"{RunLayout.of(record.layout).checkpoints}/"):
                return _check_sum(path, key, folder / RECORD, record.checkpoints, name)
    log.warning("%s is in no run folder: loaded unchecked", path)


def _check_sum(path: Path, key: str, record: Path, sums: dict[str, list[str]], name: str) -> None:
    if not sums:
        log.warning("%s: its run recorded no checksums (an older run): loaded unchecked", path)
        return
    if (found := sha256(path)) in sums.get(name, []):
        return
    if sums.get(name):
        raise CheckpointError(
            f"{key}={path} is damaged: its SHA-256 {found[:12]}... is not the "
            f"{sums[name][-1][:12]}... its run recorded in {record} when it was written. Use "
            "another checkpoint (move this one aside: a run then continues from its newest intact "
            "checkpoint)"
        )
    raise CheckpointError(
        f"{key}={path} is not a checkpoint its run wrote: {record} holds no checksum for {name} "
        "(renamed, or copied in). Give it back the name its run gave it, or copy it out of the "
        "run folder to load it unchecked"
    )


def newest_checkpoint(folder: str | Path) -> Path | None:
    """The loadable checkpoint with the most training steps in ``folder`` (``last.ckpt`` on ties),
    or None: a run killed between two writes may have a best checkpoint newer than ``last.ckpt``.
    Unreadable files are skipped."""
    found: list[tuple[int, bool, float, Path]] = []
    for path in Path(folder).glob("*.ckpt") if Path(folder).is_dir() else ():
        try:
            step = int(read_checkpoint(path, require=("global_step",), mmap=True)["global_step"])
        except (CheckpointError, OSError) as error:
            log.warning("skipping unreadable checkpoint %s: %s", path, error)
            continue
        found.append((step, path.stem == "last", path.stat().st_mtime, path))
    return max(found)[-1] if found else None


def find_checkpoint(path: str | Path, key: str = "ckpt_path") -> Path:
    """A ``train.py`` checkpoint file (checked as one), or a run folder's newest checkpoint
    (``<folder>/checkpoints/``)."""
    path = Path(path)
    if path.is_dir():
        folder = path / RunLayout.of((read_record(path) or RunRecord()).layout).checkpoints
        if (found := newest_checkpoint(folder) or newest_checkpoint(path)) is None:
            raise FileNotFoundError(
                f"{key}={path}: a folder without a loadable checkpoint (none in it or its "
                "checkpoints/); pass a run folder or a .ckpt file"
            )
        return found
    read_checkpoint(path, key, require=("global_step",), mmap=True)
    return path


class RunInCheckpoint(Callback):
    """Store the run's resolved config, data fingerprint and log position in every checkpoint
    (``config``, ``data``, ``log_position``): a resume compares the first two with its own and
    continues the logs from the third; ``evaluate.py`` takes the data config from it."""

    def __init__(self, config: dict[str, Any], data: dict[str, Any] | None = None) -> None:
        self.config, self.data = config, data

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["config"], checkpoint["data"] = self.config, self.data
        checkpoint["log_position"] = log_position(trainer.loggers)


# What a checkpoint may ask to be built. Model parts: classes from these modules (checked by name
# first, so nothing else is even imported) that are nets, losses, optimisers or LR schedulers, and
# smp's model factory.
# The data config (evaluate.py reads it from the checkpoint): this package's data modules and
# albumentations transforms. Anything else in a ``_target_`` (``builtins.open``,
# ``shutil.copyfile``) is refused at any depth.
_ALLOWED = {
    "model": (
        (
            "segment.models.",
            "segmentation_models_pytorch.",
            "torch.nn.",
            "torch.optim.",
            "torchvision.models.",
        ),
        (
            nn.Module,
            torch.optim.Optimizer,
            torch.optim.lr_scheduler.LRScheduler,
            torch.optim.lr_scheduler.ReduceLROnPlateau,
        ),
        "nets, losses, optimisers and LR schedulers of segment.models, "
        "segmentation_models_pytorch, torch.nn, "
        "torch.optim and torchvision.models",
    ),
    "data": (
        ("segment.data.", "albumentations."),
        (LightningDataModule, BasicTransform, BaseCompose),
        "data modules of segment.data and albumentations transforms",
    ),
}


def _trusted(target: Any, kind: str) -> bool:
    modules, bases, _ = _ALLOWED[kind]
    if kind == "model" and target == "segmentation_models_pytorch.create_model":
        return True
    if not isinstance(target, str) or not target.startswith(modules) or "__" in target:
        return False
    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001 -- not importable: not buildable either
        return False
    home = str(getattr(obj, "__module__", ""))
    return (
        isinstance(obj, type)
        and home.startswith(tuple(m.rstrip(".") for m in modules))
        and issubclass(obj, bases)
    )


def check_trusted_targets(config: Any, where: str, kind: str = "model") -> None:
    """Refuse any ``_target_`` in ``config`` (plain containers from a checkpoint, at any depth) that
    is not an allow-listed class of ``kind`` (``model`` or ``data``), naming it and where it was
    found."""
    for place, node in nodes(config, where):
        if isinstance(node, str) and re.match(r"(hf[-_]hub:|[a-z0-9+]+://)", node, re.I):
            raise CheckpointError(
                f"{place}={node!r}: a checkpoint may not name a hub or a URL (building from it "
                "would fetch); refusing it"
            )
        if (
            isinstance(node, dict)
            and node.get("_target_") is not None
            and not _trusted(node["_target_"], kind)
        ):
            raise CheckpointError(
                f"{place}: refusing to build _target_={node['_target_']!r} from a checkpoint; a "
                f"checkpoint may only name {_ALLOWED[kind][2]}"
            )


# Arguments by which an allow-listed class fetches pretrained weights, and the value that fetches
# none: smp's nets (and create_model) default to encoder_weights="imagenet", its timm encoders to
# pretrained=True. (A checkpoint's data config never downloads: evaluate.py skips prepare_data.)
_PRETRAINED = {"encoder_weights": None, "pretrained": False}


def check_composed_targets(config: DictConfig, reference: DictConfig, where: str) -> None:
    """Refuse a ``_target_`` of a composed ``config``, at any depth, that ``reference`` (the
    project's and the command line's config) does not hold at the same place, unless it is an
    allow-listed class of the part it lies in (``model``, ``data``)."""
    theirs = dict(_targets(OmegaConf.to_container(reference)))
    for place, target in _targets(OmegaConf.to_container(config)):
        kind = place.lstrip(".").split(".")[0].split("[")[0]
        if theirs.get(place) != target and not (kind in _ALLOWED and _trusted(target, kind)):
            raise CheckpointError(
                f"{where}: refusing to build _target_={target!r} at {place.lstrip('.')}: a saved "
                "folder may only name the project's own classes there"
            )


def _targets(config: Any) -> Iterator[tuple[str, Any]]:
    return (
        (place, node["_target_"])
        for place, node in nodes(config, "")
        if isinstance(node, dict) and "_target_" in node
    )


def without_pretrained(config: Any) -> Any:
    """A copy of ``config`` (plain containers from a checkpoint, ``_target_``s already checked) in
    which every node, at any depth, that could fetch pretrained weights is told not to: a switch of
    :data:`_PRETRAINED` is turned off where the node has it, and added where its ``_target_`` takes
    it, since the class's own default fetches (smp's ``Unet`` without ``encoder_weights``)."""
    config = copy.deepcopy(config)
    for _, node in list(nodes(config, "")):
        if not isinstance(node, dict):
            continue
        takes = _parameters(node.get("_target_"))
        node.update({key: off for key, off in _PRETRAINED.items() if key in node or key in takes})
    return config


def _parameters(target: Any) -> set[str]:
    """The argument names of a ``_target_``'s callable (none for anything not importable)."""
    if not isinstance(target, str):
        return set()
    try:
        return set(inspect.signature(get_object(target)).parameters)
    except Exception:  # noqa: BLE001 -- not importable or no signature: it takes nothing by name
        return set()


def check_saved_overrides(items: list[Any], where: str) -> None:
    """Refuse a run folder's saved overrides unless they are plain data: no interpolation, no
    ``_args_``/``_partial_``-style key, and only allow-listed ``_target_``s under ``model`` or
    ``data`` (anyone can append a line to ``.hydra/overrides.yaml``)."""
    for item in items:
        refuse = f"{where}: {str(item)!r}: a saved override may not hold "
        parsed = parse_overrides([str(item)])  # Hydra's grammar unescapes "$\\{" to "${"
        if "${" in str(item) or any("${" in str(n) for _, n in nodes(list(parsed.values()), "")):
            raise CheckpointError(refuse + "interpolations or resolvers ('${...}'); refusing it")
        for key, value in parsed.items():
            tree: Any = value
            for part in reversed(key.split(".")):
                tree = {part: tree}
            kind = key.split(".")[0]
            specials = {
                str(k)
                for _, node in nodes(tree, "")
                if isinstance(node, dict)
                for k in node
                if re.fullmatch(r"_\w+_", str(k))
            }
            if specials - {"_target_"} or (specials and kind not in _ALLOWED):
                raise CheckpointError(
                    refuse + f"{', '.join(sorted(specials))} (only model and "
                    "data may name a _target_, from the allow-list). If it is yours, type it "
                    "again: typed overrides replace saved ones"
                )
            if specials:
                check_trusted_targets(tree[kind], f"{where}: {item}", kind)
