"""An exclusive lock on a run folder, so two runs never write one folder's states and exports at once.

The lock is a file holding the holder's host, pid and a run id, published whole by a hard link that fails if the file
exists (atomic on local disks and NFS). A lock whose holder is a dead process on this host is taken over with a
warning; a holder on another host cannot be checked from here, so such a lock stays until it is removed by hand.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Optional

_logger = logging.getLogger(__name__)


class LockedError(RuntimeError):
    """The run folder is locked by another live run."""


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell a live holder from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():  # our own pid: left by an earlier life of this pid
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    started = holder.get("started_ticks")
    return started is None or _start_time(pid) in (None, started)


def _read(path: Path) -> Optional[dict]:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written or foreign: treat as held by an unknown process
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict) -> str:
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"


class RunLock:
    """A lock file ``path`` in the folder it guards: ``acquire()`` or raise :class:`LockedError` naming the holder;
    ``release()`` removes the file if it is still ours, and the folders acquire() created if the run left them empty
    (a refused run leaves nothing behind)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.folder = self.path.parent
        self.run_id = uuid.uuid4().hex
        self.held = False
        self._created: list[Path] = []

    def _mkdirs(self) -> None:
        missing = [p for p in [self.folder, *self.folder.parents] if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first, the order rmdir needs

    def _create(self) -> bool:
        """Publish our lock file whole: written under a private name, then hard-linked to the lock's name (atomic, and
        failing if the name exists, on local disks and NFS alike), so a reader never sees a half-written holder."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id,
              "started_ticks": _start_time(os.getpid()), "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        mine = self.path.with_name(f"{self.path.name}.{self.run_id}.new")
        mine.write_text(json.dumps(me))
        try:
            os.link(mine, self.path)
        except FileExistsError:
            return False
        finally:
            mine.unlink()
        return True

    def _take_over(self, stale: dict) -> None:
        """Move a dead holder's file aside; if a new holder's file got in between, put that one back."""
        aside = self.path.with_name(f"{self.path.name}.{self.run_id}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != stale:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        os.unlink(aside)

    def acquire(self) -> "RunLock":
        self._mkdirs()
        for _ in range(5):
            if self._create():
                self.held = True
                return self
            holder = _read(self.path)
            if holder is None:  # released meanwhile
                continue
            if holder.get("host") != socket.gethostname() or _alive(holder):
                self._remove_created()
                raise LockedError(f"{self.folder} is in use by another run ({describe(holder)}; lock file "
                                  f"{self.path}); wait for it to end, or remove the lock file if that run is gone")
            _logger.warning(f"taking over the lock of {self.folder} from a dead run ({describe(holder)})")
            self._take_over(holder)
        self._remove_created()
        raise LockedError(f"could not lock {self.folder}: other runs keep taking it")

    def release(self) -> None:
        if self.held and (_read(self.path) or {}).get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)
        self.held = False
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # the run wrote something there: keep it
                break
        self._created = []

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
