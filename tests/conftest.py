"""Shared fixtures: configs composed like train.py does, shrunk to seconds on a CPU."""

from __future__ import annotations

import os

# Tests never touch the network. huggingface_hub reads this once, on import, so it is set
# before anything imports it: a download attempt then fails at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
# pytest-xdist (pyproject's addopts) runs one worker per core: each worker, and every script it
# starts, uses one intra-op thread, or two workers of two threads would oversubscribe two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import segment.config.compose  # noqa: F401  (registers config resolvers)
from segment.files import cache_root
from tests.helpers import CONF_DIR, TINY_OVERRIDES, TINY_SMP, TINY_SYNTHETIC


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist (3.8) groups a file's tests on one worker (`--dist loadgroup`, pyproject's
    # addopts) by a suffix it writes into their ids; from pytest 9.2 the id no longer takes it, the
    # groups scatter and each worker builds a file's module fixture again (minutes): refused
    if config.getvalue("dist") == "loadgroup" and pytest.version_tuple[:2] >= (9, 2):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} loses pytest-xdist's test groups (--dist loadgroup): "
            "install the pytest that pyproject's dev extra names (pip install 'pytest<9.2'), or "
            "run the tests in one process (-n 0)"
        )
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The GPU command's dry run (the longest test, minutes) early: xdist hands out its groups
    first, then single tests in this order, and the longest started last would finish alone, long
    after the others."""
    items.sort(key=lambda item: item.path.name != "test_device.py")


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests (and the scripts they start) measure and cache the CPU precision in a folder of their
    own, never in the user's ~/.cache/segment; the fetched encoder weights are linked in, read-only
    by intent."""
    real, cache = cache_root(), tmp_path_factory.mktemp("cache")
    if (real / "weights").is_dir():
        (cache / "weights").symlink_to(real / "weights")
    os.environ["SEGMENT_CACHE_DIR"] = str(cache)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-scene cache for the whole session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/train.yaml`` with tiny settings and outputs under ``tmp_path``."""

    def _make(*overrides: str, tiny: bool = True) -> DictConfig:
        paths = [
            f"paths.root_dir={tmp_path}",
            f"paths.data_dir={data_dir}",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
        synthetic = not any(o.startswith("data=") and o != "data=synthetic" for o in overrides)
        smp = not {"model=unet_lab", "protocol=lab_small"} & set(overrides)
        shrink = (
            [*TINY_OVERRIDES, *(TINY_SYNTHETIC if synthetic else []), *(TINY_SMP if smp else [])]
            if tiny
            else []
        )
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[*shrink, *overrides, *paths])

    return _make


@pytest.fixture
def hydra_train(tmp_path: Path, data_dir: Path) -> Callable[..., dict]:
    """``train.py <overrides>`` in this process: composed by Hydra with ``HydraConfig`` set as a run
    has it (its overrides, choices and folder), so the run folder's Hydra paths (saved overrides,
    ``.hydra/``) run here too. Tiny settings; the run folder is ``tmp_path/run`` unless
    ``hydra.run.dir`` is given."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from segment.training import train

    def _train(*overrides: str) -> dict:
        synthetic = not any(o.startswith("data=") and o != "data=synthetic" for o in overrides)
        # a folder-only resume (ckpt_path=last) takes the run's saved overrides: nothing added
        resume = "ckpt_path=last" in overrides
        tiny = (
            []
            if resume
            else [
                *TINY_OVERRIDES,
                *(TINY_SYNTHETIC if synthetic else []),
                f"paths.data_dir={data_dir}",
                f"paths.root_dir={tmp_path}",
            ]
        )
        given = [o for o in overrides if o.startswith("hydra.run.dir=")]
        folder = given[-1].split("=", 1)[1] if given else str(tmp_path / "run")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[*tiny, *(o for o in overrides if o not in given)],
                return_hydra_config=True,
            )
            with open_dict(cfg):
                cfg.hydra.run.dir = cfg.hydra.runtime.output_dir = folder
                cfg.hydra.job.config_name = "train"
                cfg.hydra.mode = RunMode.RUN  # what `python train.py` (no -m) runs under
            HydraConfig.instance().set_config(cfg)
            task = cfg.copy()
            with open_dict(task):
                del task["hydra"]
            try:
                return train(task)
            finally:
                HydraConfig.instance().cfg = None

    return _train
