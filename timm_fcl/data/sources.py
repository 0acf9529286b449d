"""Where a stream's samples come from: WebDataset shards read raw (no decoding until the stream's worker needs the
image), or a map-style data set (torchvision, image folders); ``create_source`` builds one for --dataset."""
from __future__ import annotations

import io
import os
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .errors import DataError
from .shard_info import IMAGE_KEYS, _wds_split, count_split, is_complete, shard_hint


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

    def __init__(self, dataset, *, image_mode: str = "RGB", class_names: Optional[Sequence[str]] = None,
                 class_to_idx: Optional[dict] = None, empty_classes: Sequence[str] = ()):
        self.dataset, self.image_mode = dataset, image_mode
        self.class_names = list(class_names) if class_names else None
        self.num_classes = len(class_names) if class_names else None
        self.class_to_idx = class_to_idx  # an image folder's numbering of its class folders
        self.empty_classes = list(empty_classes)  # classes of that numbering with no image in this split

    def __len__(self) -> int:
        return len(self.dataset)

    def order(self, rng: Optional[np.random.Generator]) -> np.ndarray:
        return np.arange(len(self.dataset)) if rng is None else rng.permutation(len(self.dataset))

    def raw(self, positions: Sequence[int], order: np.ndarray, on_bad_shard, on_incomplete=None) -> Iterator:
        return (int(order[p]) for p in positions)

    def load(self, index: int) -> tuple[Image.Image, int]:
        img, target = self.dataset[index]
        return img.convert(self.image_mode), int(target)


def create_source(dataset: str, root: str, split: str, *, in_chans: int = 3, download: bool = False,
                  class_map: Union[str, dict] = ""):
    """A source for --dataset: 'wds/NAME' (shards), 'torch/NAME' (torchvision), '' or 'folder' (image folders, their
    class names numbered by ``class_map``: timm's file format, or a {class name: index} mapping, e.g. the training
    split's, so that a validation folder lacking a class keeps the training numbering)."""
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
    class_to_idx, empty = None, []
    if dataset.startswith("torch/"):
        names = getattr(ds, "classes", None)
    else:
        class_to_idx = dict(getattr(ds.reader, "class_to_idx", {})) or None
        names = sorted(class_to_idx, key=class_to_idx.get) if class_to_idx else None
        samples = getattr(ds.reader, "samples", None)
        if class_to_idx and samples is not None:
            present = {int(target) for _, target in samples}
            empty = [name for name in names if class_to_idx[name] not in present]
    if len(ds) == 0:
        raise DataError(f"split '{split}' of {root} is empty")
    return MapSource(ds, image_mode=image_mode, class_names=names, class_to_idx=class_to_idx, empty_classes=empty)
