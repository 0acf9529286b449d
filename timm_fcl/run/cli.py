"""One way for every command of timm-fcl to refuse bad input: a single ``PROG: error: MESSAGE`` line on stderr and
exit status 2 (argparse's own convention), never a traceback."""
from __future__ import annotations

import argparse
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


def run_cli(prog: str, main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None,
            errors: tuple = ()) -> int:
    """``main(argv)``; a :class:`UsageError` (or one of ``errors``) ends as one line on stderr and exit status 2."""
    try:
        main(argv)
    except (UsageError, *errors) as exn:
        print(f"{prog}: error: {first_line(exn)}", file=sys.stderr)
        return 2
    return 0
