"""Image/mask pairs on disk -> augmented tensors."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from segment.data.labels import DatasetInfo

__all__ = [
    "DatasetStatistics",
    "Sample",
    "SegmentationDataset",
    "data_fingerprint",
    "pair_files",
    "read_image",
    "read_mask",
    "seeded_order",
]

log = logging.getLogger(__name__)

# OpenCV's own thread pool would fight torch for the same cores (in workers and in the
# main process alike); parallelism comes from DataLoader workers instead.
cv2.setNumThreads(1)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Fine for images, never for masks: compression invents label values.
LOSSY_SUFFIXES = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Sample:
    """One labelled image on disk."""

    image: Path
    mask: Path


def seeded_order(samples: Sequence[Sample], seed: int) -> list[Sample]:
    """``samples`` in an order fixed by ``seed`` alone: their image paths sorted, then permuted.

    Whatever order the files were listed in, the same seed gives the same order: the first *n*
    form a seeded subset, and each such subset lies inside every larger one (a validation split
    drawn from a folder, ``data.train_size``).
    """
    ordered = sorted(samples, key=lambda s: s.image.as_posix())
    return [ordered[int(i)] for i in np.random.default_rng(seed).permutation(len(ordered))]


def data_fingerprint(dataset: str, files: dict[str, list[Sample]]) -> dict[str, Any]:
    """What ``files`` (samples by split) hold, wherever they lie: the dataset's name, the number of
    samples per split, a hash of the file names relative to their common folder, one of the
    content (``content``: every image's size, every mask's bytes: a mask rewritten under its old
    name changes it; ``images``: every image's bytes, so an image rewritten at its old size changes
    it too). A record from before ``images`` existed is checked on the keys it has.

    Hashing every image costs about a second once per run: CamVid train+val (468 pairs, 123 MB of
    images) 0.6-1.0 s with its files in the page cache, 1.1-1.7 s without (0.2-0.6 s before
    ``images``), on a 2-core AMD EPYC VM shared with a training run."""
    samples = [sample for split in files.values() for sample in split]
    paths = [path for sample in samples for path in (sample.image, sample.mask)]
    base = os.path.commonpath([str(path) for path in paths]) if paths else ""
    names = sorted(os.path.relpath(path, base) for path in paths)
    content, images = hashlib.sha1(), hashlib.sha1()
    for sample in samples:
        content.update(f"{os.path.getsize(sample.image)}:".encode())
        content.update(Path(sample.mask).read_bytes())
        images.update(hashlib.sha1(Path(sample.image).read_bytes()).digest())
    return {
        "dataset": dataset,
        **{split: len(samples) for split, samples in files.items()},
        "files": hashlib.sha1("\n".join(names).encode()).hexdigest()[:16],
        "content": content.hexdigest()[:16],
        "images": images.hexdigest()[:16],  # a new key: older records verify on the rest
    }


def pair_files(
    images_dir: str | Path,
    masks_dir: str | Path,
    *,
    image_suffix: str = "",
    mask_suffix: str = "",
    mask_stem: Callable[[str], str | None] | None = None,
    recursive: bool = False,
) -> list[Sample]:
    """Pair images with masks by name.

    An image ``<dir>/<key><image_suffix>.<ext>`` pairs with the mask
    ``<dir>/<key><mask_suffix>.<ext>`` (``<dir>`` relative to each root, so Cityscapes' per-city
    folders match). Files whose names lack the suffix are not candidates.

    Args:
        images_dir: Root folder of images.
        masks_dir: Root folder of masks.
        image_suffix: Text between the key and the extension in image names.
        mask_suffix: Text between the key and the extension in mask names.
        mask_stem: Instead of ``mask_suffix``: maps a mask's stem to its image key, or to
            None to skip that file (KITTI: ``um_road_000000`` -> ``um_000000``).
        recursive: Search subfolders too.

    Returns:
        Samples sorted by key.

    Raises:
        FileNotFoundError: a folder is missing, or holds no images.
        ValueError: images without masks or masks without images (names listed), two files
            of one sample (``s0.png`` and ``s0.jpg``), or JPEG masks.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")

    images = _keyed(images_dir, _strip(image_suffix), recursive)
    masks = _keyed(masks_dir, mask_stem or _strip(mask_suffix), recursive)
    _check_pairs(images, masks, images_dir, masks_dir, image_suffix)
    return [Sample(images[key], masks[key]) for key in sorted(images)]


def _keyed(root: Path, key_of: Callable[[str], str | None], recursive: bool) -> dict[str, Path]:
    """The image files under ``root`` by key: their folder relative to ``root`` and ``key_of``
    their stem (None: not a candidate)."""
    files = root.rglob("*") if recursive else root.iterdir()
    found: dict[str, Path] = {}
    for path in sorted(files):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        key = key_of(path.stem)
        if key is None:
            continue
        key = (path.parent.relative_to(root) / key).as_posix()
        if key in found:  # s0.png and s0.jpg: which one is the sample?
            raise ValueError(
                f"{found[key]} and {path} have the same name {key!r}: one would be dropped "
                "silently. Keep one file per sample (remove or rename the other)"
            )
        found[key] = path
    return found


def _strip(suffix: str) -> Callable[[str], str | None]:
    return lambda stem: stem.removesuffix(suffix) if stem.endswith(suffix) else None


def _check_pairs(
    images: dict[str, Path],
    masks: dict[str, Path],
    images_dir: Path,
    masks_dir: Path,
    image_suffix: str,
) -> None:
    """Refuse JPEG masks, no images, and images without masks or masks without images (naming
    the first of each)."""
    lossy = sorted(str(path) for path in masks.values() if path.suffix.lower() in LOSSY_SUFFIXES)
    if lossy:
        raise ValueError(
            f"{len(lossy)} mask(s) in {masks_dir} are JPEG files, e.g. {lossy[0]}: JPEG "
            "compression changes label values at edges into other classes. Save masks losslessly "
            "(PNG)"
        )
    if not images:
        raise FileNotFoundError(
            f"no images (*{image_suffix}{{{','.join(IMAGE_SUFFIXES)}}}) in {images_dir}"
        )
    unmatched_images = sorted(images.keys() - masks.keys())
    unmatched_masks = sorted(masks.keys() - images.keys())
    lines = []
    if unmatched_images:
        lines.append(
            f"{len(unmatched_images)} image(s) in {images_dir} without a mask: "
            f"{unmatched_images[:5]}"
        )
    if unmatched_masks:
        lines.append(
            f"{len(unmatched_masks)} mask(s) in {masks_dir} without an image: {unmatched_masks[:5]}"
        )
    if lines:
        raise ValueError("; ".join(lines))


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB as stored, naming the file on failure.

    An EXIF orientation tag is not applied: masks (PNGs) carry none, so image and mask stay aligned
    pixel for pixel (``python -m segment.data check`` flags tagged images).
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise OSError(f"cannot read image {path} (missing, unreadable or not an image)")
    if _truncated_jpeg(path):  # libjpeg decodes the half it has, grey below, and only warns
        raise OSError(
            f"{path} is a truncated JPEG (no end-of-image marker): copy it again, or remove it and "
            "its mask"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _truncated_jpeg(path: Path) -> bool:
    """A JPEG that ends before its end-of-image marker (FF D9).

    The marker is found by walking the file's segments to the end, not by searching its last
    bytes: an EXIF thumbnail, a JPEG of its own inside an APP1 segment, carries an end marker that
    a file cut after it would still show; its segment is skipped by its length here.
    """
    with open(path, "rb") as file:
        if file.read(2) != b"\xff\xd8":
            return False
        data = file.read()
    at = 0
    while marker := _MARKER.search(data, at):  # the next marker: after a scan, past its data
        at = marker.end()
        if marker[1] == b"\xd9":
            return False
        at += int.from_bytes(data[at : at + 2], "big")  # skip the segment (its length counts 2)
    return True


# FF then a segment's marker: not a stuffed 00 or a restart D0-D7 of scan data, nor a fill byte FF
# (the search moves on to the FF before the marker). One FF first, so re scans for it at C speed:
# 0.2-0.6 ms for a CamVid frame as a 71 kB JPEG, under a tenth of decoding it ("\xff+": 20 times).
_MARKER = re.compile(rb"\xff([^\x00\x01\xd0-\xd7\xff])")


def read_mask(path: Path, rgb: bool = False) -> np.ndarray:
    """Decode a mask: ``(H, W)`` class indices, or ``(H, W, 3)`` colours when ``rgb``.

    PIL, not OpenCV: OpenCV expands palette PNGs to colours, PIL keeps their indices.
    """
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB") if rgb else img)
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot read mask {path}: {err}") from err


@dataclass
class DatasetStatistics:
    """What decoding every sample of a split found.

    Attributes:
        pixels: Labelled pixels per class.
        image_pixels: Per class, the labelled pixels of the images that contain it (for
            median-frequency balancing).
        ignored: Pixels with the ignore index.
        sizes: Image sizes ``(H, W)`` and how many images have each.
        unlabelled: Masks with no labelled pixel at all.
        problems: Samples that could not be decoded, with the reason.
    """

    pixels: np.ndarray
    image_pixels: np.ndarray
    ignored: int = 0
    sizes: Counter = field(default_factory=Counter)
    unlabelled: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(
        self, sample: Sample, size: tuple[int, int], mask: np.ndarray, info: DatasetInfo
    ) -> None:
        counts = np.bincount(mask.ravel(), minlength=256)
        labelled = counts[: info.num_classes]
        self.pixels += labelled
        self.image_pixels[labelled > 0] += labelled.sum()
        self.ignored += int(counts[info.ignore_index]) if info.ignore_index < 256 else 0
        self.sizes[tuple(size)] += 1
        if not labelled.any():
            self.unlabelled.append(sample.mask)


class SegmentationDataset(Dataset):
    """Labelled images decoded, label-mapped and augmented on access.

    Items are dicts with ``image``: ``(3, H, W)`` uint8 and ``mask``: ``(H, W)`` int64. Images stay
    uint8 until they reach the model, which normalises them on its device.

    Args:
        samples: Image/mask files.
        info: Label metadata; masks are decoded with :meth:`DatasetInfo.decode_mask`.
        transform: Albumentations-style callable ``(image=, mask=) -> dict``.
        load_size: ``(height, width)`` every sample is resized to right after decoding
            (images with area interpolation, masks nearest); None keeps the native size.
        repeats: The dataset lists its samples this many times (an epoch of a tiny dataset).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        info: DatasetInfo,
        transform: Callable | None = None,
        load_size: Sequence[int] | None = None,
        repeats: int = 1,
    ) -> None:
        self.samples = list(samples)
        self.repeats = repeats
        self.info = info
        self.transform = transform
        self.load_size = tuple(load_size) if load_size is not None else None
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.statistics: DatasetStatistics | None = None  # filled by preload()

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read one sample from disk: checked, label-mapped and resized to ``load_size``."""
        sample = self.samples[index % len(self.samples)]
        image = read_image(sample.image)
        mask = self.info.decode_mask(
            read_mask(sample.mask, rgb=self.info.mask_colors is not None), sample.mask
        )
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"mask {sample.mask} is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{sample.image} is {image.shape[0]}x{image.shape[1]}"
            )
        if self.load_size is not None and image.shape[:2] != self.load_size:
            size = (self.load_size[1], self.load_size[0])
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        return image, mask

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, un-augmented ``(image, mask)``, from the RAM cache when it is filled."""
        if self._cache is not None:
            image, mask = self._cache[index % len(self.samples)]
            return image.copy(), mask.copy()  # augmentations must never alter the cache
        return self.decode(index)

    def scan(
        self, cache: bool = False, threads: int | None = None, progress: str | None = None
    ) -> DatasetStatistics:
        """Decode every sample once: image sizes, label counts, masks without a labelled pixel,
        problems.

        Args:
            cache: Keep the decoded samples in RAM for all later epochs. DataLoader workers
                forked afterwards share these pages instead of decoding again.
            threads: Decoding threads (OpenCV and PIL release the GIL); default: all cores.
            progress: Show a progress bar with this label.
        """
        stats = DatasetStatistics(
            np.zeros(self.info.num_classes, np.int64), np.zeros(self.info.num_classes, np.int64)
        )
        decoded: list = [None] * len(self.samples)

        def work(index: int) -> tuple[np.ndarray, np.ndarray] | str:
            try:
                return self.decode(index)
            except (OSError, ValueError) as err:
                return str(err)

        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
            results = pool.map(work, range(len(self.samples)))
            for index, result in enumerate(
                tqdm(results, progress, len(self.samples), disable=progress is None)
            ):
                if isinstance(result, str):
                    stats.problems.append(result)
                    continue
                image, mask = result
                stats.add(self.samples[index], image.shape[:2], mask, self.info)
                if cache:
                    decoded[index] = result
        if cache and not stats.problems:
            self._cache = decoded
        return stats

    def preload(self, cache: bool, threads: int | None = None) -> DatasetStatistics:
        """:meth:`scan` every sample so bad files fail now, not mid-training; warn about masks
        without labels.

        Raises:
            ValueError: listing every sample that failed, with its reason.
        """
        stats = self.scan(cache, threads)
        if stats.problems:
            shown = "\n  ".join(sorted(stats.problems)[:10])
            more = (
                f"\n  ... and {len(stats.problems) - 10} more" if len(stats.problems) > 10 else ""
            )
            raise ValueError(
                f"{len(stats.problems)} of {len(self.samples)} {self.info.name} samples are "
                f"unusable:\n  {shown}{more}"
            )
        if stats.unlabelled:
            log.warning(
                "%d %s mask(s) have no labelled pixel (all %d, ignored): they add nothing to "
                "training: %s",
                len(stats.unlabelled),
                self.info.name,
                self.info.ignore_index,
                ", ".join(str(p) for p in stats.unlabelled[:10])
                + (" ..." if len(stats.unlabelled) > 10 else ""),
            )
        self.statistics = stats
        return stats

    @property
    def cache_bytes(self) -> int:
        """RAM held by the decoded-sample cache."""
        return sum(image.nbytes + mask.nbytes for image, mask in self._cache or [])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """One item by index, or by ``(index, augmentation seed)`` (what
        :class:`~segment.data.sampling.EpochSampler` yields: albumentations 2 would otherwise draw
        from generators seeded by OS entropy, differently in every worker process and in every
        resumed run)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        if self.transform is not None:
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(
                    int(torch.randint(2**31 - 1, ()).item()) if seed is None else seed
                )
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
        }
