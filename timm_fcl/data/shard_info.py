"""A shard folder's ``_info.json`` and what it promises: the splits it lists, their shards and lengths, checked
against the shards' tar headers before a run (``tarindex``, no image decoded); and the detection of a shard folder
given without --dataset."""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from .. import _compat
from .errors import DataError, MissingSplit
from .tarindex import ShardCount, UnreadableShard, count_shard

_logger = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# names of a validation split, as timm's readers know them; a request for one finds another, never the test split
# (choosing the best epoch or a schedule on test data must be asked for by name: --val-split test)
VAL_SYNONYMS = ("validation", "val", "valid", "eval", "evaluation")


def is_complete(extensions: set) -> bool:
    """A sample the reader can train on: an image and a label (.cls), by its extensions."""
    return "cls" in extensions and any(k in extensions for k in IMAGE_KEYS)


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
    twice = next((f for i, f in enumerate(files) if f in files[:i]), None)
    if twice is not None:  # its samples would be read twice an epoch and another shard's never
        raise DataError(f"{where}: lists shard {twice} twice")
    if not isinstance(lengths, list) or not all(type(n) is int and n >= 0 for n in lengths):
        raise DataError(f"{where}: 'shard_lengths' must be non-negative integers, got {lengths!r}"[:300])
    if lengths and len(lengths) != len(files):
        raise DataError(f"{where}: {len(lengths)} shard lengths for {len(files)} files")
    if total is not None and (type(total) is not int or (lengths and total != sum(lengths))):
        raise DataError(f"{where}: num_samples {total!r} is not the sum of the shard lengths ({sum(lengths)})")
