"""LightningDataModules: one base for batching and augmentation, one subclass per dataset format."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from segment.data.dataset import Sample, SegmentationDataset, pair_by_stem
from segment.data.labels import DatasetInfo
from segment.data.synthetic import GENERATOR_VERSION, SYNTHETIC_INFO, generate_split

__all__ = ["SegmentationDataModule", "SyntheticDataModule"]

log = logging.getLogger(__name__)


class SegmentationDataModule(LightningDataModule):
    """Batches and augments the train/val samples that a subclass lists.

    Subclasses set :attr:`info` and implement :meth:`samples`; they may override
    :meth:`prepare_data` to download or generate files.

    Args:
        image_size: ``(height, width)`` the model sees; each a multiple of 32 (the U-Net
            downsamples five times).
        transforms: ``{"train": ..., "val": ...}`` albumentations pipelines (built from the
            ``data/transforms`` config group).
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Page-locked batches for fast host-to-GPU copies; ``None`` = only when
            CUDA is available.
        persistent_workers: Keep workers alive between epochs (ignored without workers).
        train_repeats: Pass over the training samples this many times per epoch (each with
            fresh augmentation): fewer validation passes on small datasets.
        overfit_samples: Debugging: train *and* validate on the first N training samples
            (validation without augmentation), to check that the model can memorise them.
    """

    info: DatasetInfo

    def __init__(
        self,
        image_size: Sequence[int],
        transforms: dict[str, Callable],
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        train_repeats: int = 1,
        overfit_samples: int | None = None,
    ) -> None:
        super().__init__()
        if len(image_size) != 2 or any(int(s) <= 0 or int(s) % 32 for s in image_size):
            padded = [max(32, -(-int(s) // 32) * 32) for s in image_size]
            raise ValueError(
                f"data.image_size={list(image_size)}: height and width must be positive multiples of 32 "
                f"(the U-Net halves the resolution five times); try data.image_size={padded}"
            )
        missing = {"train", "val"} - set(transforms)
        if missing:
            raise ValueError(f"data.transforms lacks {sorted(missing)}; it needs a 'train' and a 'val' pipeline")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.transforms = transforms
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        if train_repeats < 1 or (overfit_samples is not None and overfit_samples < 1):
            raise ValueError(
                f"data.train_repeats={train_repeats} and data.overfit_samples={overfit_samples} must be >= 1"
            )
        self.train_repeats = train_repeats
        self.overfit_samples = overfit_samples
        self.train_dataset: SegmentationDataset | None = None
        self.val_dataset: SegmentationDataset | None = None

    def samples(self, split: str) -> list[Sample]:
        """The labelled files of ``split`` (``"train"`` or ``"val"``)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = self._dataset("train")
            self.val_dataset = self._dataset("val")
            log.info(
                "%s: %d train / %d val samples, %d classes, model input %dx%d",
                self.info.name,
                len(self.train_dataset),
                len(self.val_dataset),
                self.info.num_classes,
                *self.image_size,
            )

    def _dataset(self, split: str) -> SegmentationDataset:
        if self.overfit_samples:
            samples = self.samples("train")[: self.overfit_samples]
        else:
            samples = self.samples(split)
        if not samples:
            raise ValueError(f"{self.info.name}: the {split} split is empty")
        if split == "train":
            samples = samples * self.train_repeats
        return SegmentationDataset(samples, self.info, self.transforms["train" if split == "train" else "val"])

    def train_dataloader(self) -> DataLoader:
        # drop_last: a final batch of one image would make BatchNorm's statistics degenerate.
        return self._loader(self.train_dataset, shuffle=True, drop_last=len(self.train_dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False, drop_last=False)

    def _loader(self, dataset: SegmentationDataset | None, shuffle: bool, drop_last: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )


class SyntheticDataModule(SegmentationDataModule):
    """The embedded procedural road scenes (:mod:`segment.data.synthetic`).

    Scenes are rendered once into ``root/<version, seed, size>/`` and then read like any
    folder dataset; changing ``num_train`` extends or reuses the cache.

    Args:
        root: Cache folder for generated PNGs.
        num_train: Training scenes.
        num_val: Validation scenes.
        seed: Generator seed (which scenes), independent of the training seed.
        **kwargs: :class:`SegmentationDataModule` arguments.
    """

    info = SYNTHETIC_INFO

    def __init__(self, root: str | Path, num_train: int = 256, num_val: int = 64, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_train < 1 or num_val < 1:
            raise ValueError(f"data.num_train={num_train} and data.num_val={num_val} must both be at least 1")
        self.counts = {"train": num_train, "val": num_val}
        self.seed = seed
        height, width = self.image_size
        self.root = Path(root) / f"v{GENERATOR_VERSION}-seed{seed}-{height}x{width}"

    def prepare_data(self) -> None:
        for split, count in self.counts.items():
            generate_split(self.root, split, count, self.image_size, self.seed)

    def samples(self, split: str) -> list[Sample]:
        split_dir = self.root / split
        return pair_by_stem(split_dir / "images", split_dir / "masks")[: self.counts[split]]
