"""Runs that cannot be mixed up or silently wrong: one run per --output (a lock), a resume only with the run's own
settings, every input checked before any work, and a diverged or undecodable run stopped before it saves anything."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from train_helpers import ROOT, TOY_RUN, env, make_shards, one_error_line, run, train_cmd, tree_digest

FAST = [*TOY_RUN, "-b", "16", "--log-interval", "2", "--train-subset", "64"]


def _parallel(cases: dict) -> dict:
    """Run each case's command at once; {name: (returncode, stderr)}."""
    procs = {k: subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True) for k, cmd in cases.items()}
    return {k: (p.wait(timeout=600), p.stderr.read()) for k, p in procs.items()}


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(out / "model" / "model.safetensors")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------------------------------------------------- the lock
def test_second_run_on_one_output_is_refused_naming_the_holder_and_the_first_trains_as_if_alone(toy, tmp_path):
    args = [*FAST, "--data-dir", str(toy), "--epochs", "1", "--workers", "0"]
    shared = tmp_path / "shared"
    first = subprocess.Popen(train_cmd(*args, "--output", str(shared)), env=env(), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    solo = subprocess.Popen(train_cmd(*args, "--output", str(tmp_path / "solo")), env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (shared / ".lock").exists() and time.time() < deadline:
        assert first.poll() is None, first.stderr.read()[-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # the first run surely still holds the folder while the second starts
    try:
        second = run(train_cmd(*args, "--output", str(shared)))
        first.send_signal(signal.SIGCONT)
        line = one_error_line("second", second.returncode, second.stderr)
        print(line)
        assert f"host {socket.gethostname()}, pid {first.pid}" in line and "in use by another run" in line
        assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
        assert solo.wait(timeout=600) == 0, solo.stderr.read()[-3000:]
    finally:
        for proc in (first, solo):
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    assert _same_weights(_weights(shared), _weights(tmp_path / "solo"))
    assert not (shared / ".lock").exists()  # released at the end


def test_lock_of_a_dead_process_is_taken_over_a_live_one_refused_and_a_refusal_leaves_nothing(tmp_path, caplog):
    from timm_fcl.training.lock import LockedError, RunLock

    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (folder / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "run_id": "old"}))
    lock = RunLock(folder / ".lock").acquire()
    assert "taking over the lock" in caplog.text and f"pid {dead.pid}" in caplog.text
    assert json.loads((folder / ".lock").read_text())["run_id"] == lock.run_id
    lock.release()
    assert not (folder / ".lock").exists()

    live = {"host": socket.gethostname(), "pid": os.getppid(), "run_id": "live"}
    (folder / ".lock").write_text(json.dumps(live))
    with pytest.raises(LockedError, match=f"pid {os.getppid()}"):
        RunLock(folder / ".lock").acquire()
    with pytest.raises(LockedError, match="host elsewhere"):  # another host's pid cannot be checked from here
        (folder / ".lock").write_text(json.dumps({**live, "host": "elsewhere", "pid": dead.pid}))
        RunLock(folder / ".lock").acquire()

    fresh = tmp_path / "new" / "deeper"
    with RunLock(fresh / ".lock").acquire():
        assert (fresh / ".lock").exists()
    assert not (tmp_path / "new").exists()  # the folders the lock made, removed with it when left empty


# ------------------------------------------------------------------------------------------------------- resuming
def test_resume_with_a_setting_that_changes_the_result_is_refused_naming_it(toy, tmp_path):
    out = tmp_path / "run"
    base = [*FAST, "--data-dir", str(toy), "--workers", "0", "--output", str(out)]
    first = run(train_cmd(*base, "--epochs", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree_digest(out)
    cases = {"batch_size 16 -> 32": ["-b", "32"], "method fcl -> xe": ["--method", "xe"],
             "model resnet18 -> resnet10t": ["--model", "resnet10t"], "img_size 16 -> 24": ["--img-size", "24"],
             "seed 42 -> 7": ["--seed", "7"], "opt sgd -> adamw": ["--opt", "adamw"]}
    copies = {k: tmp_path / f"copy{i}" for i, k in enumerate(cases)}  # one each: the lock would serialize them
    for copy in copies.values():
        shutil.copytree(out, copy)
    results = _parallel({k: train_cmd(*base, "--epochs", "2", *extra, "--output", str(copies[k]))
                         for k, extra in cases.items()})
    for difference, (code, stderr) in results.items():
        line = one_error_line(difference, code, stderr)
        print(line)
        assert line.startswith(f"train_fcl.py: error: resume with other settings than the run in {copies[difference]}: ")
        assert difference in line.split(": ")[-1].split(", "), line
        assert tree_digest(copies[difference]) == before  # a refused resume loads nothing and writes nothing


def test_a_refusal_under_two_processes_is_printed_once_by_the_main_process(toy, tmp_path):
    out = tmp_path / "run"
    base = [*TOY_RUN, "-b", "16", "--train-subset", "32", "--workers", "0", "--epochs", "1", "--data-dir", str(toy),
            "--output", str(out)]
    first = run(train_cmd(*base))  # one process is enough to start from: a changed flag is named before the world size
    assert first.returncode == 0, first.stderr[-3000:]
    again = run(train_cmd(*base, "--smoothing", "0", processes=2))  # both processes refuse the changed setting
    assert again.returncode != 0
    refusals = [line for line in again.stderr.splitlines() if "resume with other settings" in line]
    want = f"train_fcl.py: error: resume with other settings than the run in {out}: smoothing 0.1 -> 0.0"
    assert refusals == [want], again.stderr[-3000:]
    # torchrun's failure report names the main process's status (the other may be ended by torchrun first)
    statuses = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s+exitcode\s*:\s*(-?\d+)", again.stderr)
    assert ("0", "2") in statuses or ("1", "2") in statuses, again.stderr[-3000:]


def test_run_cli_prints_on_the_main_process_only_unless_the_error_is_this_process_alone(monkeypatch, capsys):
    from timm_fcl.run.cli import RANK_VARIABLES, UsageError, run_cli, this_process_only

    def refuse(error: Exception) -> Callable[[object], None]:
        def main(argv: object) -> None:
            raise error
        return main

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert run_cli("prog", refuse(UsageError("bad flag"))) == 2
        assert capsys.readouterr().err == ("prog: error: bad flag\n" if printed else "")
    assert run_cli("prog", refuse(this_process_only(UsageError("label 12 is outside [0, 10)")))) == 2
    assert capsys.readouterr().err == "prog: error: label 12 is outside [0, 10) (process 1)\n"
    monkeypatch.delenv("RANK")  # no launcher: a process alone is the main one
    assert run_cli("prog", refuse(UsageError("bad flag"))) == 2
    assert capsys.readouterr().err == "prog: error: bad flag\n"


def test_setting_changes_name_flags_first_then_derived_values_and_epochs_may_only_grow():
    from timm_fcl.run.folder import setting_changes

    saved = {"settings": {"batch_size": 16, "workers": 2}, "fcl": {"k": 64}, "world_size": 1, "epochs": 4}
    assert setting_changes(saved, {**saved, "settings": {"batch_size": 32}, "fcl": {"k": 32}}) == ["batch_size 16 -> 32"]
    assert setting_changes(saved, {**saved, "fcl": {"k": 32}}) == ["fcl.k 64 -> 32"]
    assert setting_changes(saved, {**saved, "epochs": 6}) == []
    assert setting_changes(saved, {**saved, "epochs": 2}) == ["epochs 4 -> 2 (a run's epochs may only grow)"]


def test_resume_mid_epoch_with_other_workers_ends_with_the_weights_of_the_straight_run(toy, tmp_path):
    straight = tmp_path / "straight"
    args = [*FAST, "--data-dir", str(toy), "--epochs", "2", "--checkpoint-interval", "3", "--state-hist", "10"]
    proc = run(train_cmd(*args, "--workers", "0", "--output", str(straight)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cut = tmp_path / "cut"  # the straight run as a kill after step 3 (batch 3 of 4 in epoch 0) would leave it
    shutil.copytree(straight, cut)
    for later in [p for p in (cut / "checkpoints").iterdir() if p.name != "step_000000003"]:
        shutil.rmtree(later)
    shutil.rmtree(cut / "model")
    for workers in ("2", "3"):
        out = tmp_path / f"workers{workers}"
        shutil.copytree(cut, out)
        again = run(train_cmd(*args, "--workers", workers, "--output", str(out)))
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resumed from" in again.stderr and "epoch 0, batch 3, step 3" in again.stderr
        assert _same_weights(_weights(out), _weights(straight)), f"--workers {workers}"


# ----------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("extra, expected", [
    (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["-b", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--lr", "-0.1"], "argument --lr: must be >= 0, got -0.1"),
    (["--lr", "nan"], "argument --lr: must be a finite number, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
    (["--fcl-weight", "nan"], "argument --fcl-weight: must be a finite number, got nan"),
    (["--sched", "foo"], "argument --sched: unknown scheduler 'foo'"),
    (["--opt", "foo"], "argument --opt: unknown optimizer 'foo'"),
    (["--mean", "0.5", "0.5"], "argument --mean: 2 values for 3 input channels (give 1 or 3)"),
    (["--grad-accum-steps", "0"], "argument --grad-accum-steps: must be >= 1, got 0"),
    (["--log-interval", "0"], "argument --log-interval: must be >= 1, got 0"),
    (["--fcl-tau", "0"], "need sigma >= 0, tau > 0"),
    (["--config", "{syntax}"], "YAML syntax error at line 2"),
    (["--config", "{typed}"], "epochs: expected an integer, got 2.5"),
    (["--config", "{boolean}"], "mixed_precision: expected a string (quote words YAML reads as booleans), got False"),
    (["--output", "{file}"], "is a file, not a folder"),
    (["--output", "{readonly}/run"], "is not writable"),
])
def test_bad_flag_is_one_error_line_before_anything_is_written(toy, tmp_path, capsys, extra, expected):
    import train_fcl

    (tmp_path / "syntax.yaml").write_text("epochs: [1\n")
    (tmp_path / "typed.yaml").write_text("epochs: 2.5\n")
    (tmp_path / "boolean.yaml").write_text("mixed_precision: no\n")
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "readonly").mkdir(mode=0o555)
    names = {k: str(tmp_path / v) for k, v in [("syntax", "syntax.yaml"), ("typed", "typed.yaml"),
                                                ("boolean", "boolean.yaml"), ("file", "file"), ("readonly", "readonly")]}
    out = tmp_path / "out"
    argv = [*FAST, "--data-dir", str(toy), "--output", str(out), *[a.format(**names) for a in extra]]
    listing = sorted(tmp_path.rglob("*"))
    code = train_fcl.cli(argv)
    line = one_error_line(" ".join(extra), code, capsys.readouterr().err)
    assert expected in line, line
    assert sorted(tmp_path.rglob("*")) == listing  # nothing written, --output not even created


def _bad_info(toy: Path, folder: Path, edit) -> Path:
    shutil.copytree(toy, folder)
    info = json.loads((folder / "_info.json").read_text())
    (folder / "_info.json").write_text(json.dumps(edit(info)))
    return folder


def test_bad_data_and_fcl_settings_are_one_error_line_before_the_first_step(toy, tmp_path):
    def fewer_lengths(info):
        info["splits"]["train"]["shard_lengths"].pop()
        return info

    def negative_length(info):
        info["splits"]["train"]["shard_lengths"][0] = -48
        return info

    base = [*FAST, "--workers", "0"]
    cases = {
        "info not a dict": ([*base, "--data-dir", str(_bad_info(toy, tmp_path / "list", lambda i: [i]))],
                            "_info.json: expected an object, got list"),
        "fewer lengths": ([*base, "--data-dir", str(_bad_info(toy, tmp_path / "fewer", fewer_lengths))],
                          "3 shard lengths for 4 files"),
        "negative length": ([*base, "--data-dir", str(_bad_info(toy, tmp_path / "neg", negative_length))],
                            "'shard_lengths' must be non-negative integers"),
        "k > C*H*W, FCL late": ([*base, "--data-dir", str(toy), "--fcl-k", "769", "--fcl-start-epochs", "5"],
                                "k 769 exceeds the 768 elements of one input (3 x 16 x 16)"),
        "input std length": ([*base, "--data-dir", str(toy), "--fcl-input-std", "0.2", "0.2"],
                             "argument --fcl-input-std: 2 values for 3 input channels"),
        "chunks > batch": ([*base, "--data-dir", str(toy), "--fcl-perturbed-chunks", "17"],
                           "perturbed_chunks 17 exceeds the 16 samples per batch"),
        "chunks > subset": ([*base, "--data-dir", str(toy), "--fcl-fraction", "0.25", "--fcl-perturbed-chunks", "5"],
                            "perturbed_chunks 5 exceeds the 4 samples per batch"),
    }
    outs = {k: tmp_path / f"out{i}" for i, k in enumerate(cases)}
    results = _parallel({k: train_cmd(*argv, "--output", str(outs[k])) for k, (argv, _) in cases.items()})
    for name, (code, stderr) in results.items():
        line = one_error_line(name, code, stderr)
        print(line)
        assert cases[name][1] in line, f"{name}: {line}"
        assert " step " not in stderr and not outs[name].exists(), name  # before the first step, nothing written


# -------------------------------------------------------------------------------------------- stopped while running
def test_diverging_loss_stops_with_one_line_and_nothing_saved_after_it(toy, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd(*FAST, "--data-dir", str(toy), "--workers", "0", "--epochs", "1", "--lr", "1e30",
                         "--checkpoint-interval", "1", "--state-hist", "10", "--output", str(out)))
    line = one_error_line("lr 1e30", proc.returncode, proc.stderr)
    print(line)
    assert "the loss or the weights became NaN or infinite by step" in line
    stopped = int(line.split("by step ")[1].split()[0])
    saved = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*")] if out.exists() else []
    assert all(step < stopped for step in saved), (saved, stopped)
    assert not (out / "model").exists()  # no export of the diverged weights
    assert not (out / ".lock").exists()  # released on the error


def test_epoch_without_a_decodable_sample_is_an_error_not_an_untrained_export(tmp_path):
    from timm_fcl.data.shards import write_shards

    shards = tmp_path / "undecodable"
    write_shards(((b"not an image", "png", i % 10) for i in range(64)), output=shards, name="toy", split="train",
                 shard_size=32, num_classes=10)
    make_shards(tmp_path / "good", train=16, val=32)
    for f in (tmp_path / "good").glob("toy-validation-*"):
        shutil.copy(f, shards)
    info = json.loads((shards / "_info.json").read_text())
    info["splits"]["validation"] = json.loads((tmp_path / "good" / "_info.json").read_text())["splits"]["validation"]
    (shards / "_info.json").write_text(json.dumps(info))
    out = tmp_path / "run"
    proc = run(train_cmd(*FAST, "--data-dir", str(shards), "--workers", "1", "--epochs", "1", "--output", str(out)))
    line = one_error_line("undecodable", proc.returncode, proc.stderr)
    print(line)
    assert "none of the 16 samples of a batch decodes" in line
    assert not (out / "model").exists() and not (out / "checkpoints").exists()
