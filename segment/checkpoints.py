"""Checkpoint files: written atomically in their own folder, read as data (errors name the file),
found for a resume, carrying the run's resolved config and data fingerprint; a module's weights
taken from one (``model.init_from``), or a trained module rebuilt from one alone. The science
packages read no checkpoint: the driver hands them what a checkpoint holds.

Lightning's writer (``TorchCheckpointIO``) writes a temporary file in ``$TMPDIR`` and moves it into
place: on another filesystem (a cluster's scratch vs. a node-local /tmp) that is a truncating copy,
and a kill during it leaves a 0-byte ``last.ckpt``. :class:`AtomicCheckpointIO` writes beside the
target and renames instead.
"""

from __future__ import annotations

import errno
import inspect
import logging
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from segment.config.names import nodes
from segment.config.trust import CheckpointError, check_trusted_targets, without_pretrained
from segment.files import atomic_open, sha256
from segment.models import SegmentationModule
from segment.models.weights import WeightsRecord
from segment.run.layout import RunLayout
from segment.run.record import FILE as RECORD
from segment.run.record import RecordError, RunRecord, read_record

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "find_checkpoint",
    "init_weights",
    "load_module",
    "newest_checkpoint",
    "read_checkpoint",
    "run_of",
    "verify_checksum",
]

log = logging.getLogger(__name__)


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


def run_of(path: Path) -> Path | None:
    """The run folder a checkpoint (or a folder) belongs to: the nearest folder with a record, the
    folder itself first."""
    return next((p for p in (path, *path.resolve().parents) if (p / RECORD).is_file()), None)


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


def init_weights(module: SegmentationModule, path: str | Path) -> None:
    """Copy net and normalisation weights into ``module`` from a checkpoint of the same net and
    classes (``model.init_from``); its running states are left as they start."""
    state = read_checkpoint(path, "model.init_from", require=("state_dict",))["state_dict"]
    running = module.running_state()
    ours = {k: v for k, v in module.state_dict().items() if k not in running}
    mismatched = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    missing = [k for k in ours if k not in state]
    if mismatched or missing:
        raise ValueError(
            f"model.init_from: {path} does not fit this model: {len(missing)} missing and "
            f"{len(mismatched)} differently shaped tensors (first: "
            f"{(missing + mismatched)[0]}); was it trained with another net or number of "
            "classes?"
        )
    module.load_state_dict({**running, **{k: state[k] for k in ours}})
    module.hparams["init_from"] = str(path)  # recorded with the run's hyperparameters
    log.info("weights initialised from %s (training starts at epoch 0)", path)


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """Rebuild a trained module from its checkpoint alone, without downloading anything.

    Its net, loss, optimiser and scheduler configs are rebuilt only from allow-listed targets
    (:func:`~segment.config.trust.check_trusted_targets`), every pretrained switch at any depth is
    off (:func:`~segment.config.trust.without_pretrained`), and its encoder weights come from its
    own state dict (``load_from_checkpoint`` would fetch pretrained weights the checkpoint already
    holds).
    """
    checkpoint = read_checkpoint(path, "ckpt_path", require=("hyper_parameters", "state_dict"))
    hparams = dict(checkpoint["hyper_parameters"])
    # the checkpoint's own weights replace any pretrained ones: build nothing else, and fetch
    # nothing, whatever sits where (a net in a ModuleDict, in the loss, a key left to smp's default)
    for key in ("net", "loss", "optimizer", "scheduler"):
        check_trusted_targets(hparams.get(key), f"{path}: hyper_parameters.{key}")
        if key in hparams:
            hparams[key] = without_pretrained(hparams[key])
    hparams |= {"init_from": None, "compile": False}  # its weights: the checkpoint's own
    scheduler = hparams.get("scheduler")
    if scheduler and "scheduler" not in scheduler:  # written before schedulers were Lightning dicts
        hparams["scheduler"] = {"scheduler": scheduler, "interval": "epoch"}
    known = inspect.signature(SegmentationModule.__init__).parameters
    module = SegmentationModule(**{key: value for key, value in hparams.items() if key in known})
    module.load_state_dict({**module.running_state(), **checkpoint["state_dict"]})
    # what the run started from (older checkpoints kept it among the hyperparameters)
    used = checkpoint.get("encoder_weights_used") or hparams.get("encoder_weights_used")
    module.weights_record = WeightsRecord(**used) if used else module.weights_record
    return module.to(map_location)
