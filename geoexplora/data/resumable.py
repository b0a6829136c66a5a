"""Data order that survives a kill: epoch-seeded samplers and a DataLoader whose position is saved.

Exact training resume needs the batches after a resume to be the ones an uninterrupted run would
have drawn. Two pieces give that:

* **Epoch-seeded samplers** (:class:`EpochSeeded`): epoch ``e`` of a sampler seeded ``s`` draws its
  windows (or its tile order) from a generator seeded ``s + e``, so an epoch's order is a function of
  ``(seed, epoch)`` alone, not of how many epochs this process has run. Lightning calls ``set_epoch``
  at the start of every epoch (also through its DDP wrapper).
* :class:`ResumableDataLoader`: a ``DataLoader`` that reports its :meth:`~ResumableDataLoader.position`
  (the epoch and the batches already served in it) and, after :meth:`~ResumableDataLoader.resume_at`,
  skips those batches **by their indices** on its next iteration (no window is read for them).
  :class:`~geoexplora.tasks.exact_resume.ExactResume` saves the position in ``last.ckpt``. (It does not
  use Lightning's stateful-loader protocol: Lightning restores that only when the train loader is built
  after the checkpoint is read, and ``trainer.estimated_stepping_batches`` in ``configure_optimizers``
  builds it before.)

The skip works on the loader's batch sampler, so it holds for any sampler under it, DDP's included:
each rank's batches are a fixed function of the epoch, and a rank that served ``n`` batches skips its
own first ``n``.

This module imports no Lightning.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["EpochSeeded", "ResumableDataLoader", "SeededShuffleSampler"]


class EpochSeeded:
    """Mixin for samplers whose epoch ``e`` draws from ``torch.Generator().manual_seed(seed + e)``.

    Subclasses set ``self.seed`` and draw from :meth:`epoch_generator` at the start of ``__iter__``.
    """

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``__iter__`` yields (called by Lightning)."""
        self.epoch = epoch

    def epoch_generator(self) -> torch.Generator:
        """A fresh generator for this epoch's draws."""
        return torch.Generator().manual_seed(self.seed + self.epoch)


class SeededShuffleSampler(EpochSeeded, Sampler[int]):
    """Indices ``0..n-1`` in a random order that depends only on ``seed`` and the epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.n, generator=self.epoch_generator()).tolist()

    def __len__(self) -> int:
        return self.n


class _SkipFirst:
    """The loader's batches of indices, with the first ``skip`` dropped when iteration starts."""

    def __init__(self, batches: Sized, loader: ResumableDataLoader) -> None:
        self.batches, self.loader = batches, loader

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        # A generator, so the skip is taken when the first batch is drawn: a multi-process DataLoader
        # iterator calls iter() twice while it starts and draws from the second.
        skip, self.loader._skip = self.loader._skip, 0
        yield from itertools.islice(self.batches, skip, None)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that tells where it is in the epoch and resumes there.

    :meth:`position` is ``{"epoch": E, "batches": N}``: the sampler's epoch and the batches served so
    far in it. After :meth:`resume_at`, the first iteration of that same epoch skips ``N`` batches of
    indices; an iteration of another epoch (the saved one was complete) starts at its beginning.
    Exact only when the sampler's order is a function of the epoch (:class:`EpochSeeded`, a grid).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._skip = 0
        self._resume_epoch: int | None = None

    @property
    def epoch(self) -> int:
        """The epoch the sampler (or Lightning's DDP wrapper of it) is set to."""
        return int(getattr(self.sampler, "epoch", 0))

    @property
    def _index_sampler(self) -> _SkipFirst:  # what DataLoader iterates to get each batch's indices
        return _SkipFirst(super()._index_sampler, self)

    def __iter__(self) -> Iterator[Any]:
        if self._resume_epoch is not None and self._resume_epoch != self.epoch:
            self._skip = 0
        self._resume_epoch = None
        self._served = self._skip
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def position(self) -> dict[str, int]:
        """The epoch and the batches served in it."""
        return {"epoch": self.epoch, "batches": self._served}

    def resume_at(self, position: dict[str, int]) -> None:
        """Resume at batch ``position["batches"]`` of epoch ``position["epoch"]`` on the next iteration."""
        self._resume_epoch, self._skip = int(position["epoch"]), int(position["batches"])
