"""The data's one error type: bad data input, reported as one line (and a missing split, which names the splits
there are)."""
from __future__ import annotations

from typing import Sequence


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

