"""Progress bars only on a terminal: a log file (stderr piped, as under SLURM or CI) gets no carriage returns, only
plain lines."""
from __future__ import annotations

import io

from timm_fcl.run.progress import done_lines, progress_bar, show_progress
from train_helpers import TOY_RUN, run, train_cmd


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_only_and_when_enabled():
    piped, closed = io.StringIO(), io.StringIO()
    closed.close()
    assert not show_progress(True, piped) and not show_progress(True, closed) and not show_progress(True, object())
    assert show_progress(True, Terminal()) and not show_progress(False, Terminal())

    bar = progress_bar(total=3, desc="epoch 0", stream=piped)
    bar.update(3)
    bar.close()
    assert piped.getvalue() == ""
    terminal = Terminal()
    assert list(progress_bar(range(3), desc="epoch 0", stream=terminal)) == [0, 1, 2]
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_done_lines_print_one_plain_line_per_finished_item_off_a_terminal():
    piped, seen = io.StringIO(), []
    for item in done_lines(["clean", "un", "nun"], "evaluating m", stream=piped):
        seen.append((item, piped.getvalue().count("\n")))  # nothing printed for an item before its work is done
    assert seen == [("clean", 0), ("un", 1), ("nun", 2)]
    assert piped.getvalue().splitlines() == ["evaluating m: clean (1/3) done", "evaluating m: un (2/3) done",
                                             "evaluating m: nun (3/3) done"]
    terminal = Terminal()
    assert list(done_lines(iter("ab"), "generating corruptions", stream=terminal)) == ["a", "b"]
    assert "done" not in terminal.getvalue() and "\r" in terminal.getvalue()


def test_training_with_stderr_piped_writes_no_carriage_returns(toy, tmp_path):
    flags = [f for f in TOY_RUN if f != "--no-progress"]  # the bars as a user gets them by default
    proc = run(train_cmd(*flags, "-b", "16", "--train-subset", "48", "--epochs", "1", "--log-interval", "1",
                         "--workers", "0", "--data-dir", str(toy), "--output", str(tmp_path / "run")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr
    assert "epoch 0 validation" in proc.stderr  # the log lines are there, only the bars are not
