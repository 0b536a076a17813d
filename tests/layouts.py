"""Tiny datasets in the exact on-disk layout of each supported format.

Each ``write_<format>(root)`` builds a few 64x96 samples with known label values under ``root`` and
returns the Hydra overrides that select it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

H, W = 64, 96


def write_image(path: Path, seed: int, shape: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A class-index mask, or an RGB colour mask when ``mask`` is ``(H, W, 3)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask[..., ::-1] if mask.ndim == 3 else mask)


def stripes(values: list[int], shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """A mask whose columns cycle through ``values``: every value present, in known shares."""
    columns = np.resize(np.asarray(values, np.uint8), shape[1])
    return np.broadcast_to(columns, shape).copy()


def write_camvid(root: Path) -> list[str]:
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(count):
            write_image(root / split / f"0001TP_{i:06d}.png", seed=i)
            write_mask(root / f"{split}annot" / f"0001TP_{i:06d}.png", stripes([0, 3, 8, 10, 11]))
    return ["data=camvid", f"data.root={root}"]


# Cityscapes label ids with their train ids: road 7 -> 0, car 26 -> 13, ego vehicle 1 -> ignore.
CITYSCAPES_IDS = [7, 26, 1, 23]


def write_cityscapes(root: Path) -> list[str]:
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for c, city in enumerate(cities):
            stem = f"{city}_000000_0000{c}9"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=c)
            write_mask(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                stripes(CITYSCAPES_IDS),
            )
            # the other ground-truth files of the real layout must be ignored
            write_mask(
                root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", stripes([0])
            )
            write_mask(
                root / "gtFine" / split / city / f"{stem}_gtFine_color.png",
                np.zeros((H, W, 3), np.uint8),
            )
    return ["data=cityscapes", f"data.root={root}"]


def write_gta5(root: Path, count: int = 6) -> list[str]:
    for i in range(count):
        write_image(root / "images" / f"{i + 1:05d}.png", seed=i)
        write_mask(root / "labels" / f"{i + 1:05d}.png", stripes(CITYSCAPES_IDS))
    return ["data=gta5", f"data.root={root}"]


KITTI_COLORS = {"road": (255, 0, 255), "not_road": (255, 0, 0), "void": (0, 0, 0)}


def write_kitti_road(root: Path, count: int = 5) -> list[str]:
    mask = np.zeros((H, W, 3), np.uint8)
    mask[:, : W // 3] = KITTI_COLORS["not_road"]
    mask[:, W // 3 : 2 * W // 3] = KITTI_COLORS["road"]
    for i in range(count):
        prefix = ("um", "umm", "uu")[i % 3]
        write_image(root / "training" / "image_2" / f"{prefix}_{i:06d}.png", seed=i)
        write_mask(root / "training" / "gt_image_2" / f"{prefix}_road_{i:06d}.png", mask)
        write_mask(
            root / "training" / "gt_image_2" / f"{prefix}_lane_{i:06d}.png", mask
        )  # not used
    return ["data=kitti_road", f"data.root={root}"]


def write_bdd100k(root: Path) -> list[str]:
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            write_image(root / "images" / "10k" / split / f"7d2f7975-{i:08d}.jpg", seed=i)
            write_mask(
                root / "labels" / "sem_seg" / "masks" / split / f"7d2f7975-{i:08d}.png",
                stripes([0, 13, 18, 255]),
            )
    return ["data=bdd100k", f"data.root={root}"]


def write_folder(root: Path) -> list[str]:
    """The lab layout: Images/Train + Masks/Train, Images/Test + Masks/Test, 3 classes."""
    for split, count in (("Train", 3), ("Test", 2)):
        for i in range(count):
            write_image(root / "Images" / split / f"frame{i}.png", seed=i)
            write_mask(root / "Masks" / split / f"frame{i}.png", stripes([0, 1, 2]))
    return [
        "data=folder",
        f"data.images_dir={root / 'Images' / 'Train'}",
        f"data.masks_dir={root / 'Masks' / 'Train'}",
        f"data.val_images_dir={root / 'Images' / 'Test'}",
        f"data.val_masks_dir={root / 'Masks' / 'Test'}",
        "data.class_names=[background,road,car]",
    ]


WRITERS = {
    "camvid": write_camvid,
    "cityscapes": write_cityscapes,
    "gta5": write_gta5,
    "kitti_road": write_kitti_road,
    "bdd100k": write_bdd100k,
    "folder": write_folder,
}
