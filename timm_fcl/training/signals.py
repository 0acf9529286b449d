"""Stopping a run cleanly when a scheduler or a user asks: SIGTERM (SLURM, Kubernetes, spot instances), SIGINT
(Ctrl-C) and any signal named by --save-on-signal make the run finish the step in flight, save a full state, release
its lock and exit with 128 + the signal's number; the same command then resumes from that step, bit-identically.

A handler only records the signal; the training loop polls it after each optimizer step, all ranks together (one
small all-reduce per step when there are several processes), so every rank saves the same step. A second signal
stops at once: the states are written atomically, so the newest complete one is kept. The same poll carries the
time-based save (--checkpoint-minutes), so a hard kill never costs more than that much training.
"""
from __future__ import annotations

import signal
import time
from typing import Optional, Sequence

import torch

from ..run.cli import UsageError

DEFAULT_SIGNALS = ("SIGTERM", "SIGINT")


class Stopped(Exception):
    """The run stopped on a signal; ``code`` is the exit status (128 + the signal's number); ``quiet`` on every rank
    but the main one, so the line is printed once."""

    def __init__(self, message: str, signum: int, quiet: bool = False):
        super().__init__(message)
        self.code, self.quiet = 128 + signum, quiet


def parse_signals(names: Sequence[str]) -> list[int]:
    """Signal numbers for names like SIGUSR1 or USR1; a UsageError for anything else."""
    numbers = []
    for name in names:
        full = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        number = getattr(signal.Signals, full, None) if full in signal.Signals.__members__ else None
        if number is None or full in ("SIGKILL", "SIGSTOP"):
            raise UsageError(f"--save-on-signal {name}: not a signal this process can handle (e.g. SIGUSR1)")
        numbers.append(int(number))
    return numbers


class StopRequests:
    """Signal handlers that record a request to save and stop, and the clock of the time-based save; a context manager
    that puts the previous handlers back."""

    def __init__(self, extra: Sequence[str] = (), minutes: float = 0.0):
        self.signals = sorted(set(parse_signals([*DEFAULT_SIGNALS, *extra])))
        self.minutes = minutes
        self.signum: Optional[int] = None
        self.last_save = time.monotonic()
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        for number in self.signals:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now, the newest complete state is kept
            raise Stopped(f"stopped by a second {signal.Signals(signum).name} before the state was saved; the newest "
                          f"saved state is kept: run the same command to resume from it", signum)
        self.signum = signum

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def poll(self, accelerator) -> tuple[Optional[int], bool]:
        """(the signal every rank now stops on or None, whether the time-based save is due), the same on every rank:
        a collective when there are several processes."""
        due = bool(self.minutes) and time.monotonic() - self.last_save >= 60 * self.minutes
        if accelerator.num_processes == 1:
            return self.signum, due
        flags = torch.tensor([[self.signum or 0, int(due)]], device=accelerator.device)
        every = accelerator.gather(flags).reshape(-1, 2).tolist()  # rank 0's row first
        signum = max(row[0] for row in every)  # a signal caught by any rank stops every rank
        return (signum or None), bool(every[0][1])  # the main process's clock decides the save
