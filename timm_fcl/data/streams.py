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
  samples it already read, so the ranks stay in step and the run goes on. An undecodable image is replaced by another
  sample of its batch; a batch with no decodable sample stops the run.
- Before a run, local shards are counted from their tar headers (``tarindex``, no image decoded): a split
  whose shards hold other counts than ``_info.json`` lists is refused, and a sample without a label (.cls) or an image
  is left out of the epoch's numbering (the epoch has that many samples fewer) and logged every epoch.
"""
from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing as mp
import os
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from .. import _compat
from .tarindex import ShardCount, UnreadableShard, count_shard

_logger = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# names of a validation split, as timm's readers know them; a request for one finds another, never the test split
# (choosing the best epoch or a schedule on test data must be asked for by name: --val-split test)
VAL_SYNONYMS = ("validation", "val", "valid", "eval", "evaluation")
REFILL_POOL = 256  # raw samples a worker keeps to refill its quota after a bad shard


def default_data_root() -> Path:
    """The shared data folder: $TIMM_FCL_DATA, else ``shared/data`` beside the repository (a checkout's layout)."""
    return Path(os.environ.get("TIMM_FCL_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


class DataError(ValueError):
    """Bad data input (missing directory, unreadable split, label out of range): reported as one line."""

    def __init__(self, message: str = ""):
        # raised in a loader worker, it comes back as "Caught DataError in DataLoader worker process N." and the
        # worker's traceback, whose last line holds the message worth the user's line
        if message.startswith("Caught DataError") and "Traceback" in message:
            message = message.rstrip().splitlines()[-1].partition(": ")[2]
        super().__init__(message)


class MissingSplit(DataError):
    """The shards' _info.json does not list the split asked for; ``listed``: the splits it does list."""

    def __init__(self, message: str, listed: Sequence[str] = ()):
        super().__init__(message)
        self.listed = list(listed)


# ---------------------------------------------------------------------------------------------- partition arithmetic
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


class _OneImage:
    """A stand-in data set whose item is the image it is indexed with, so that timm's AugMixDataset, which splits
    items of a map-style data set, can split the images of a stream one at a time."""
    transform: Optional[Callable] = None

    def __getitem__(self, image):
        return self.transform(image), None


class AugMixViews:
    """Transform an image into ``num_splits`` views as timm's AugMixDataset does: the clean view (the primary
    transform: crop and flip) and ``num_splits`` - 1 augmented ones (the secondary transform, e.g. AugMix), each
    normalized. ``transforms`` is the (primary, secondary, final) tuple of ``create_transform(..., separate=True)``."""

    def __init__(self, transforms: Sequence[Callable], num_splits: int):
        from timm.data import AugMixDataset

        self.views = AugMixDataset(_OneImage(), num_splits=num_splits)
        self.views.transform = tuple(transforms)

    def __call__(self, image) -> tuple:
        return self.views[image][0]


# ----------------------------------------------------------------------------------------------------- sources
def is_complete(extensions: set) -> bool:
    """A sample the reader can train on: an image and a label (.cls), by its extensions."""
    return "cls" in extensions and any(k in extensions for k in IMAGE_KEYS)


class WdsSource:
    """WebDataset shards (local paths or URLs) with known lengths; reads raw samples (bytes) without decoding.

    ``counted[i]``: shard i was counted before the run (``count_split``) and ``lengths[i]`` is its number of complete
    samples (image and label): the others are not numbered at all. An uncounted shard (a URL, a truncated tar) is
    numbered as ``_info.json`` lists it, and a sample found incomplete there is skipped when read (its stream
    refills the quota as for a bad shard). ``incomplete`` / ``incomplete_example``: the counted shards' samples left
    out, and the first of them as 'KEY in SHARD'."""

    def __init__(self, urls: Sequence[str], lengths: Sequence[int], *, image_mode: str = "RGB",
                 class_names: Optional[Sequence[str]] = None, num_classes: Optional[int] = None,
                 counted: Optional[Sequence[bool]] = None, incomplete: int = 0,
                 incomplete_example: Optional[str] = None, split: str = ""):
        self.urls, self.lengths = list(urls), [int(n) for n in lengths]
        self.image_mode, self.class_names = image_mode, list(class_names) if class_names else None
        self.num_classes = num_classes or (len(class_names) if class_names else None)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)])
        self.counted = list(counted) if counted is not None else [False] * len(self.urls)
        self.incomplete, self.incomplete_example, self.split = incomplete, incomplete_example, split

    def __len__(self) -> int:
        return int(self.starts[-1])

    def order(self, rng: Optional[np.random.Generator]) -> np.ndarray:
        """The epoch's shard order; samples are then numbered through the shards in that order."""
        return np.arange(len(self.urls)) if rng is None else rng.permutation(len(self.urls))

    def raw(self, positions: Sequence[int], order: np.ndarray, on_bad_shard: Callable[[str, str], None],
            on_incomplete: Optional[Callable[[str, str], None]] = None) -> Iterator:
        """The raw samples at these positions of the epoch's order; a sample without an image or a label in an
        uncounted shard is not yielded and goes to on_incomplete(url, key)."""
        import webdataset as wds

        lengths = np.asarray(self.lengths)[order]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        positions = np.asarray(positions, dtype=np.int64)
        shard_of = np.searchsorted(starts, positions, side="right") - 1
        for slot in np.unique(shard_of):
            url, counted = self.urls[order[slot]], self.counted[order[slot]]
            wanted = set((positions[shard_of == slot] - starts[slot]).tolist())
            last, seen = max(wanted), -1
            try:
                for sample in wds.tarfile_to_samples()([{"url": url}]):
                    complete = is_complete(set(sample))
                    if not complete and counted:  # not numbered: the count before the run left it out
                        continue
                    seen += 1
                    if seen in wanted:
                        if complete:
                            yield sample
                        elif on_incomplete is not None:
                            on_incomplete(url, str(sample.get("__key__")))
                    if seen >= last:
                        break
            except Exception as exn:  # a truncated gzip, a broken tar header, a missing member
                on_bad_shard(url, f"{type(exn).__name__}: {exn}".splitlines()[0][:200])
                continue
            if seen < last:
                on_bad_shard(url, f"ends after {seen + 1} samples, the split info lists {lengths[slot]}")

    def load(self, sample: dict) -> tuple[Image.Image, int]:
        data = next(sample[k] for k in IMAGE_KEYS if k in sample)
        with io.BytesIO(data) as f:
            img = Image.open(f)
            img.load()
        return img.convert(self.image_mode), int(sample["cls"])


class MapSource:
    """A map-style data set returning (PIL image, label): torchvision sets, timm's image-folder datasets."""

    def __init__(self, dataset, *, image_mode: str = "RGB", class_names: Optional[Sequence[str]] = None):
        self.dataset, self.image_mode = dataset, image_mode
        self.class_names = list(class_names) if class_names else None
        self.num_classes = len(class_names) if class_names else None

    def __len__(self) -> int:
        return len(self.dataset)

    def order(self, rng: Optional[np.random.Generator]) -> np.ndarray:
        return np.arange(len(self.dataset)) if rng is None else rng.permutation(len(self.dataset))

    def raw(self, positions: Sequence[int], order: np.ndarray, on_bad_shard, on_incomplete=None) -> Iterator:
        return (int(order[p]) for p in positions)

    def load(self, index: int) -> tuple[Image.Image, int]:
        img, target = self.dataset[index]
        return img.convert(self.image_mode), int(target)


# ------------------------------------------------------------------------------------------------- the stream
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
        self._incomplete_read = mp.Value("i", 0)  # samples without an image or a label met in uncounted shards
        if len(self.selected) < self.world_size * self.streams:
            raise DataError(f"{len(self.selected)} samples cannot feed {self.world_size} processes x "
                            f"{self.streams} loader streams; use fewer --workers or more data")
        if not is_training:
            self._log_incomplete("validation")

    def skipped(self) -> tuple[int, int]:
        """(unreadable shards skipped, samples repeated to keep the quota) so far, on this rank."""
        return self.bad_shards.value, self.repeated.value

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

    def _decode(self, stream: int, batch: list) -> tuple:
        """An undecodable sample is replaced by the nearest decodable one of its batch, so the batch keeps its size
        (the ranks stay in step) whichever worker decodes it."""
        decoded = []
        for i, item in batch:
            with seeded(hash((self.seed, self.epoch, stream, i)) & 0x7FFFFFFF):
                try:
                    img, label = self.source.load(item)
                    decoded.append((self.transform(img), label))
                except Exception as exn:
                    _logger.warning(f"skipping an undecodable sample ({type(exn).__name__}: {exn})")
                    decoded.append(None)
        good = [k for k, d in enumerate(decoded) if d is not None]
        if not good:
            raise DataError(f"none of the {len(batch)} samples of a batch decodes (epoch {self.epoch}, see the "
                            f"warnings above): check the images of the data")
        with self.repeated.get_lock():
            self.repeated.value += len(batch) - len(good)
        filled = [d if d is not None else decoded[min(good, key=lambda g: (abs(g - k), g))]
                  for k, d in enumerate(decoded)]
        return default_collate(filled)  # as the DataLoader would: AugMix's views stay a tuple of batches

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        first = self.rank * self.streams
        if not self.is_training:  # each worker its own part, in order
            for batch in self._raw_batches(first + worker):
                yield self._decode(first + worker, batch)
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


# ----------------------------------------------------------------------------------------------- sources from args
def _is_url(path: str) -> bool:
    return "://" in path or path.startswith("pipe:")


def _shard_info(root: Optional[str]) -> Optional[dict]:
    """root/_info.json when ``root`` is a local folder of WebDataset shards (an _info.json listing splits), else None."""
    if not root or _is_url(str(root)) or not os.path.isfile(os.path.join(root, "_info.json")):
        return None
    info = load_info(str(root))
    return info if isinstance(info, dict) and isinstance(info.get("splits"), dict) else None


def shard_name(root: str, info: dict) -> str:
    """'wds/NAME' for a shard folder: the _info.json's name, else the folder's."""
    name = info.get("name")
    return f"wds/{name if isinstance(name, str) and name else Path(root).resolve().name}"


def shard_dataset(dataset: Optional[str], root: Optional[str], flag: str = "--dataset") -> tuple[str, Optional[str]]:
    """(dataset, note) for a --dataset left unset (None): 'wds/NAME' when ``root`` holds WebDataset shards (read as an
    image folder, it would end in timm's 'Found 0 images in subfolders'), with a note saying so; else '' (an image
    folder), note None. A --dataset given, '' included, is kept. Reads the _info.json only, no shard."""
    if dataset is not None:
        return dataset, None
    info = _shard_info(root)
    if info is None:
        return "", None
    name = shard_name(root, info)
    return name, f"{root} holds WebDataset shards (_info.json) and {flag} is unset: reading them as {flag} {name}"


def shard_hint(root: Optional[str], flag: str = "--dataset") -> str:
    """' (... give --dataset wds/NAME)' when ``root``, read as an image folder, is a shard folder; else ''."""
    try:
        info = _shard_info(root)
    except DataError:
        return ""
    return f" ({root} holds WebDataset shards, _info.json: give {flag} {shard_name(root, info)})" if info else ""


def wds_split(root: str, split: str) -> tuple[list[str], list[int], dict]:
    """Shard urls and lengths of a split: a name listed in root/_info.json, or a brace pattern 'PATTERN|N'."""
    urls, lengths, info, _ = _wds_split(root, split)
    return urls, lengths, info


def _is_pattern(split: str) -> bool:
    return "tar" in split or ".." in split  # as timm's _parse_split_info


def load_info(root: str) -> dict:
    """root/_info.json parsed; a file there that is no JSON object is an error of its own (timm's loader would warn
    'not found' and go on without it). Without one (or for a URL), timm's loader: info.json, or nothing."""
    path = os.path.join(root, "_info.json")
    if _is_url(root) or not os.path.exists(path):
        return _compat.load_wds_info(root)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as exn:
        raise DataError(f"{path} cannot be read ({type(exn).__name__}: {exn.strerror or exn})") from None
    except UnicodeDecodeError as exn:
        raise DataError(f"{path} is not valid JSON (not UTF-8 text: {exn.reason} at byte {exn.start})") from None
    try:
        return json.loads(text)
    except ValueError as exn:
        raise DataError(f"{path} is not valid JSON ({exn})") from None


def _wds_split(root: str, split: str) -> tuple[list[str], list[int], dict, bool]:
    """wds_split, and whether the lengths are per shard as listed (else shares of a total: 'PATTERN|N')."""
    if not _is_url(root) and not os.path.isdir(root):
        raise DataError(f"data dir {root} does not exist")
    info = load_info(root)
    if not isinstance(info, dict):
        raise DataError(f"{root}/_info.json: expected an object, got {type(info).__name__}")
    if not isinstance(info.get("splits", {}), dict):
        raise DataError(f"{root}/_info.json: 'splits' must be an object")
    listed = info.get("splits", {})
    if split in VAL_SYNONYMS and split not in listed:  # as timm's folder reader: 'validation' finds 'val'
        found = next((name for name in VAL_SYNONYMS if name in listed), None)
        if found is not None:
            _logger.info(f"split '{split}' not in {root}/_info.json, using '{found}'")
            split = found
    if split in listed:
        check_split_entry(f"{root}/_info.json, split '{split}'", listed[split])
    elif not _is_pattern(split) and (info or not _is_url(root) and os.path.exists(os.path.join(root, "_info.json"))):
        raise MissingSplit(f"{root}/_info.json lists no split '{split}' "
                           f"(its splits: {', '.join(map(str, listed)) or 'none'})", listed=list(listed))
    try:
        split_info = _compat.parse_wds_split(split, info)
    except (RuntimeError, KeyError) as exn:
        raise DataError(f"split '{split}' not found in {root} (no _info.json listing it, and not a shard "
                        f"pattern like 'name-{{000..009}}.tar|NUM_SAMPLES'): {exn}") from None
    urls = [f if _is_url(f) or os.path.isabs(f) else os.path.join(root, f) for f in split_info.filenames]
    lengths = list(split_info.shard_lengths)
    per_shard = bool(lengths)
    if not lengths:
        if not split_info.num_samples:
            raise DataError(f"shard lengths of '{split}' are unknown: add an _info.json or write 'PATTERN|NUM_SAMPLES'")
        # a bare pattern with a sample count: shards taken as equally long (a shorter one reads as truncated)
        n, s = split_info.num_samples, len(urls)
        lengths = [n // s + (1 if i < n % s else 0) for i in range(s)]
    if not _is_url(root):
        missing = [u for u in urls if not _is_url(u) and not os.path.exists(u)]
        if missing:
            raise DataError(f"{len(missing)} shard(s) of split '{split}' missing, e.g. {missing[0]}")
    return urls, lengths, info, per_shard


def _count(url: str) -> ShardCount | str:
    try:
        return count_shard(url, is_complete)
    except UnreadableShard as exn:
        return str(exn)


def count_split(root: str, split: str, urls: Sequence[str], lengths: Sequence[int], *, per_shard: bool = True
                ) -> tuple[list[int], list[bool], int, Optional[str]]:
    """Check a split's local shards against the lengths _info.json lists, counting their samples from the tar headers
    (no image read), and return what an epoch numbers: (lengths, counted, incomplete samples, the first one as
    'KEY in SHARD').

    A shard read to its end must hold its listed length (``per_shard``; else the shards together the listed total):
    any other count is an error before the run. A counted shard's length becomes its number of complete samples
    (image and .cls). A shard that cannot be read to its end (truncated, corrupt) keeps its listed length, with a
    warning: the stream skips what it cannot read and refills the quota, as before the count. URLs are not counted.
    """
    if not urls or any(_is_url(u) for u in urls):
        return list(lengths), [False] * len(urls), 0, None
    start = time.perf_counter()
    threads = max(1, min(8, (os.cpu_count() or 1) // 2, len(urls)))
    with ThreadPoolExecutor(threads) as pool:  # inflating a gzip shard releases the GIL
        counts = list(pool.map(_count, urls))
    held = sum(c.samples for c in counts if isinstance(c, ShardCount))
    wrong = [(u, n, c.samples) for u, n, c in zip(urls, lengths, counts) if isinstance(c, ShardCount)
             and (c.samples > n or (c.ended and c.samples != n))]
    if per_shard and wrong:
        url, claimed, counted = wrong[0]
        raise DataError(f"split '{split}': {root}/_info.json lists {sum(lengths)} samples, its shards hold {held} "
                        f"({len(wrong)} shard(s) differ, e.g. {os.path.basename(url)}: listed {claimed}, "
                        f"holds {counted})")
    ends = [isinstance(c, ShardCount) and c.ended for c in counts]
    if not per_shard and all(ends) and held != sum(lengths):
        raise DataError(f"split '{split}': its pattern gives {sum(lengths)} samples, its shards hold {held}")
    new_lengths, counted, incomplete, example = [], [], 0, None
    for url, n, c, ended in zip(urls, lengths, counts, ends):
        if not ended:
            _logger.warning(f"shard {url} of split '{split}' cannot be read to its end "
                            f"({c if isinstance(c, str) else f'it stops after {c.samples} samples'}): "
                            f"it is used as far as it reads")
        if not ended or not (per_shard or all(ends)):  # lengths of a pattern split stay equal shares of its total
            new_lengths.append(n)
            counted.append(False)
            continue
        new_lengths.append(c.complete)
        counted.append(True)
        incomplete += c.samples - c.complete
        if example is None and c.first_incomplete is not None:
            example = f"{c.first_incomplete} in {os.path.basename(url)}"
    _logger.info(f"split '{split}': {held} samples in {len(urls)} shard(s) counted in "
                 f"{time.perf_counter() - start:.2f} s")
    return new_lengths, counted, incomplete, example


def check_split_entry(where: str, entry) -> None:
    """A split of _info.json that the reader can trust: shard names, one non-negative length per shard, and a sample
    count equal to their sum (a wrong length would silently shift which samples each rank reads)."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    files, lengths, total = entry.get("filenames"), entry.get("shard_lengths", []), entry.get("num_samples")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise DataError(f"{where}: 'filenames' must be a non-empty list of shard names")
    if not isinstance(lengths, list) or not all(type(n) is int and n >= 0 for n in lengths):
        raise DataError(f"{where}: 'shard_lengths' must be non-negative integers, got {lengths!r}"[:300])
    if lengths and len(lengths) != len(files):
        raise DataError(f"{where}: {len(lengths)} shard lengths for {len(files)} files")
    if total is not None and (type(total) is not int or (lengths and total != sum(lengths))):
        raise DataError(f"{where}: num_samples {total!r} is not the sum of the shard lengths ({sum(lengths)})")


def create_source(dataset: str, root: str, split: str, *, in_chans: int = 3, download: bool = False,
                  class_map: str = ""):
    """A source for --dataset: 'wds/NAME' (shards), 'torch/NAME' (torchvision), '' or 'folder' (image folders, their
    class names numbered by ``class_map``'s file when given, timm's format)."""
    image_mode = "RGB" if in_chans == 3 else "L"
    if dataset.startswith("wds/"):
        urls, lengths, info, per_shard = _wds_split(root, split)
        lengths, counted, incomplete, example = count_split(root, split, urls, lengths, per_shard=per_shard)
        if incomplete and not sum(lengths):
            raise DataError(f"split '{split}' of {root}: none of its samples has both an image and a label (.cls), "
                            f"e.g. {example}")
        return WdsSource(urls, lengths, image_mode=image_mode, class_names=info.get("class_names"),
                         num_classes=info.get("num_classes"), counted=counted, incomplete=incomplete,
                         incomplete_example=example, split=split)
    from timm.data import create_dataset

    if not download and not os.path.isdir(root):
        raise DataError(f"data dir {root} does not exist")
    try:
        ds = create_dataset(dataset, root=root, split=split, is_training=False, download=download,
                            search_split=True, class_map=class_map or None)
    except (RuntimeError, FileNotFoundError, ValueError) as exn:
        raise DataError(f"cannot read '{dataset or 'folder'}' split '{split}' from {root}: {exn}"
                        f"{shard_hint(root)}") from None
    except AssertionError as exn:  # timm's load_class_map asserts that the --class-map file exists
        if not class_map:
            raise
        raise DataError(f"--class-map {class_map}: {exn}") from None
    if dataset.startswith("torch/"):
        names = getattr(ds, "classes", None)
    else:
        class_to_idx = getattr(ds.reader, "class_to_idx", {})
        names = sorted(class_to_idx, key=class_to_idx.get) if class_to_idx else None
    if len(ds) == 0:
        raise DataError(f"split '{split}' of {root} is empty")
    return MapSource(ds, image_mode=image_mode, class_names=names)
