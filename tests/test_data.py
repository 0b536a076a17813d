"""Folder pairing, decoding, label checks and the DataModule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from segment.data import DatasetInfo, SegmentationDataset, colorize, pair_files
from segment.data.synthetic import SYNTHETIC_INFO
from tests.helpers import REPO

INFO = DatasetInfo(
    name="toy", class_names=("a", "b", "c"), palette=((255, 0, 0), (0, 255, 0), (0, 0, 255))
)


def _write_pair(
    root: Path, stem: str, mask: np.ndarray, image_shape: tuple[int, int] | None = None
) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    height, width = image_shape or mask.shape
    cv2.imwrite(str(root / "images" / f"{stem}.png"), np.full((height, width, 3), 100, np.uint8))
    cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)


def test_pairs_by_stem_in_name_order(tmp_path: Path) -> None:
    for stem in ("b", "a"):
        _write_pair(tmp_path, stem, np.zeros((4, 4), np.uint8))
    samples = pair_files(tmp_path / "images", tmp_path / "masks")
    assert [s.image.name for s in samples] == ["a.png", "b.png"]
    assert [s.mask.name for s in samples] == ["a.png", "b.png"]


def test_items_are_uint8_images_and_int64_masks(tmp_path: Path) -> None:
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    _write_pair(tmp_path, "a", mask)
    item = SegmentationDataset(pair_files(tmp_path / "images", tmp_path / "masks"), INFO)[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 2, 2)
    assert item["mask"].dtype == torch.int64
    assert item["mask"].tolist() == [[0, 1], [2, 255]]


def test_augmentations_follow_torch_seed(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", np.random.default_rng(0).integers(0, 3, (32, 32), dtype=np.uint8))
    transform = A.Compose([A.RandomCrop(16, 16)])
    dataset = SegmentationDataset(
        pair_files(tmp_path / "images", tmp_path / "masks"), INFO, transform
    )

    def crops(seed: int) -> list[list]:
        torch.manual_seed(seed)
        return [dataset[0]["mask"].tolist() for _ in range(4)]

    assert crops(1) == crops(1)
    assert crops(1) != crops(2)


def test_colorize_paints_classes_and_ignore() -> None:
    rgb = colorize(np.array([[0, 2, 255]]), INFO.palette)
    assert rgb.tolist() == [[[255, 0, 0], [0, 0, 255], [0, 0, 0]]]


def test_dataset_info_rejects_inconsistent_metadata() -> None:
    with pytest.raises(ValueError, match="2 class names but 1 palette"):
        DatasetInfo("bad", ("a", "b"), ((0, 0, 0),))
    with pytest.raises(ValueError, match="ignore_index 1 collides with class 'b'"):
        DatasetInfo("bad", ("a", "b"), ((0, 0, 0), (1, 1, 1)), ignore_index=1)


def test_the_size_rule_is_the_nets_not_the_datamodules(make_cfg) -> None:
    """The datamodule takes any positive size (the lab's net divides by 4, smp's by 32: the module
    checks it at fit start, tests/test_bad_inputs.py); a size that is not two numbers is refused
    here."""
    assert instantiate(make_cfg("data.image_size=[100,96]").data).image_size == (100, 96)
    cfg = make_cfg("data.image_size=[100,96,3]")
    with pytest.raises(
        Exception, match=r"data.image_size=\[100, 96, 3\]: expected \[height, width\]"
    ):
        instantiate(cfg.data, transforms={"train": None, "val": None})


def test_synthetic_datamodule_serves_the_configured_split_sizes(make_cfg) -> None:
    dm = instantiate(make_cfg("data.num_train=6", "data.num_val=3").data)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (6, 3)
    assert dm.info is SYNTHETIC_INFO
    batch = next(iter(dm.val_dataloader()))
    assert batch["mask"].max() < SYNTHETIC_INFO.num_classes


def test_repeats_and_overfit_subset(make_cfg) -> None:
    dm = instantiate(make_cfg("data.train_repeats=3", "data.overfit_samples=2").data)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) == 6 and len(dm.val_dataset) == 2
    assert dm.val_dataset.samples == dm.train_dataset.samples[:2]  # validates on what it trains on


def test_an_image_rewritten_at_its_old_size_refuses_the_continuation(
    make_cfg, tmp_path: Path
) -> None:
    """The fingerprint hashed every image's size, not its bytes: other pixels at the same size
    passed, and ``ckpt_path=last`` continued (``skip_completed`` skipped) on other images. A record
    from before the ``images`` key still verifies on the keys it has."""
    from segment.run.decision import RunFolderError
    from segment.run.folder import check_same_data
    from tests.layouts import write_camvid

    overrides = write_camvid(tmp_path / "camvid")
    image = tmp_path / "camvid" / "train" / "0001TP_000001.png"
    uncompressed = [cv2.IMWRITE_PNG_COMPRESSION, 0]  # the file's size is the pixels' count
    cv2.imwrite(str(image), cv2.imread(str(image)), uncompressed)
    datamodule = instantiate(make_cfg(*overrides).data)
    recorded, size = datamodule.fingerprint(), image.stat().st_size
    older = {key: value for key, value in recorded.items() if key != "images"}
    check_same_data(tmp_path, older, datamodule.fingerprint(), skip=False)
    cv2.imwrite(str(image), 255 - cv2.imread(str(image)), uncompressed)
    assert image.stat().st_size == size
    with pytest.raises(RunFolderError, match="trained on other data than data.root now holds"):
        check_same_data(tmp_path, recorded, datamodule.fingerprint(), skip=False)


# `python -m segment.data` (its usage line), recording every name lookup and connection (each
# refused) from before the first import: train.py and evaluate.py, like it, import segment first.
_CONNECTIONS = """
import runpy, socket, sys
asked = []
def refuse(*args, **kwargs):
    asked.append(repr(args))
    raise OSError("no network here")
socket.getaddrinfo = socket.socket.connect = socket.socket.connect_ex = refuse
sys.argv = ["segment.data"]
try:
    runpy.run_module("segment.data", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
assert "albumentations" in sys.modules
print(asked)
"""


def test_starting_a_command_contacts_no_server() -> None:
    """albumentations asked PyPI for a newer version each time it was imported."""
    env = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run(
        [sys.executable, "-c", _CONNECTIONS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
