"""Composing the config tree: where it is (:func:`config_dir`), the top-level schema
(:class:`TrainSchema`), the resolvers its YAML uses (registered on import: whoever composes this
package's configs has imported this module), composing outside ``train.py``, printing it, and the
nearest valid name for an override Hydra could not use."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from segment.config.names import did_you_mean, parse_overrides, this_job_name

__all__ = [
    "TrainSchema",
    "compose_train",
    "config_dir",
    "images_to_steps",
    "loader_workers",
    "misspelt",
    "print_config_tree",
    "register",
]


@dataclass
class TrainSchema:
    """The top-level keys of ``conf/train.yaml`` and their types; groups are checked by
    :mod:`segment.config.schema`."""

    task_name: str = "train"
    tags: list[str] | None = None
    seed: int | None = 42
    ckpt_path: str | None = None
    skip_completed: bool = False
    overwrite: bool = False
    test_after_fit: bool = False
    optimized_metric: str | None = "val/miou"
    extras: Any = None
    data: Any = None
    model: Any = None
    callbacks: Any = None
    logger: Any = None
    trainer: Any = None
    paths: Any = None
    measurement: Any = None
    study: Any = None


def compose_train(overrides: Sequence[str], output_dir: str | None = None) -> DictConfig:
    """``conf/train.yaml`` composed outside ``train.py`` (benchmarks, the data check), with the
    outputs under ``output_dir`` (default: the working folder)."""
    paths = [f"paths.root_dir={os.getcwd()}", f"paths.output_dir={output_dir or os.getcwd()}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[*paths, *overrides])


def misspelt(overrides: Sequence[str], config: str = "train") -> list[str]:
    """A hint for each override Hydra could not use, with the nearest valid name: a group option
    (``model=unet_vg: did you mean model=unet_vgg?``), a top-level key or group (``modle: did you
    mean model?``), a nested key (``model.optimizer.lrr: did you mean model.optimizer.lr?``; the
    config is composed with the overrides' valid group choices). Never raises: it runs after Hydra
    has failed."""
    try:
        keys = parse_overrides([o for o in overrides if "=" in o and not o.startswith("-")])
        tree = config_dir()
        with initialize_config_dir(config_dir=str(tree), version_base="1.3"):
            top = {str(key) for key in compose(config)}
    except Exception:  # noqa: BLE001 -- a hint, not a second error
        return []
    found, groups = [], []
    names = sorted(top | {p.name for p in tree.iterdir() if p.is_dir()})
    for key, value in keys.items():
        name = key.lstrip("+~").split("@")[0]
        if "." in name or name.startswith("hydra"):
            continue
        if (tree / name).is_dir():
            options = sorted(p.stem for p in (tree / name).glob("*.yaml"))
            chosen = value if isinstance(value, list) else [value]
            for option in (str(v) for v in chosen if v is not None):
                if option in options:
                    groups.append(f"{name}={option}")
                    continue
                hint = did_you_mean(option, options, f"{name}=") or "no such option"
                found.append(f"{name}={option}: {hint} ({name} options: {', '.join(options)})")
        elif name not in top:
            hint = did_you_mean(name, names) or "no such key or group"
            found.append(f"{name}: {hint} (`--help` lists the groups)")
    try:
        cfg = compose_train(groups) if config == "train" else None
    except Exception:  # noqa: BLE001
        cfg = None
    for key in (k for k in keys if "." in k and not k.startswith("hydra.") and cfg is not None):
        parent, _, leaf = key.lstrip("+~").rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if isinstance(node, DictConfig) and leaf not in node:
            hint = did_you_mean(leaf, node, f"{parent}.") or f"{parent} has {list(node)}"
            found.append(f"{key}: {hint} (a new key takes a +: +{key}=...)")
    return found


def print_config_tree(cfg: DictConfig) -> None:
    """The resolved config as a tree, one branch per top-level key (``extras.print_config``), as
    in LHT."""
    tree = rich.tree.Tree("config", guide_style="dim")
    first = [
        key for key in ("data", "model", "callbacks", "logger", "trainer", "paths") if key in cfg
    ]
    for key in [*first, *(key for key in cfg if key not in first)]:
        text = (
            OmegaConf.to_yaml(cfg[key], resolve=True)
            if isinstance(cfg[key], DictConfig | ListConfig)
            else cfg[key]
        )
        tree.add(str(key)).add(rich.syntax.Syntax(str(text), "yaml"))
    rich.print(tree)


def images_to_steps(key: str, *, _root_: DictConfig) -> int:
    """The optimiser steps in which a run sees the number of training images at ``key``
    (``${images_to_steps:measurement.max_images}``): that number / (``data.batch_size`` x
    ``trainer.devices`` x ``trainer.num_nodes``). The one place images become what Lightning counts,
    so runs with other batch sizes or training sets are measured on one grid of images seen.

    Raises:
        ValueError: naming ``key`` and its value, where it is not a positive whole number of steps.
    """
    images, batch = OmegaConf.select(_root_, key), OmegaConf.select(_root_, "data.batch_size")
    devices = OmegaConf.select(_root_, "trainer.devices", default=1)
    devices = len(devices) if isinstance(devices, ListConfig | list) else devices
    machines = OmegaConf.select(_root_, "trainer.num_nodes", default=1)
    if not all(type(v) is int and v > 0 for v in (devices, machines)):
        raise ValueError(
            f"{key} counts images, so it needs the number of devices: give trainer.devices (and "
            f"trainer.num_nodes) as whole numbers (got {devices!r} and {machines!r})"
        )
    if type(images) is not int or images < 1:
        raise ValueError(f"{key}={images!r}: give a whole number of training images (>= 1)")
    per_step = batch * devices * machines
    if images % per_step:
        below = images // per_step * per_step
        nearest = " or ".join(f"{key}={n}" for n in (below, below + per_step) if n)
        raise ValueError(
            f"{key}={images} is not a whole number of optimiser steps: a step takes {per_step} "
            f"images (data.batch_size={batch} x {devices * machines} device(s)); give a multiple "
            f"of {per_step}: {nearest}"
        )
    return images // per_step


def loader_workers() -> int:
    """DataLoader workers: the cores this process may use less one (for training itself), 1 to 8."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )  # macOS
    return max(1, min(8, cores - 1))


def config_dir() -> Path:
    """The Hydra config tree: ``conf/`` beside the package in a checkout, ``segment/conf`` in an
    installed wheel."""
    source, installed = (
        Path(__file__).resolve().parents[2] / "conf",
        Path(str(resources.files("segment") / "conf")),
    )
    for folder in (source, installed):
        if (folder / "train.yaml").is_file():
            return folder
    raise FileNotFoundError(
        f"no config tree at {source} or {installed}; reinstall road-segment-unet"
    )


_CLAIMED: dict[str, str] = {}


def _own_dir(path: str) -> str:
    """A timestamped run's folder, made here (``mkdir`` is atomic): ``path``, or ``path-2``, ...
    when another run started in the same second, so two launches never share one folder."""
    if path not in _CLAIMED:
        for number in itertools.count(1):
            candidate = path if number == 1 else f"{path}-{number}"
            with contextlib.suppress(FileExistsError):
                os.makedirs(candidate)
                _CLAIMED[path] = candidate
                break
    return _CLAIMED[path]


def register() -> None:
    """Register the resolvers ``job_name``, ``loader_workers``, ``images_to_steps``, ``not``, and
    :class:`TrainSchema` (``train_schema``)."""
    for name, function in (
        ("job_name", this_job_name),
        ("loader_workers", loader_workers),
        ("images_to_steps", images_to_steps),
        ("own_dir", _own_dir),
        ("abspath", os.path.abspath),
        ("not", lambda value: not value),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
    ConfigStore.instance().store(name="train_schema", node=TrainSchema)


register()  # on import: whoever composes this package's configs has imported this module
