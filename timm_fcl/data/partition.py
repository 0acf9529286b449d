"""The arithmetic of an epoch's order: each stream's share of it, the subsets of --train-subset / --val-subset, and
the seeding that makes a sample's augmentation depend on (seed, epoch, stream, sample) only."""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import torch


def stream_range(num_samples: int, num_streams: int, stream: int, *, equal: bool, batch_size: int = 1) -> range:
    """Indices (into the epoch's order) read by one stream (= one loader worker of one rank).

    equal=True (training): every stream gets the same quota n // streams, so every rank runs the same number of
    steps; a quota leaving a last batch of one sample is cut by one (BatchNorm cannot train on a batch of one).
    equal=False (validation): the streams cover all samples exactly, sizes differing by at most one.
    """
    if equal:
        quota = num_samples // num_streams
        if quota > 1 and batch_size > 1 and quota % batch_size == 1:
            quota -= 1
        return range(stream * quota, (stream + 1) * quota)
    return range(stream * num_samples // num_streams, (stream + 1) * num_samples // num_streams)


def subset_positions(num_samples: int, subset: Optional[int], *, spread: bool) -> Sequence[int]:
    """Positions of a subset of the epoch's order (all of it when subset is None or too large).

    Training takes the first n of the shuffled order (a different part each epoch, read without scanning every
    shard); validation takes n evenly spaced positions, because a validation split may be stored sorted by class.
    """
    if subset is None or subset >= num_samples:
        return range(num_samples)
    if not spread:
        return range(subset)
    return [i * num_samples // subset for i in range(subset)]


@contextmanager
def seeded(seed: int):
    """Run a transform with python's, numpy's and torch's CPU RNG seeded, leaving the caller's RNG streams untouched
    (timm's AugMix, RandAugment and Mixup draw from numpy)."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
