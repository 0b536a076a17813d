"""The embedded synthetic road-scene generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segment.data.dataset import read_mask
from segment.data.synthetic import SYNTHETIC_INFO, generate_split, render_scene

SIZE = (96, 128)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = generate_split(tmp_path / "a", "train", 6, SIZE, seed=3)
    second = generate_split(tmp_path / "b", "train", 6, SIZE, seed=3)
    for folder_a, folder_b in zip(first, second, strict=True):
        assert _files(folder_a) == _files(folder_b)
        assert len(_files(folder_a)) == 6


def test_seed_and_split_change_the_scenes(tmp_path: Path) -> None:
    base = generate_split(tmp_path / "a", "train", 2, SIZE, seed=0)[1]
    other_seed = generate_split(tmp_path / "b", "train", 2, SIZE, seed=1)[1]
    other_split = generate_split(tmp_path / "a", "val", 2, SIZE, seed=0)[1]
    assert _files(base) != _files(other_seed)
    assert _files(base) != _files(other_split)


def test_growing_the_set_keeps_existing_scenes(tmp_path: Path) -> None:
    images, _ = generate_split(tmp_path, "train", 2, SIZE, seed=0)
    before = _files(images)
    generate_split(tmp_path, "train", 4, SIZE, seed=0)
    after = _files(images)
    assert len(after) == 4
    assert {name: after[name] for name in before} == before


def test_labels_are_declared_classes_and_thin_classes_are_rare() -> None:
    counts = np.zeros(SYNTHETIC_INFO.num_classes)
    present = np.zeros(SYNTHETIC_INFO.num_classes)
    for index in range(24):
        image, mask = render_scene(np.random.default_rng([0, 0, index]), *SIZE)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        assert mask.shape == SIZE and mask.dtype == np.uint8
        assert mask.max() < SYNTHETIC_INFO.num_classes
        per_class = np.bincount(mask.ravel(), minlength=SYNTHETIC_INFO.num_classes)
        counts += per_class
        present += per_class > 0
    frequency = dict(zip(SYNTHETIC_INFO.class_names, counts / counts.sum(), strict=True))
    # Every class occurs somewhere in a couple of dozen scenes...
    assert (present > 0).all(), dict(zip(SYNTHETIC_INFO.class_names, present, strict=True))
    # ...the large ones dominate, and the thin ones are rare, as in real street scenes.
    for name in ("sky", "building", "road"):
        assert frequency[name] > 0.1, frequency
    for name in ("pole", "traffic_sign", "pedestrian"):
        assert frequency[name] < 0.02, frequency


def test_masks_on_disk_round_trip(tmp_path: Path) -> None:
    images, masks = generate_split(tmp_path, "val", 1, SIZE, seed=0)
    _, expected = render_scene(np.random.default_rng([0, 1, 0]), *SIZE)
    np.testing.assert_array_equal(read_mask(masks / "00000.png"), expected)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        generate_split(tmp_path, "dev", 1, SIZE, seed=0)
