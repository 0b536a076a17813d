"""The LightningDataModule base: batching, augmentation, verification and caching.

Dataset formats subclass it (:mod:`segment.data.formats`) and only say which files belong to
which split.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from segment.data.dataset import Sample, SegmentationDataset, seeded_order
from segment.data.labels import DatasetInfo
from segment.data.sampling import EpochSampler, ResumableLoader

__all__ = ["SegmentationDataModule"]

log = logging.getLogger(__name__)


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
        if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
            raise ValueError(
                f"data.image_size={list(image_size)}: expected [height, width], both positive "
                "(multiples of the net's downsampling: 32 for the smp U-Nets)"
            )
        missing = {"train", "val"} - set(transforms)
        if missing:
            raise ValueError(
                f"data.transforms lacks {sorted(missing)}; it needs a 'train' and a 'val' pipeline"
            )
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.transforms = transforms
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
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
        self.train_repeats = train_repeats
        self.overfit_samples = overfit_samples
        self.train_size = train_size
        self.subset_seed = subset_seed
        self.load_size = tuple(int(v) for v in load_size) if load_size is not None else None
        self.verify = verify
        self.cache = cache
        self.seed = seed
        self.train_dataset: SegmentationDataset | None = None
        self._train_loader: ResumableLoader | None = None
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
        checkpoint): the dataset, the number of samples it trains and validates on, a hash of the
        file names relative to their common folder, one of the content (``content``: every file's
        size, every mask's bytes: a mask rewritten under its old name changes it; ``images``: every
        image's bytes, so an image rewritten at its old size changes it too), and the training
        subset (``train_size``, null: all; ``subset_seed``). A continued or skipped run is refused
        on other data; a record from before ``images`` existed is checked on the keys it has.

        Hashing every image costs about a second once per run: CamVid train+val (468 pairs, 123 MB
        of images) 0.6-1.0 s with its files in the page cache, 1.1-1.7 s without (0.2-0.6 s before
        ``images``), on a 2-core AMD EPYC VM shared with a training run."""
        files = {"train": self.training_samples(), "val": self.samples("val")}
        paths = [
            path
            for samples in files.values()
            for sample in samples
            for path in (sample.image, sample.mask)
        ]
        base = os.path.commonpath([str(path) for path in paths]) if paths else ""
        names = sorted(os.path.relpath(path, base) for path in paths)
        content, images = hashlib.sha1(), hashlib.sha1()
        for sample in (s for samples in files.values() for s in samples):
            content.update(f"{os.path.getsize(sample.image)}:".encode())
            content.update(Path(sample.mask).read_bytes())
            images.update(hashlib.sha1(Path(sample.image).read_bytes()).digest())
        return {
            "dataset": self.info.name,
            "train": len(files["train"]),
            "val": len(files["val"]),
            "files": hashlib.sha1("\n".join(names).encode()).hexdigest()[:16],
            "content": content.hexdigest()[:16],
            "images": images.hexdigest()[:16],  # a new key: older records verify on the rest
            "train_size": self.train_size,
            "subset_seed": None if self.train_size is None else self.subset_seed,
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
            self.train_dataset, sampler, self._fit_progress, **self._loader_options(drop_last)
        )
        self._train_loader = loader
        if self.trainer is not None:
            # Where the fit stands, before Lightning creates the iterator: loader workers fetch
            # their first batches then, and a run resumed from a checkpoint written at an
            # epoch's end gets no loader state from Lightning (it did get epoch 0's batches).
            loader.load_state_dict(loader.state_dict())
        return loader

    def _fit_progress(self) -> tuple[int, int, int]:
        """The running fit's epoch, batches trained on in it and batches per epoch.

        Lightning's own batch counter (``fit_loop.epoch_loop.batch_progress``, a loop attribute
        outside its documented API): the one place this package reads it;
        tests/test_reliability.py's resumes fail if an upgrade moves it.
        """
        trainer = self.trainer
        completed = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        per_epoch, limit = trainer.num_training_batches, trainer.limit_train_batches
        if not math.isfinite(per_epoch):  # not counted yet: the loader is being set up
            batches = len(self._train_loader)
            per_epoch = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        return trainer.current_epoch, int(completed), int(per_epoch)

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
        return DataLoader(dataset, shuffle=False, **self._loader_options(drop_last=False))

    def _loader_options(self, drop_last: bool) -> dict:
        return {
            "batch_size": self.batch_size,
            "drop_last": drop_last,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
            "multiprocessing_context": _worker_context() if self.num_workers > 0 else None,
            # Each iterator draws its workers' base seed from this generator, not from torch's
            # global RNG: a resumed run creates its iterators at other moments than an uninterrupted
            # one, and dropout draws from the global RNG (augmentation is seeded per item:
            # segment/data/sampling.py).
            "generator": torch.Generator().manual_seed(0),
            "worker_init_fn": _leave_stop_signals_to_the_trainer if self.num_workers > 0 else None,
        }


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Loader workers ignore SIGINT and SIGHUP and outlive a SIGTERM by 2 s at most: a signal to
    the whole process group (Ctrl-C, a closed terminal, a preemption) reaches the training
    process, which stops cleanly and shuts its workers down; at its exit, Python ends the ones
    left with SIGTERM, which then ends them (a worker ignoring it kept the process waiting)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: signal.alarm(2))


def _worker_context() -> multiprocessing.context.BaseContext | None:
    """Fork DataLoader workers on Linux, whatever the process's default start method.

    Inside a sweep launcher's worker (joblib's loky) the default context is the launcher's, and
    DataLoader workers started through it fail ("'Process' object has no attribute 'env'");
    Python 3.14 makes forkserver the default, which would pickle the RAM cache into every worker.
    Forked workers share the cached samples' pages instead. Elsewhere (macOS, Windows) Python's
    default stays.
    """
    return multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
