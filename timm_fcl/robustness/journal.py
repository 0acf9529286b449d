"""The rows of an unfinished evaluation, kept so that rerunning the same command continues where it stopped.

    OUTPUT/results.partial.jsonl
      {"command": {...}}                    what is being computed: the flags that change the numbers, and the size
                                            and modification time of every local weights file
      {"model": ..., "suite": ..., ...}     one result row per finished (model, set), appended as the set finishes

A rerun with the same command (same fingerprint) takes the finished rows and evaluates only the rest; another command
is refused, so rows of different evaluations are never mixed. The file goes once results.json is written.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Mapping

from .evaluation import row_key

PARTIAL = "results.partial.jsonl"


class Journal:
    """Finished rows of one command, read from ``path`` (``done``) and appended to it (``record``)."""

    def __init__(self, path: str | os.PathLike, command: Mapping):
        self.path = Path(path)
        self._torn = False  # the file ends inside a line: the next row starts on a new one
        self.command = json.loads(json.dumps(command))  # as it reads back from the file (tuples become lists)
        self.done: Dict[tuple, dict] = self._read()

    def _read(self) -> Dict[tuple, dict]:
        if not self.path.is_file():
            return {}
        text = self.path.read_text()
        self._torn = not text.endswith("\n")
        lines = text.splitlines()
        try:
            header = json.loads(lines[0]).get("command") if lines else None
        except (json.JSONDecodeError, AttributeError):
            raise ValueError(f"{self.path} does not start with the command it continues (cut short?): delete it to "
                             f"start this evaluation afresh") from None
        if header != self.command:
            changed = sorted(k for k in set(header or {}) | set(self.command)
                             if (header or {}).get(k) != self.command.get(k))
            raise ValueError(f"{self.path} holds an unfinished evaluation of another command (it differs in "
                             f"{', '.join(changed[:4])}); rerun that command to finish it, or delete the file")
        rows = {}
        for line in lines[1:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a run killed while writing it
                continue
            rows[row_key(row)] = row
        return rows

    def record(self, row: Mapping) -> None:
        """Append one finished row (the header first when the file is new), flushed to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        with open(self.path, "a") as f:
            if new:
                f.write(json.dumps({"command": self.command}) + "\n")
            elif self._torn:
                f.write("\n")
                self._torn = False
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[row_key(row)] = dict(row)

    def finish(self) -> None:
        """The evaluation is complete (its reports are written): nothing is left to continue."""
        self.path.unlink(missing_ok=True)
