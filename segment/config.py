"""OmegaConf resolvers that the config tree uses; registered on import of :mod:`segment`."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from segment.precision import best_precision

__all__ = ["config_dir", "job_label", "loader_workers", "register_resolvers"]

# Overrides that say where things are or how a run is continued, not what it is.
_MAX_LABEL = 120
_UNLABELLED = ("hydra", "paths", "data.root", "data.download", "skip_completed", "ckpt_path", "overwrite",
               "trainer.enable_progress_bar", "trainer.enable_model_summary")  # fmt: skip


def job_label() -> str:
    """A job's command-line overrides as a folder name: ``model=unet_vgg,seed=1,model.optimizer.lr=0.001``.

    Top-level keys and config-group choices first, then dotted keys, each sorted. Overrides
    of where data and logs live (``data.root``, ``paths.*``, ``hydra.*``) and of how a run is
    continued (``skip_completed``, ``ckpt_path``, ``overwrite``) are left out, so a sweep
    rerun or extended into its folder finds its jobs again; ``/`` becomes ``.`` in keys
    (``data/transforms``) and ``_`` in values. Past 120 characters the label is cut and a
    hash of the whole one appended, so names stay unique and within filesystem limits.
    """
    if not HydraConfig.initialized():
        return "run"
    items = []
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        bare = key.lstrip("+~")
        if any(bare == name or bare.startswith((name + ".", name + "/")) for name in _UNLABELLED):
            continue
        items.append(f"{bare.replace('/', '.')}={value.replace('/', '_')}")
    items.sort(key=lambda item: ("." in item.split("=", 1)[0], item))
    label = ",".join(items) or "defaults"
    if len(label) > _MAX_LABEL:
        label = f"{label[: _MAX_LABEL - 9]}~{hashlib.sha1(label.encode()).hexdigest()[:8]}"
    return label


def loader_workers() -> int:
    """DataLoader workers for this machine: one per core the process may use, less one for the training
    process itself, at most 8 (1 on a 2-core machine, 8 on a 16-core GPU host)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def config_dir() -> Path:
    """The Hydra config tree: ``conf/`` beside the package in a checkout, ``segment/conf`` in an installed wheel."""
    source = Path(__file__).resolve().parents[1] / "conf"
    if (source / "train.yaml").is_file():
        return source
    installed = Path(str(resources.files("segment") / "conf"))
    if (installed / "train.yaml").is_file():
        return installed
    raise FileNotFoundError(f"no config tree at {source} or {installed}; reinstall road-segment-unet")


def register_resolvers() -> None:
    """Register ``best_precision`` (:mod:`segment.precision`), ``job_label``, ``loader_workers`` and ``not``."""
    if not OmegaConf.has_resolver("best_precision"):
        OmegaConf.register_new_resolver("best_precision", best_precision)
    if not OmegaConf.has_resolver("job_label"):
        OmegaConf.register_new_resolver("job_label", job_label)
    if not OmegaConf.has_resolver("loader_workers"):
        OmegaConf.register_new_resolver("loader_workers", loader_workers)
    if not OmegaConf.has_resolver("not"):
        OmegaConf.register_new_resolver("not", lambda value: not value)
