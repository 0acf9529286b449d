"""Crash-safe writes: a file or a folder is written under a temporary name in the same folder, flushed to the disk
and renamed into place, so a process killed while writing leaves the previous version untouched."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


class WriteError(RuntimeError):
    """A file or folder could not be written (a full disk, a read-only folder): what was there before is kept;
    reported as one line."""


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex): what a saved state's manifest and an evaluation record of a weights file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's entries to the disk (a folder: the names of the files in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def swap_dir(tmp: Path, final: Path) -> None:
    """Put a finished folder in place of `final`; the old one is removed only after the new one is there.

    Its files and entries reach the disk before the rename: otherwise a power loss could leave the new name on empty
    files after the old folder is gone."""
    for path in tmp.iterdir():
        fsync(path)
    fsync(tmp)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)
