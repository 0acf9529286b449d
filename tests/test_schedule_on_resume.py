"""The learning-rate schedule of a resumed run: --epochs grown on resume rebuilds it for the new length."""
from __future__ import annotations

from train_helpers import TOY_RUN, run, summary_rows, train_cmd, trained_run

FLAGS = [*TOY_RUN, "-b", "16", "--workers", "0", "--method", "xe", "--sched", "cosine", "--train-subset", "32",
         "--val-subset", "16", "--checkpoint-hist", "0"]


def _lrs(out) -> list[float]:
    return [float(row["lr"]) for row in summary_rows(out)]


def test_growing_epochs_on_resume_follows_the_schedule_of_the_longer_run(toy, tmp_path):
    """`--epochs 2` then `--epochs 4` with a cosine schedule gave lr 0.05, 0.025, 0, 0: the restored scheduler kept the
    2-epoch length, so the two added epochs trained nothing. Now the schedule is rebuilt for 4 epochs, with a log line
    saying so, and from the resume point on it is the 4-epoch run's."""
    straight = trained_run(tmp_path / "straight", toy, [*FLAGS, "--epochs", "4"])
    grown = trained_run(tmp_path / "grown", toy, [*FLAGS, "--epochs", "2"])
    proc = run(train_cmd(*FLAGS, "--epochs", "4", "--data-dir", str(toy), "--output", str(grown)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--epochs grew from 2 to 4: the --sched cosine schedule is rebuilt for 4 epochs" in proc.stderr
    lrs, reference = _lrs(grown), _lrs(straight)
    assert len(lrs) == len(reference) == 4
    assert lrs[2] > 0 and lrs[3] > 0, lrs
    assert lrs[2:] == reference[2:], (lrs, reference)
    assert lrs[:2] != reference[:2]  # the first two epochs followed the 2-epoch schedule, as that run was asked to


def test_a_resume_with_the_same_epochs_keeps_the_saved_schedule(toy, tmp_path):
    out = trained_run(tmp_path / "run", toy, [*FLAGS, "--epochs", "1"])
    proc = run(train_cmd(*FLAGS, "--epochs", "1", "--data-dir", str(toy), "--output", str(out)))
    assert proc.returncode == 0 and "rebuilt" not in proc.stderr, proc.stderr[-3000:]
    assert "all 1 epochs are done" in proc.stderr
