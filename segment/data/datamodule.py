"""The LightningDataModule base: batching, augmentation, verification and caching.

Dataset formats subclass it (:mod:`segment.data.formats`) and only say which files belong to
which split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from segment.data.dataset import Sample, SegmentationDataset, data_fingerprint, seeded_order
from segment.data.labels import DatasetInfo
from segment.data.sampling import EpochSampler, ResumableLoader, fit_progress, loader_options

__all__ = ["SegmentationDataModule"]

log = logging.getLogger(__name__)


def _check_arguments(
    image_size: Sequence[int],
    transforms: dict[str, Callable],
    train_repeats: int,
    overfit_samples: int | None,
    train_size: int | None,
) -> None:
    if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
        raise ValueError(
            f"data.image_size={list(image_size)}: expected [height, width], both positive "
            "(multiples of the net's downsampling: 32 for the smp U-Nets)"
        )
    if missing := {"train", "val"} - set(transforms):
        raise ValueError(
            f"data.transforms lacks {sorted(missing)}; it needs a 'train' and a 'val' pipeline"
        )
    if train_repeats < 1 or (overfit_samples is not None and overfit_samples < 1):
        raise ValueError(
            f"data.train_repeats={train_repeats} and data.overfit_samples={overfit_samples} "
            "must be >= 1"
        )
    if train_size is not None and train_size < 1:
        raise ValueError(
            f"data.train_size={train_size}: must be >= 1 (the training images to use), or null "
            "for the whole training split"
        )


class SegmentationDataModule(LightningDataModule):
    """Batches and augments the train/val samples that a subclass lists.

    Subclasses set :attr:`info` (or pass ``info``) and implement :meth:`samples`; they may
    override :meth:`prepare_data` to download or generate files.

    Args:
        image_size: ``(height, width)`` the model sees; each a multiple of the net's
            downsampling (32 for the smp U-Nets; the module checks it when training starts).
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
        load_size: ``(height, width)`` samples are resized to when decoded, before
            augmentation and caching; None keeps the native size.
        verify: Decode every sample once in :meth:`setup`, so that a corrupt image, a
            mask of the wrong size or an undeclared label fails before training.
        cache: Keep the decoded (``load_size``) samples in RAM: later epochs skip PNG/JPEG
            decoding. Implies ``verify``.
        seed: Fixes the training order and augmentation per epoch (the run's ``seed``;
            :mod:`segment.data.sampling`); None: a random one, still resumable.
        train_size: Train on this many samples of the training split (None: all of them): the
            first of the split in the order ``subset_seed`` fixes (:func:`seeded_order`), so a
            smaller subset lies inside every larger one, whatever the run's ``seed``. The
            validation split is never subset.
        subset_seed: Which subset ``train_size`` takes; independent of the run's ``seed``, so
            every model and training seed trains on the same images.
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
        load_size: Sequence[int] | None = None,
        verify: bool = True,
        cache: bool = False,
        seed: int | None = None,
        train_size: int | None = None,
        subset_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_arguments(image_size, transforms, train_repeats, overfit_samples, train_size)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.transforms = transforms
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_repeats = train_repeats
        self.overfit_samples = overfit_samples
        self.train_size = train_size
        self.subset_seed = subset_seed
        self.load_size = tuple(int(v) for v in load_size) if load_size is not None else None
        self.verify = verify
        self.cache = cache
        self.seed = seed
        self.train_dataset: SegmentationDataset | None = None
        self.val_dataset: SegmentationDataset | None = None
        self.test_dataset: SegmentationDataset | None = None

    splits: tuple[str, ...] = ("train", "val")

    def samples(self, split: str) -> list[Sample]:
        """The labelled files of ``split`` (one of :attr:`splits`)."""
        raise NotImplementedError

    def training_samples(self) -> list[Sample]:
        """The samples a run trains on: the training split, or its ``train_size`` subset (in the
        split's order)."""
        samples = self.samples("train")
        if self.train_size is None:
            return samples
        if self.train_size > len(samples):
            raise ValueError(
                f"data.train_size={self.train_size}: the {self.info.name} training split has only "
                f"{len(samples)} samples; give data.train_size <= {len(samples)}, or null for all"
            )
        chosen = set(seeded_order(samples, self.subset_seed)[: self.train_size])
        return [sample for sample in samples if sample in chosen]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset = self.dataset("train")
            self.val_dataset = self.dataset("val")
            for dataset in (self.train_dataset, self.val_dataset):
                if self.cache or self.verify:
                    dataset.preload(cache=self.cache)
            checked = self.val_dataset.statistics
            if checked is not None and not checked.pixels.any():
                raise ValueError(
                    f"{self.info.name}: no validation mask has a labelled pixel (every pixel is "
                    "void, ignored): val/loss would be 0 and every threshold reached at once. "
                    "Check the val masks and the dataset's label mapping (python -m segment.data "
                    "check ...)"
                )
            cached = self.train_dataset.cache_bytes + self.val_dataset.cache_bytes
            log.info(
                "%s: %d train / %d val samples, %d classes, model input %dx%d%s",
                self.info.name,
                len(self.train_dataset),
                len(self.val_dataset),
                self.info.num_classes,
                *self.image_size,
                f", {cached / 2**20:.0f} MiB cached in RAM" if self.cache else "",
            )

    def fingerprint(self) -> dict[str, Any]:
        """What a run trains and validates on, wherever the files lie (``run.json``, every
        checkpoint): :func:`~segment.data.dataset.data_fingerprint` of its samples, and the
        training subset (``train_size``, null: all; ``subset_seed``). A continued or skipped run is
        refused on other data."""
        files = {"train": self.training_samples(), "val": self.samples("val")}
        subset_seed = None if self.train_size is None else self.subset_seed
        return data_fingerprint(self.info.name, files) | {
            "train_size": self.train_size,
            "subset_seed": subset_seed,
        }

    def dataset(self, split: str) -> SegmentationDataset:
        """A dataset of ``split`` with this module's transforms (augmentation for ``train``
        only)."""
        if self.overfit_samples:
            samples = self.training_samples()[: self.overfit_samples]
        else:
            samples = self.training_samples() if split == "train" else self.samples(split)
        if not samples:
            raise ValueError(f"{self.info.name}: the {split} split is empty")
        transform = self.transforms["train" if split == "train" else "val"]
        repeats = self.train_repeats if split == "train" else 1
        return SegmentationDataset(
            samples, self.info, transform, load_size=self.load_size, repeats=repeats
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        sampler = EpochSampler(len(self.train_dataset), self.seed)
        # drop_last: a final batch of one image would make BatchNorm's statistics degenerate.
        drop_last = len(self.train_dataset) > self.batch_size
        loader = ResumableLoader(
            self.train_dataset,
            sampler,
            lambda: fit_progress(self.trainer, loader),
            **loader_options(self, drop_last),
        )
        if self.trainer is not None:
            # Where the fit stands, before Lightning creates the iterator: loader workers fetch
            # their first batches then, and a run resumed from a checkpoint written at an
            # epoch's end gets no loader state from Lightning (it did get epoch 0's batches).
            loader.load_state_dict(loader.state_dict())
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset)

    def has_split(self, split: str) -> bool:
        """Whether the dataset has labelled samples for ``split`` (CamVid's test/ is optional)."""
        if split not in self.splits:
            return False
        try:
            return bool(self.samples(split))
        except FileNotFoundError:
            return False

    def test_dataloader(self) -> DataLoader:
        """The ``test`` split, decoded and checked like validation (``train.py
        test_after_fit=true``)."""
        if self.test_dataset is None:
            if not self.has_split("test"):
                raise ValueError(
                    f"{self.info.name} has no test split here (splits: {list(self.splits)})"
                )
            self.test_dataset = self.dataset("test")
            if self.verify or self.cache:
                self.test_dataset.preload(cache=False)
        return self._loader(self.test_dataset)

    def _loader(self, dataset: SegmentationDataset | None) -> DataLoader:
        """An evaluation loader: in order, every sample."""
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(dataset, shuffle=False, **loader_options(self, drop_last=False))
