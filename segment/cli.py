"""The command-line entry points: ``segment-train`` and ``segment-evaluate`` (in a checkout also
``python train.py`` and ``python evaluate.py``), the same from any working folder.

Torch and Lightning load only once Hydra has composed a config, so ``--help`` and a misspelt key
or option answer at once, with the nearest valid name. An error that refuses a run (a config, a
folder, a file or data that cannot be used) prints its message alone and exits 1; a refusal inside
a sweep is recorded in its job's ``run.json`` and the sweep goes on. ``HYDRA_FULL_ERROR=1`` shows
the traceback of any error.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segment.config.compose import config_dir, misspelt

__all__ = ["evaluate", "train"]


def _train(cfg: DictConfig) -> float | None:
    from segment.training import train  # torch and Lightning: after Hydra has composed

    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))  # what a sweeper (Optuna) optimises


def _evaluate(cfg: DictConfig) -> None:
    from segment.evaluating import run  # torch and Lightning: after Hydra has composed

    run(cfg)


def _refusing(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """``task``, with the message alone for an error a user fixes, in a single run."""

    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except _refusals() as error:
            single = HydraConfig.initialized() and HydraConfig.get().mode.name == "RUN"
            if not single or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {error}\n(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            with contextlib.suppress(OSError):  # the folder Hydra made for it, if it holds nothing
                os.rmdir(HydraConfig.get().runtime.output_dir)
            sys.exit(1)

    return wrapped


def _refusals() -> tuple[type[BaseException], ...]:
    """The errors whose message is the whole answer (imported only once one is raised)."""
    from segment.run.decision import REFUSALS

    return REFUSALS


def _main(name: str, task: Callable[[DictConfig], Any]) -> None:
    main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=name)
    try:
        main(_refusing(task))()
    except SystemExit as exit:  # Hydra printed its error: name a misspelt key's nearest one
        for hint in misspelt(sys.argv[1:], name) if exit.code else ():
            print(hint, file=sys.stderr)
        raise


def train() -> None:
    """``segment-train [group=option ...] [key=value ...]``: one run, or a sweep with ``-m``."""
    _main("train", _train)


def evaluate() -> None:
    """``segment-evaluate ckpt_path=... [mode=...]``: score, predict with or export a
    checkpoint."""
    _main("evaluate", _evaluate)
