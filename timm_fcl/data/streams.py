"""Training and validation data for train_fcl.py: one streaming loader over WebDataset shards, torchvision sets
and image folders, split exactly across ranks and loader workers, with a deterministic order per epoch.

The paper (Appendix B) trains CIFAR and ImageNet with standard crops and flips; nothing in FCL depends on the
loader. What this module adds over timm's `ReaderWds` is what exact, resumable multi-process training needs:

- Every epoch has a fixed global order: the shard order (WebDataset) or the index permutation (map-style sets) is
  drawn from (seed, epoch), identically on every rank.
- That order is cut into ranks x streams equal contiguous quotas (streams: the loader workers a run started with,
  kept when it resumes with other --workers), so with 1 or N processes every sample of the epoch
  is read exactly once (timm's reader splits whole shards and pads each worker with `with_epoch`, which repeats
  some samples and drops others whenever shards do not divide evenly, e.g. CIFAR's 5 shards over 2 ranks).
  Training quotas are equal so all ranks take the same number of steps (DDP needs that); the at most
  ranks x streams - 1 samples left over are a different set every epoch. Validation quotas may differ by one:
  metrics are summed once at the end, never gathered per batch.
- Augmentation randomness is seeded per (seed, epoch, stream, sample), so a run resumed mid-epoch with
  `set_epoch(epoch, skip_batches)` sees the same images in the same order with the same crops, without decoding
  the skipped ones, whatever the number of loader workers.
- A corrupt or truncated shard is skipped with a warning and counted; the stream refills its quota by repeating
  samples it already read, so the ranks stay in step and the run goes on. An undecodable training image is replaced by
  another sample of its batch (a training batch with no decodable sample stops the run); an undecodable validation
  image is left out, never replaced. Both are counted apart from the repeats.
- Before a run, local shards are counted from their tar headers (``tarindex``, no image decoded): a split
  whose shards hold other counts than ``_info.json`` lists is refused, and a sample without a label (.cls) or an image
  is left out of the epoch's numbering (the epoch has that many samples fewer) and logged every epoch.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import random
from collections import deque
from itertools import islice
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from .. import _compat
from .errors import DataError
from .partition import seeded, stream_range, subset_positions
from .sources import WdsSource

_logger = logging.getLogger(__name__)
REFILL_POOL = 256  # raw samples a worker keeps to refill its quota after a bad shard


class EpochStream(IterableDataset):
    """One epoch of batches (images [B, C, H, W], labels [B]) for this rank (see the module docstring).

    A rank's share is cut into ``streams`` fixed parts (default: one per loader worker) and its batches are dealt
    round-robin over the parts: batch i is batch i // streams of part i % streams. Training batches depend on the
    parts only, never on the loader workers that read them, so a run may resume with another --workers and compute the
    same steps; a worker reads (without decoding) the parts of every batch it is dealt, which costs nothing extra when
    the workers divide the parts. Validation parts are the workers' own and may differ by one sample.
    """

    def __init__(self, source, *, transform: Callable, is_training: bool, seed: int, batch_size: int,
                 num_workers: int, rank: int = 0, world_size: int = 1, subset: Optional[int] = None,
                 shuffle_buffer: int = 2048, streams: Optional[int] = None):
        self.source, self.transform, self.is_training = source, transform, is_training
        self.seed, self.batch_size, self.subset, self.shuffle_buffer = seed, batch_size, subset, shuffle_buffer
        self.num_workers, self.rank, self.world_size = max(1, num_workers), rank, world_size
        self.streams = streams if streams and is_training else self.num_workers
        self.epoch, self.skip_batches = 0, 0
        self.selected = subset_positions(len(source), subset, spread=not is_training)
        # shared with the loader's worker processes, which inherit them
        self.bad_shards = mp.Value("i", 0)
        self.repeated = mp.Value("i", 0)
        self.undecodable = mp.Value("i", 0)  # images that failed to decode: replaced (training) or left out
        self._incomplete_read = mp.Value("i", 0)  # samples without an image or a label met in uncounted shards
        if len(self.selected) < self.world_size * self.streams:
            raise DataError(f"{len(self.selected)} samples cannot feed {self.world_size} processes x "
                            f"{self.streams} loader streams; use fewer --workers or more data")
        if not is_training:
            self._log_incomplete("validation")

    def skipped(self) -> tuple[int, int, int]:
        """(unreadable shards skipped, samples repeated to keep the quota, undecodable images replaced by a neighbour
        in training or left out in validation) so far, on this rank."""
        return self.bad_shards.value, self.repeated.value, self.undecodable.value

    def incomplete_per_epoch(self) -> int:
        """Samples without an image or a label (.cls) that every epoch leaves out (found by counting the shards)."""
        return int(getattr(self.source, "incomplete", 0) or 0)

    def incomplete_read(self) -> int:
        """Samples without an image or a label met so far while reading uncounted shards, on this rank (each one
        also counts as repeated when its quota was refilled)."""
        return self._incomplete_read.value

    def _log_incomplete(self, when: str) -> None:
        n = self.incomplete_per_epoch()
        if n and self.rank == 0:
            _logger.warning(f"{when}: {n} sample(s) of split '{getattr(self.source, 'split', '')}' without a label "
                            f"(.cls) or an image left out, {len(self.source)} remain "
                            f"(e.g. {self.source.incomplete_example})")

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's order; skip_batches > 0 resumes after that many batches of this rank."""
        self.epoch, self.skip_batches = epoch, skip_batches
        if self.is_training:
            self._log_incomplete(f"epoch {epoch}")

    def _range(self, stream: int) -> range:
        return stream_range(len(self.selected), self.world_size * self.streams, stream,
                            equal=self.is_training, batch_size=self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields in a full epoch."""
        streams = range(self.rank * self.streams, (self.rank + 1) * self.streams)
        return sum(math.ceil(len(self._range(s)) / self.batch_size) for s in streams)

    def _on_bad_shard(self, url: str, why: str) -> None:
        with self.bad_shards.get_lock():
            self.bad_shards.value += 1
        _logger.warning(f"skipping unreadable shard {url} ({why})")

    def _on_incomplete(self, url: str, key: str) -> None:
        with self._incomplete_read.get_lock():
            self._incomplete_read.value += 1
        _logger.warning(f"skipping sample {key} of {url}: no label (.cls) or no image")

    def _raw_batches(self, stream: int) -> Iterator[list]:
        """The stream's batches of raw (undecoded) items, each item with its index in the stream."""
        positions = [self.selected[i] for i in self._range(stream)]
        order_rng = np.random.default_rng([self.seed, self.epoch]) if self.is_training else None
        order = self.source.order(order_rng)
        items = self.source.raw(positions, order, self._on_bad_shard, self._on_incomplete)
        if self.is_training and isinstance(self.source, WdsSource):
            items = _compat.wds_shuffle(items, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer,
                                        rng=random.Random(f"{self.seed}-{self.epoch}-{stream}"))
        if self.is_training:
            items = self._fill(items, len(positions))
        numbered = enumerate(items)
        while batch := list(islice(numbered, self.batch_size)):
            yield batch

    def _decode(self, stream: int, batch: list) -> Optional[tuple]:
        """A training batch keeps its size (the ranks stay in step) whichever worker decodes it: an undecodable
        sample is replaced by the nearest decodable one of its batch. A validation batch leaves it out (None when
        nothing of the batch decodes), so no image is judged twice."""
        decoded = []
        for i, item in batch:
            with seeded(hash((self.seed, self.epoch, stream, i)) & 0x7FFFFFFF):
                try:
                    img, label = self.source.load(item)
                    decoded.append((self.transform(img), label))
                except Exception as exn:
                    what = "replacing" if self.is_training else "leaving out"
                    _logger.warning(f"{what} an undecodable sample ({type(exn).__name__}: {exn})")
                    decoded.append(None)
        good = [k for k, d in enumerate(decoded) if d is not None]
        with self.undecodable.get_lock():
            self.undecodable.value += len(batch) - len(good)
        if not self.is_training:
            return default_collate([decoded[k] for k in good]) if good else None
        if not good:
            raise DataError(f"none of the {len(batch)} samples of a batch decodes (epoch {self.epoch}, see the "
                            f"warnings above): check the images of the data")
        filled = [d if d is not None else decoded[min(good, key=lambda g: (abs(g - k), g))]
                  for k, d in enumerate(decoded)]
        return default_collate(filled)  # as the DataLoader would: AugMix's views stay a tuple of batches

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        first = self.rank * self.streams
        if not self.is_training:  # each worker its own part, in order
            for batch in self._raw_batches(first + worker):
                if (decoded := self._decode(first + worker, batch)) is not None:
                    yield decoded
            return
        # a resumed loader starts at worker 0 with the batch due next; worker w is dealt every num_workers-th batch
        readers, read = {}, {}
        for i in range(self.skip_batches + worker, len(self), self.num_workers):
            stream, j = first + i % self.streams, i // self.streams
            reader = readers.setdefault(stream, self._raw_batches(stream))
            for _ in range(j - read.get(stream, 0)):  # batches dealt to other workers: read, not decoded
                next(reader)
            read[stream] = j + 1
            yield self._decode(stream, next(reader))

    def _fill(self, items: Iterator, quota: int) -> Iterator:
        """Exactly `quota` items: those read, then repeats of recent ones if bad shards left the stream short."""
        pool: deque = deque(maxlen=REFILL_POOL)
        n = 0
        for item in items:
            pool.append(item)
            yield item
            n += 1
        if n < quota and not pool:
            raise DataError("a loader worker found no readable sample at all")
        for k in range(quota - n):
            with self.repeated.get_lock():
                self.repeated.value += 1
            yield pool[k % len(pool)]


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A loader worker leaves the process group: a launcher or a terminal sends SIGTERM / SIGINT to the whole group,
    and the training process, which saves its state on them, still needs its workers for the step in flight. The
    loader still ends its workers itself (and they end with a training process that dies)."""
    os.setpgrp()


def make_loader(stream: EpochStream, *, num_workers: int, pin_memory: bool = False) -> DataLoader:
    # own generator: creating the loader's iterator must not draw from the global torch RNG, which the
    # regularizer's noise uses and a checkpoint restores
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, generator=torch.Generator(),
                      worker_init_fn=_leave_stop_signals_to_the_trainer if num_workers else None)
