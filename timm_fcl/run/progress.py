"""Progress for people, not for log files: a tqdm bar is drawn only where someone watches it, a terminal. Its carriage
returns would flood a file (a SLURM log, a CI transcript); there a command prints nothing (training's periodic log
lines tell the progress) or one plain line per finished piece of work (``done_lines``)."""
from __future__ import annotations

import sys
from typing import IO, Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def on_a_terminal(stream: Optional[IO] = None) -> bool:
    """Whether ``stream`` (stderr by default, where tqdm draws) is a terminal; a closed or odd stream is not."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def show_progress(enabled: bool = True, stream: Optional[IO] = None) -> bool:
    """Whether to draw a progress bar: ``enabled`` (e.g. not --no-progress, and the main process) and ``stream`` a
    terminal."""
    return bool(enabled) and on_a_terminal(stream)


def progress_bar(iterable: Optional[Iterable[T]] = None, *, enabled: bool = True, stream: Optional[IO] = None,
                 **tqdm_kwargs):
    """A tqdm bar on ``stream`` (stderr) when :func:`show_progress`; otherwise a disabled one, which writes nothing
    (its ``update`` and ``close`` do nothing, iterating it is iterating ``iterable``)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=not show_progress(enabled, stream), file=stream, **tqdm_kwargs)


def note_done(message: str, stream: Optional[IO] = None) -> None:
    """Print ``message`` as one line on ``stream`` (stderr) where no bar shows the progress (not a terminal)."""
    if not on_a_terminal(stream):
        print(message, file=sys.stderr if stream is None else stream, flush=True)


def done_lines(items: Iterable[T], desc: str, *, total: Optional[int] = None, name: Callable[[T], str] = str,
               leave: bool = True, stream: Optional[IO] = None) -> Iterator[T]:
    """Yield ``items`` with a bar on a terminal; elsewhere print ``DESC: NAME (i/n) done`` to ``stream`` (stderr) as
    each item's work is finished (when the next item is asked for, or the loop ends), so a log shows the progress."""
    if show_progress(True, stream):
        yield from progress_bar(items, stream=stream, desc=desc, total=total, leave=leave)
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    for i, item in enumerate(items, 1):
        yield item
        note_done(f"{desc}: {name(item)} ({i}/{total if total is not None else '?'}) done", stream)
