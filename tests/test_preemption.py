"""A run asked to stop by a signal (SIGTERM from a scheduler, SIGINT from Ctrl-C, a --save-on-signal signal) saves the
step in flight, releases its lock and exits 128 + the signal's number with one line; the same command resumes from
that very step and ends bit-identical to an uninterrupted run, with the same summary.csv."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from train_helpers import same_weights, ROOT, TOY_RUN, env, run, train_cmd, trained_run

# 2 epochs of 12 steps, a log line every step (the test waits for one to send its signal); no interval saves, so only
# the signal's save can hold a mid-epoch state
TOY = [*TOY_RUN, "-b", "16", "--log-interval", "1", "--epochs", "2", "--workers", "1", "--state-hist", "10"]
STOPPED = re.compile(r"^train_fcl\.py: stopped by (SIG\w+) at epoch (\d+) batch (\d+) \(step (\d+)\), the state saved "
                     r"in (.+): run the same command to resume$")


def _exports(out: Path) -> dict:
    return load_file(out / "model" / "model.safetensors")


def _same(a: Path, b: Path) -> bool:
    return same_weights(_exports(a), _exports(b))


def _signal_at(cmd: list[str], signum: int, after_step: int) -> subprocess.CompletedProcess:
    """Run cmd and send it ``signum`` once it logs a step >= after_step."""
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    sent = False
    for line in proc.stderr:
        lines.append(line)
        m = re.search(r" step (\d+) batch ", line)
        if not sent and m and int(m.group(1)) >= after_step:
            os.kill(proc.pid, signum)
            sent = True
    proc.wait(timeout=300)
    assert sent, "".join(lines)[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, proc.stdout.read(), "".join(lines))


@pytest.fixture(scope="module")
def straight(toy, tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("straight") / "run", toy, TOY)


def _stopped_line(proc: subprocess.CompletedProcess, name: str) -> re.Match:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [m for line in proc.stderr.splitlines() if (m := STOPPED.match(line))]
    assert len(lines) == 1 and lines[0].group(1) == name, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_mid_epoch_saves_that_step_and_the_same_command_resumes_it_bit_identically(straight, toy, tmp_path,
                                                                                          name):
    out = tmp_path / "run"
    cmd = train_cmd(*TOY, "--data-dir", str(toy), "--output", str(out))
    signum = getattr(signal, name)
    stopped = _signal_at(cmd, signum, after_step=3)
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    m = _stopped_line(stopped, name)
    epoch, batch, step = int(m.group(2)), int(m.group(3)), int(m.group(4))
    assert (epoch, Path(m.group(5))) == (0, out) and 3 <= step < 12 and batch == step  # mid-epoch, not an epoch end
    assert not (out / ".lock").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step_{step:09d}"]

    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{step:09d}'}: epoch 0, batch {batch}, step {step}" \
        in resumed.stderr
    assert _same(straight, out)
    assert (out / "summary.csv").read_text() == (straight / "summary.csv").read_text()  # the epoch's loss included


def test_save_on_signal_adds_a_signal_and_a_bad_name_is_one_line(straight, toy, tmp_path):
    out = tmp_path / "run"
    cmd = train_cmd(*TOY, "--data-dir", str(toy), "--output", str(out), "--save-on-signal", "SIGUSR1")
    stopped = _signal_at(cmd, signal.SIGUSR1, after_step=14)  # in the second epoch
    assert stopped.returncode == 128 + signal.SIGUSR1
    m = _stopped_line(stopped, "SIGUSR1")
    assert int(m.group(2)) == 1 and not (out / ".lock").exists()
    assert run(cmd).returncode == 0 and _same(straight, out)

    bad = run(train_cmd(*TOY, "--data-dir", str(toy), "--output", str(tmp_path / "bad"), "--save-on-signal", "SIGKIL"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("train_fcl.py: error: --save-on-signal SIGKIL: not a signal")
    assert not (tmp_path / "bad").exists()


def test_two_processes_stop_on_the_same_step_and_resume_identically(toy, tmp_path):
    argv = [*TOY, "--data-dir", str(toy), "--train-subset", "96", "--epochs", "3"]  # 3 steps an epoch
    straight = tmp_path / "straight"
    assert run(train_cmd(*argv, "--output", str(straight), processes=2)).returncode == 0
    out = tmp_path / "run"
    cmd = train_cmd(*argv, "--output", str(out), processes=2)
    stopped = _signal_at(cmd, signal.SIGTERM, after_step=4)  # to the launcher, which passes it on to both ranks
    assert stopped.returncode == 128 + signal.SIGTERM
    step = int(_stopped_line(stopped, "SIGTERM").group(4))  # printed once, by the main process
    assert (out / "checkpoints" / f"step_{step:09d}" / "rng_1.safetensors").is_file()
    assert not (out / ".lock").exists()
    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step_{step:09d}" in resumed.stderr and _same(straight, out)


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    from train_helpers import make_shards

    data = make_shards(tmp_path / "bad", bad_label_at=5)
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(data), "--output", str(out)))
    assert proc.returncode == 2 and "outside [0, 10)" in proc.stderr
    assert not out.exists()


def test_the_time_based_save_writes_mid_epoch_states(straight, toy, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(toy), "--output", str(out), "--checkpoint-minutes", "1e-9"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").iterdir())
    assert steps == list(range(15, 25))  # every step saves; the newest 10 are kept
    assert _same(straight, out)  # saving changes nothing the run computes
    shutil.rmtree(out)
