"""One way for every command of timm-fcl to refuse bad input: a single ``PROG: error: MESSAGE`` line on stderr and
exit status 2 (argparse's own convention), never a traceback. Under a multi-process launch (accelerate launch,
torchrun) every process refuses alike, and the line is printed once, by the main process."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence


class UsageError(ValueError):
    """A bad flag, file, folder or name given by the user: reported as one line."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are :class:`UsageError` (one line) instead of usage text + exit."""

    def error(self, message):
        raise UsageError(message)


def first_line(exn: BaseException) -> str:
    text = str(exn).strip()
    return text.splitlines()[0] if text else type(exn).__name__


# where a launcher names this process's global rank: torchrun / accelerate launch, then the MPI launchers
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK")


def process_rank() -> int:
    """This process's global rank in a multi-process launch, as the launcher set it; 0 when it runs alone."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def is_main_process() -> bool:
    """Whether this process is the main one (global rank 0) of a multi-process launch, or runs alone."""
    return process_rank() == 0


def this_process_only(exn: BaseException) -> BaseException:
    """Mark ``exn`` as found by this process alone (e.g. in its own share of the data): :func:`run_cli` prints it on
    whichever process raised it, naming the process, as the main process may never see it. Returns ``exn``."""
    exn.this_process_only = True  # type: ignore[attr-defined]
    return exn


def run_cli(prog: str, main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None,
            errors: tuple = ()) -> int:
    """``main(argv)``; a :class:`UsageError` (or one of ``errors``, or an error whose class says ``one_line = True``:
    those of modules that import nothing of this package's commands, e.g. the zoo's) ends as one line on stderr and
    exit status 2. Under a multi-process launch only the main process prints it (every process raises it alike; the
    others exit with the same status quietly), except an error marked :func:`this_process_only`."""
    try:
        main(argv)
    except Exception as exn:  # noqa: BLE001  (anything else is raised again, as it came)
        if not isinstance(exn, (UsageError, *errors)) and not getattr(exn, "one_line", False):
            raise
        if is_main_process():
            print(f"{prog}: error: {first_line(exn)}", file=sys.stderr)
        elif getattr(exn, "this_process_only", False):
            print(f"{prog}: error: {first_line(exn)} (process {process_rank()})", file=sys.stderr)
        return 2
    return 0
