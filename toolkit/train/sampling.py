"""Data order and augmentation seeded by (seed, epoch, index).

The shuffle order of epoch e comes from (seed, e), and each sample's augmentation from (seed, e, index),
whatever the worker count. So a resumed run, or one interrupted mid-epoch, sees the same batches and
the same augmented pixels as an uninterrupted one, and N processes together see the batches one does.
"""
from __future__ import annotations

import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from toolkit.train.distributed import IGNORE, Dist


def epoch_order(n: int, seed: int, epoch: int, weights: torch.Tensor | None = None) -> list[int]:
    """The shuffled order of one epoch's n samples, from (seed, epoch) alone. With `weights` (one per
    sample: train.sampler balanced), n samples drawn with replacement in proportion to them instead."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if weights is not None:
        return torch.multinomial(weights, n, replacement=True, generator=g).tolist()
    return torch.randperm(n, generator=g).tolist()


class EpochBatches(Sampler):
    """This rank's part of each global batch of one epoch, as lists of encoded sample indices.

    The global batches are the epoch's shuffled order cut into `batch_size` pieces, the same for any
    number of processes; `dist.shard` gives each rank its part. Each index is encoded as epoch * n + i,
    so the dataset (even in a persistent worker) knows the epoch; a padding entry (see Dist.shard) as
    -(code + 1). `skip` global batches are left out, to resume mid-epoch. `weights` (train.sampler
    balanced, toolkit.train.balance) draws the epoch's order with replacement: the same draw on every rank,
    sharded like the uniform one.
    """

    def __init__(self, n: int, seed: int, epoch: int, batch_size: int, dist: Dist, skip: int = 0,
                 weights: torch.Tensor | None = None):
        self.n, self.seed, self.epoch = n, seed, epoch
        self.batch_size, self.dist, self.skip, self.weights = batch_size, dist, skip, weights

    def global_sizes(self) -> list[int]:
        n, b = self.n, self.batch_size
        return [min(b, n - start) for start in range(0, n, b)][self.skip:]

    def __iter__(self):
        codes = [self.epoch * self.n + i for i in epoch_order(self.n, self.seed, self.epoch, self.weights)]
        for start in range(self.skip * self.batch_size, len(codes), self.batch_size):
            part, padding = self.dist.shard(codes[start:start + self.batch_size])
            yield [-(c + 1) for c in part] if padding else part

    def __len__(self):
        return len(self.global_sizes())


def decode_index(encoded: int, n: int) -> tuple[int, int, bool]:
    """(epoch, index, padding) of a sample code from EpochBatches over `n` samples."""
    padding = encoded < 0
    epoch, index = divmod(-encoded - 1 if padding else encoded, n)
    return epoch, index, padding


class SeededAugmentation(Dataset):
    """Wraps a training ImageDataset: each sample's augmentation is seeded by (seed, epoch, index), so it
    does not depend on worker count, worker seeds, or where in the epoch a resumed run starts.
    A negative code is padding: the sample loads as usual but its target is IGNORE."""

    def __init__(self, inner, seed: int):
        self.inner, self.seed = inner, seed

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, encoded: int):
        epoch, index, padding = decode_index(encoded, len(self.inner))
        image, target = self.inner.load(
            index, seed=int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        return image, IGNORE if padding else target


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C goes to the whole process group: let the main process alone decide when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def run_loader(dataset, workers, device, sampler=None, batch_size=None, batch_sampler=None) -> DataLoader:
    # A fixed generator keeps the DataLoader from drawing on (and shifting) the global torch RNG.
    return DataLoader(dataset, batch_size=batch_size if batch_sampler is None else 1, sampler=sampler,
                      batch_sampler=batch_sampler, num_workers=workers,
                      worker_init_fn=_worker_init if workers else None, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


REPLAY_BYTES = 256 * 2**20  # a validation split up to this size is prepared once a run, then replayed


class ReplayedBatches:
    """Batches that are the same on every pass (validation: the eval transform draws nothing at random):
    the first whole pass is kept when it fits in `max_bytes` and replayed after it, so a run that validates
    every few steps prepares its validation images once. Bigger splits are prepared every pass."""

    def __init__(self, loader, max_bytes: int = REPLAY_BYTES):
        self.loader, self.max_bytes, self.kept = loader, max_bytes, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.kept is not None:
            yield from self.kept
            return
        kept, size = [], 0
        for batch in self.loader:
            if kept is not None:
                size += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
                if size <= self.max_bytes:
                    kept.append(batch)
                else:
                    kept = None  # too big to keep: every pass prepares it
            yield batch
        self.kept = kept  # only a whole pass is replayed
