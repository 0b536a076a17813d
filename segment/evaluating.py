"""One ``evaluate.py`` command from a composed config: the body of ``evaluate.py``.

The checkpoint is found and rebuilt here (a checkpoint is data: :mod:`segment.checkpoints`), the
run's own data config taken from it (its ``_target_``s allow-listed), and the command writes only
into a folder of its own. What is computed and written is :mod:`segment.evaluation`'s, handed the
module and the data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segment.checkpoints import find_checkpoint, load_module, read_checkpoint, run_of
from segment.config.names import parse_overrides
from segment.config.trust import check_trusted_targets
from segment.data.labels import default_palette
from segment.evaluation import scoring
from segment.models import SegmentationModule

__all__ = ["evaluate", "export", "load_checkpoint", "predict", "run", "run_data_config"]

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Dispatch on ``cfg.mode``."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ValueError(
            "ckpt_path is required: the checkpoint to use, e.g. segment-evaluate "
            "ckpt_path=<run folder>/checkpoints/last.ckpt (or the run folder: its newest)"
        )
    modes = {"evaluate": evaluate, "predict": predict, "export": export}
    if cfg.mode not in modes:
        raise ValueError(f"mode={cfg.mode!r}; expected one of {sorted(modes)}")
    return modes[cfg.mode](cfg)


def evaluate(cfg: DictConfig) -> dict:
    """Score ``cfg.ckpt_path`` on ``cfg.split`` of the run's own data (or ``data=``'s)."""
    output_dir = own_folder(Path(cfg.paths.output_dir), scoring.EVALUATION_FILES)
    checkpoint = find_checkpoint(cfg.ckpt_path)
    module = load_module(checkpoint, scoring.device_of(cfg.device)).eval()
    datamodule = instantiate(run_data_config(cfg, checkpoint))
    scoring.check_classes(module, datamodule.info, cfg.ckpt_path)
    if _data_overrides()[0]:  # never download or render where a checkpoint's data config says
        datamodule.prepare_data()
    return scoring.score(cfg, module, datamodule, checkpoint, output_dir)


def predict(cfg: DictConfig) -> dict:
    """Masks for the images at ``cfg.input``, in a folder of their own."""
    inputs, output, names = scoring.prediction_plan(cfg)
    output = own_folder(output, names)
    checkpoint = find_checkpoint(cfg.ckpt_path)
    module = load_module(checkpoint, scoring.device_of(cfg.device)).eval()
    palette = _palette(module, cfg, checkpoint)
    return scoring.predict_images(cfg, module, inputs, output, palette)


def export(cfg: DictConfig) -> dict:
    """The checkpoint's module as ONNX, in a folder of its own."""
    scoring.check_export(cfg)
    output_dir = own_folder(Path(cfg.paths.output_dir), scoring.EXPORT_FILES)
    return scoring.export_onnx(load_checkpoint(cfg.ckpt_path).float(), output_dir, cfg.opset)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> SegmentationModule:
    """A trained module from a ``train.py`` checkpoint or a run folder's newest, in eval mode
    (errors name it)."""
    return load_module(find_checkpoint(path), device).eval()


def run_data_config(cfg: DictConfig, checkpoint: Path) -> DictConfig:
    """The data config to evaluate on: the run's own, saved in ``checkpoint``, unless ``data=``
    names another.

    ``data.<key>=...`` overrides (``data.root``, ``data.batch_size``) apply on top of the saved
    config, so a run is evaluated on its own data without retyping it; the saved config's
    ``_target_``s are checked against the data allow-list first.
    """
    explicit, keys = _data_overrides()
    if explicit:
        return cfg.data
    saved = read_checkpoint(checkpoint, "ckpt_path", mmap=True).get("config", {}).get("data")
    if saved is None:
        log.warning(
            "%s holds no data config (written before configs were saved): evaluating on data=%s; "
            "pass data=<the training data config> if that is not it",
            checkpoint,
            cfg.data.get("_target_"),
        )
        return cfg.data
    check_trusted_targets(saved, f"{checkpoint}: config.data", kind="data")
    data = OmegaConf.create(saved)  # read_checkpoint refused any interpolation in it
    for key in keys:
        OmegaConf.update(
            data, key[len("data.") :], OmegaConf.select(cfg, key), merge=False, force_add=True
        )
    log.info(
        "data config from the checkpoint%s",
        f", with {', '.join(keys)} from the command line" if keys else "",
    )
    return data


def _data_overrides() -> tuple[bool, list[str]]:
    """Whether the command line chose a data config (``data=camvid``), and which ``data.*`` keys
    it set."""
    if not HydraConfig.initialized():
        return True, []  # composed in code: the caller's cfg.data is meant
    keys = list(parse_overrides(HydraConfig.get().overrides.task))
    return any(k == "data" or k.startswith("data/") for k in keys), [
        k for k in keys if k.startswith("data.")
    ]


def own_folder(folder: Path, names: Iterable[str]) -> Path:
    """``folder``, checked to be this command's to write ``names`` into: not a training run's
    folder, and none of ``names`` already there (an evaluation never writes over a file it did
    not create)."""
    run = run_of(folder)
    if run is not None:
        inside = run.resolve() != folder.resolve()
        raise ValueError(
            f"{folder} is {'inside ' if inside else ''}a training run's folder"
            f"{f' ({run})' if inside else ''}; evaluate.py writes only into a folder of its own "
            "(logs/evaluate/runs/<time> by default; or hydra.run.dir=<new folder>)"
        )
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        raise FileExistsError(
            f"{folder / taken[0]} exists: evaluate.py never writes over a file it did not create "
            "just now; choose a new folder (hydra.run.dir=<folder> or output=<folder>)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _palette(module: SegmentationModule, cfg: DictConfig, checkpoint: Path) -> tuple:
    """The data config's palette when it matches the checkpoint's classes, else generated
    colours."""
    try:
        info = instantiate(run_data_config(cfg, checkpoint)).info
        if list(info.class_names) == module.class_names:
            return info.palette
    except Exception:  # any data config problem only costs the colours here
        pass
    return default_palette(len(module.class_names))
