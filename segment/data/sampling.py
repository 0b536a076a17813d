"""The training order: fixed by (seed, epoch), augmented by a seed per draw, resumable within an
epoch.

PyTorch's ``RandomSampler`` draws each epoch's permutation from the global RNG, and
albumentations draws from generators that live in the loader's worker processes. Both
depend on history a checkpoint cannot carry: what the model consumed from the global RNG before
the first epoch (arms with different nets see different orders under one seed), and the state of
persistent workers (a resumed run starts fresh workers, so it augments differently from an
uninterrupted one). Here both are pure functions of the run's seed, the epoch and the position in
the epoch, like ``DistributedSampler.set_epoch``:

- :class:`EpochSampler` yields ``(index, augmentation seed)`` pairs; the dataset seeds its
  transform with the second (:meth:`SegmentationDataset.__getitem__`).
- :class:`ResumableLoader` is a ``DataLoader`` whose position in the epoch travels with
  Lightning's checkpoints (Lightning saves the ``state_dict`` of a train loader that has one), so
  a run resumed from a checkpoint written mid-epoch continues with the next batch.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import distributed
from torch.utils.data import DataLoader, Sampler

if TYPE_CHECKING:
    from lightning import Trainer

__all__ = [
    "ORDER_VERSION",
    "EpochSampler",
    "ResumableLoader",
    "data_order",
    "fit_progress",
    "loader_options",
]

# The version of the order function below: raise it whenever the order or the augmentation
# seeds it gives for a (seed, epoch) change, so that runs are paired by seed only where they
# saw the same data in the same order (tests/test_data.py pins the order of version 2).
ORDER_VERSION = 2


def data_order(seed: int | None) -> dict[str, int | None]:
    """What fixes a run's training order and augmentation: recorded in every run record."""
    return {"version": ORDER_VERSION, "seed": seed}


class EpochSampler(Sampler[tuple[int, int]]):
    """Each epoch, every index once in an order fixed by ``(seed, epoch)``, each with its
    augmentation seed.

    Under DDP each rank takes every ``world_size``-th item of that order (the order padded
    cyclically to a multiple of the world size, as ``DistributedSampler`` does), so ``trainer=ddp``
    sets ``use_distributed_sampler: false``.

    Args:
        size: Number of items (the dataset's length).
        seed: The run's seed; None draws one from torch's global RNG (it is saved with the
            loader's state, so even an unseeded run resumes exactly).
        shuffle: Permute the indices (else in order; the augmentation seeds still vary).
    """

    def __init__(self, size: int, seed: int | None, shuffle: bool = True) -> None:
        self.size = size
        self.seed = int(torch.randint(2**31 - 1, ()).item()) if seed is None else int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0  # items to skip at the start of the next pass (a mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before every training epoch."""
        self.epoch = int(epoch)

    @staticmethod
    def _rank() -> tuple[int, int]:
        if distributed.is_available() and distributed.is_initialized():
            return distributed.get_rank(), distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return math.ceil(self.size / self._rank()[1])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = self._rank()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = (
            torch.randperm(self.size, generator=generator)
            if self.shuffle
            else torch.arange(self.size)
        )
        seeds = torch.randint(2**31 - 1, (self.size,), generator=generator)
        positions = [p % self.size for p in range(rank, len(self) * world, world)]
        start, self.start = self.start, 0
        for position in positions[start:]:
            yield int(order[position]), int(seeds[position])


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` over an :class:`EpochSampler` whose state Lightning checkpoints.

    Args:
        dataset: The training dataset.
        sampler: Its :class:`EpochSampler`.
        progress: Returns ``(epoch, batches completed in it, batches per epoch)`` of the
            running fit (the datamodule reads them off its trainer): the loader itself runs ahead
            of training by the batches its workers prefetch, so it cannot count them.
        **kwargs: Other ``DataLoader`` arguments (``batch_size``, ``num_workers``, ...).
    """

    def __init__(
        self,
        dataset: Any,
        sampler: EpochSampler,
        progress: Callable[[], tuple[int, int, int]],
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        """Where training stands: the next epoch and the batches of it already trained on."""
        epoch, batches, per_epoch = self.progress()
        if batches >= per_epoch:  # saved at an epoch's end: the next pass is a new epoch
            epoch, batches = epoch + 1, 0
        return {"seed": self.sampler.seed, "epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next pass start at the saved position (Lightning calls this before
        iterating)."""
        self.sampler.seed = int(state["seed"])
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.start = int(state["batches"]) * int(self.batch_size)


def fit_progress(trainer: Trainer, loader: DataLoader) -> tuple[int, int, int]:
    """The running fit's epoch, batches trained on in it and batches per epoch (``loader``: its
    training loader, for the last while Lightning has not counted them yet).

    Lightning's own batch counter (``fit_loop.epoch_loop.batch_progress``, a loop attribute
    outside its documented API): the one place this package reads it; tests/test_reliability.py's
    resumes fail if an upgrade moves it.
    """
    completed = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    per_epoch, limit = trainer.num_training_batches, trainer.limit_train_batches
    if not math.isfinite(per_epoch):  # not counted yet: the loader is being set up
        batches = len(loader)
        per_epoch = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return trainer.current_epoch, int(completed), int(per_epoch)


class LoaderSettings(Protocol):
    """What a data module says of its loaders."""

    batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool


def loader_options(data: LoaderSettings, drop_last: bool) -> dict[str, Any]:
    """``DataLoader`` arguments of ``data``'s splits: its batch size and workers; forked workers
    that leave stop signals to the trainer, and base seeds that do not depend on when the iterator
    is created."""
    num_workers = data.num_workers
    return {
        "batch_size": data.batch_size,
        "drop_last": drop_last,
        "num_workers": num_workers,
        "pin_memory": data.pin_memory,
        "persistent_workers": data.persistent_workers,
        "multiprocessing_context": _worker_context() if num_workers > 0 else None,
        # Each iterator draws its workers' base seed from this generator, not from torch's
        # global RNG: a resumed run creates its iterators at other moments than an uninterrupted
        # one, and dropout draws from the global RNG (augmentation is seeded per item).
        "generator": torch.Generator().manual_seed(0),
        "worker_init_fn": _leave_stop_signals_to_the_trainer if num_workers > 0 else None,
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
