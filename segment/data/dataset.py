"""Image/mask pairs on disk -> augmented tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from segment.data.labels import DatasetInfo

__all__ = ["Sample", "SegmentationDataset", "pair_by_stem", "read_image", "read_mask"]

# OpenCV's own thread pool would fight torch for the same cores (in workers and in the
# main process alike); parallelism comes from DataLoader workers instead.
cv2.setNumThreads(1)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One labelled image on disk."""

    image: Path
    mask: Path


def pair_by_stem(images_dir: str | Path, masks_dir: str | Path, mask_suffix: str = "") -> list[Sample]:
    """Pair every image in ``images_dir`` with the mask of the same stem in ``masks_dir``.

    Args:
        images_dir: Folder of images.
        masks_dir: Folder of masks, named ``<image stem><mask_suffix>.<ext>``.
        mask_suffix: Text between the stem and the extension in mask names.

    Raises:
        FileNotFoundError: a folder is missing, or is empty.
        ValueError: an image has no mask or a mask has no image (names listed).
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {
        p.stem.removesuffix(mask_suffix): p
        for p in sorted(masks_dir.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.endswith(mask_suffix)
    }
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    unmatched_images = sorted(images.keys() - masks.keys())
    unmatched_masks = sorted(masks.keys() - images.keys())
    if unmatched_images or unmatched_masks:
        lines = []
        if unmatched_images:
            lines.append(f"{len(unmatched_images)} image(s) in {images_dir} without a mask: {unmatched_images[:5]}")
        if unmatched_masks:
            lines.append(f"{len(unmatched_masks)} mask(s) in {masks_dir} without an image: {unmatched_masks[:5]}")
        raise ValueError("; ".join(lines))
    return [Sample(images[stem], masks[stem]) for stem in sorted(images)]


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB, naming the file on failure."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path} (missing, unreadable or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """Decode a class-index mask to ``(H, W)`` uint8.

    PIL, not OpenCV: OpenCV expands palette PNGs to colours, PIL keeps their indices.
    """
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, SyntaxError) as err:
        raise OSError(f"cannot read mask {path}: {err}") from err


class SegmentationDataset(Dataset):
    """Labelled images decoded, label-mapped and augmented on access.

    Items are dicts with ``image``: ``(3, H, W)`` uint8 and ``mask``: ``(H, W)`` int64.
    Images stay uint8 until they reach the model, which normalises them on its device.

    Args:
        samples: Image/mask files.
        info: Label metadata; masks are decoded with :meth:`DatasetInfo.decode_mask`.
        transform: Albumentations-style callable ``(image=, mask=) -> dict``.
    """

    def __init__(self, samples: Sequence[Sample], info: DatasetInfo, transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, un-augmented ``(image, mask)`` of one sample, with shapes checked."""
        sample = self.samples[index]
        image = read_image(sample.image)
        mask = self.info.decode_mask(read_mask(sample.mask), sample.mask)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"mask {sample.mask} is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{sample.image} is {image.shape[0]}x{image.shape[1]}"
            )
        return image, mask

    def _seed_transform(self) -> None:
        """Seed albumentations from torch's generator, once per sample.

        Albumentations 2 draws from its own generator, seeded from OS entropy when built:
        runs would not repeat, and forked DataLoader workers would share one augmentation
        stream. Drawing the seed from torch ties augmentation to what ``seed_everything``
        fixes in the main process and what PyTorch seeds per worker and epoch.
        """
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(torch.randint(2**31 - 1, ()).item()))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.load(index)
        if self.transform is not None:
            self._seed_transform()
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
        }
