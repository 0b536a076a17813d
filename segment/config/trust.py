"""What a file may ask to be built: the allow-list, applied to what is *loaded* (a checkpoint's
config) or *composed* (a run folder's saved overrides), deny by default.

A checkpoint may name only allow-listed classes (:func:`check_trusted_targets`); a run folder's
saved overrides are read as data and the config they compose is checked against the project's
own (:func:`saved_config`); every net rebuilt from a file is told to fetch no weights
(:func:`without_pretrained`).
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform
from hydra import compose
from hydra.utils import get_object
from lightning import LightningDataModule
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segment.config.compose import config_dir
from segment.config.names import ATTEMPT, is_infrastructure, nodes, parse_overrides, place_keys

__all__ = [
    "CheckpointError",
    "check_trusted_targets",
    "saved_config",
    "without_pretrained",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it and says what to do."""


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


def _check_composed(config: DictConfig, reference: DictConfig, where: str) -> None:
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


def _check_plain(items: list[Any], where: str) -> None:
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


_INPUTS = ("data.root", "paths.data_dir")  # places a saved override may name: where data is read

# Config groups a saved file may choose: what is trained (loggers, trainer: the command line's)
_TRAINED = "model data loss optimizer scheduler measurement protocol experiment callbacks".split()

_ABSENT = object()


def saved_config(saved: Path, typed: list[str], config: str) -> tuple[list[str], DictConfig]:
    """A continued run's own config, composed from its saved overrides (``saved``: a run folder's
    ``.hydra/overrides.yaml``, read as data) and those typed now; returns the overrides it was
    composed from and the config. Any file that cannot be used so raises :class:`CheckpointError`.

    Every ``_target_`` of the composed config is either the one the project's config (the typed
    overrides and the saved group choices alone) holds at that place, or an allow-listed class of
    its part (:func:`_check_composed`).
    """
    kept, reference = _saved_lines(saved, typed, config)
    own = _compose(config, [*kept, *typed], saved)
    _check_composed(own, reference, str(saved))
    return [*kept, *typed], own


def _saved_lines(saved: Path, typed: list[str], config: str) -> tuple[list[str], DictConfig]:
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
    _check_plain([item for item, *_ in lines], str(saved))  # the typed: the user's
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
