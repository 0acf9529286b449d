"""A validation split carved from WebDataset training shards, for choosing hyper-parameters without the test set.

``train_fcl.py --train-subset`` takes the first N of each epoch's shuffled order, a different set every epoch, so it
cannot hold images out. ``carve_validation`` writes a new shard folder once instead: the training split minus
``val_size`` images drawn with a fixed seed (their original order kept), and those images as a ``validation`` split.
``train_fcl.py --data-dir OUT --val-split validation`` then trains on the rest and validates on them. The folder's
``_info.json`` records where it came from; asking again for the same carve finds it and writes nothing.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError
from .shard_info import IMAGE_KEYS, wds_split
from .shards import write_shards


def _samples(urls: list[str]) -> Iterator[tuple[bytes, str, int]]:
    """(image bytes, extension, label) of every sample, shard after shard, in file order."""
    import webdataset as wds

    for url in urls:
        for sample in wds.tarfile_to_samples()([{"url": url}]):
            ext = next((k for k in IMAGE_KEYS if k in sample), None)
            if ext is None or "cls" not in sample:
                raise DataError(f"{url}: sample {sample.get('__key__')} has no image or no .cls")
            yield sample[ext], ext, int(sample["cls"])


def carve_validation(source: str | os.PathLike, output: str | os.PathLike, *, val_size: int, seed: int = 0,
                     split: str = "train", val_split: str = "validation", shard_size: int = 10000) -> dict:
    """Write ``output`` (train = ``split`` of ``source`` minus ``val_size`` seeded picks, ``val_split`` = the picks)
    and return its _info.json; an existing folder made by the same call is returned as it is."""
    output = Path(output)
    recipe = {"source": str(Path(source).resolve()), "split": split, "val_split": val_split, "val_size": val_size,
              "seed": seed}
    info_path = output / "_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("holdout") == recipe:
            return info
        raise DataError(f"{output} holds other shards ({info.get('holdout')}); remove it or choose another folder")
    urls, lengths, source_info = wds_split(str(source), split)
    total = sum(lengths)
    if not 0 < val_size < total:
        raise DataError(f"val_size must lie in (0, {total}), got {val_size}")
    held = set(np.random.default_rng(seed).permutation(total)[:val_size].tolist())
    held_out: list[tuple[bytes, str, int]] = []
    seen = 0

    def kept() -> Iterator[tuple[bytes, str, int]]:
        nonlocal seen
        for i, item in enumerate(_samples(urls)):
            seen = i + 1
            if i in held:
                held_out.append(item)
            else:
                yield item

    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    common = dict(output=partial, name=source_info.get("name", "data"), shard_size=shard_size,
                  num_classes=source_info.get("num_classes"), class_names=source_info.get("class_names"))
    write_shards(kept(), split=split, **common)
    if seen != total:
        raise DataError(f"{source} split '{split}' has {seen} samples, its _info.json lists {total}")
    info = write_shards(held_out, split=val_split, **common)
    info["holdout"] = recipe
    (partial / "_info.json").write_text(json.dumps(info, indent=2))
    partial.rename(output)
    return info
