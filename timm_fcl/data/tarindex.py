"""Count the samples of a WebDataset shard from its tar headers alone, without decoding any image.

A sample is what webdataset's ``tarfile_to_samples`` yields: the regular members of the tar, in order, grouped by
their key (the member name up to the first dot of its base name); a new sample starts wherever the key changes.
``count_shard`` reproduces that grouping from the member names that Python's ``tarfile`` reads (any tar dialect and
compression it knows), which is what lets ``streams`` check ``_info.json``'s shard lengths before a run starts and
leave out the samples without a label.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import tarfile
import zlib
from typing import Callable, Iterator, Optional

_BLOCK = 512
# webdataset 1.0.2: tariterators.base_plus_ext, and the metadata members tar_file_iterator skips
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")


class UnreadableShard(Exception):
    """The shard is not a tar that can be read (not a tar, not a compression tarfile knows, a duplicate name)."""


@dataclasses.dataclass
class ShardCount:
    samples: int = 0  # samples as webdataset yields them
    complete: int = 0  # of which ``is_complete`` accepts (an image and a label)
    first_incomplete: Optional[str] = None  # the key of the first other one
    ended: bool = True  # False: the tar stops before its end-of-archive block (truncated): counts are a lower bound


def _members(path: str | os.PathLike) -> Iterator[tuple[Optional[str], bool]]:
    """(name, is a regular file) of each member of the tar at ``path``; then (None, ended) once: ended is False for a
    tar cut short (a compressed stream that stops early, a header or member data past the end of the file)."""
    size = os.path.getsize(path)
    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, EOFError, zlib.error) as exn:
        raise UnreadableShard(f"{type(exn).__name__}: {exn}") from None
    with tar:
        plain = isinstance(tar.fileobj, io.BufferedReader)  # else a GzipFile, BZ2File, LZMAFile
        try:
            for member in tar:
                yield member.name, member.isreg()
        except (tarfile.TarError, EOFError, OSError, zlib.error):  # a compressed stream cut short
            yield None, False
            return
        # tarfile ends quietly where a plain tar is cut short and where a header is damaged (a corrupt compressed
        # stream inflates to such garbage): what follows its last member must be the end-of-archive blocks, zeros
        # to the end of the (inflated) stream
        yield None, _zeros_to_the_end(tar, size if plain else None)


def _zeros_to_the_end(tar: tarfile.TarFile, size: Optional[int]) -> bool:
    """Whether the archive holds only zeros from tar.offset (where tarfile stopped) to its end, at least the two
    end-of-archive blocks; for a compressed one (``size`` None) also that the stream inflates cleanly to its end."""
    stream = tar.fileobj
    if size is not None and tar.offset + 2 * _BLOCK > size:
        return False
    try:
        stream.seek(tar.offset)
        seen = 0
        while chunk := stream.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return False
            seen += len(chunk)
    except (OSError, EOFError, zlib.error):  # a CRC or inflate error before the end
        return False
    return seen >= 2 * _BLOCK


# ------------------------------------------------------------------------------------------------------ counting
def _group(members: Iterator[tuple[Optional[str], bool]], is_complete: Callable[[set], bool]) -> ShardCount:
    count, key, exts = ShardCount(), None, set()

    def close() -> None:
        count.samples += 1
        if is_complete(exts):
            count.complete += 1
        elif count.first_incomplete is None:
            count.first_incomplete = key

    for name, regular in members:
        if name is None:
            count.ended = regular
            break
        if not regular or ("/" not in name and name.startswith("__") and name.endswith("__")) or _META.match(name):
            continue
        match = _KEY_EXT.match(name)
        if match is None:
            continue
        prefix, ext = match.group(1), match.group(2).lower()
        if prefix != key:
            if key is not None:
                close()
            key, exts = prefix, set()
        if ext in exts:  # webdataset refuses the shard
            raise UnreadableShard(f"{name}: duplicate file name in the tar")
        exts.add(ext)
    if key is not None:
        close()
    return count


def count_shard(path: str | os.PathLike, is_complete: Callable[[set], bool]) -> ShardCount:
    """The samples of a local tar shard (plain or compressed), counted from its headers.

    ``is_complete`` gets the set of a sample's extensions (lower case, as webdataset's sample keys) and says whether
    it is usable. Raises UnreadableShard for a file that is not a readable tar or that webdataset would refuse."""
    try:
        return _group(_members(path), is_complete)
    except OSError as exn:
        raise UnreadableShard(f"{type(exn).__name__}: {exn}") from None
