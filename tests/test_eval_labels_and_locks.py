"""Evaluation keeps models apart: every model of one evaluation has an entry of its own, an interrupted evaluation
continues only with rows measured on the same weights, and one evaluation writes an --output folder at a time."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DATA_DIR
from timm_fcl.robustness import cli as eval_cli
from timm_fcl.robustness.evaluation import unique_labels

ROOT = Path(__file__).resolve().parents[1]
CIFAR = DATA_DIR / "cifar10-wds"
needs_cifar = pytest.mark.skipif(not (CIFAR / "_info.json").exists(), reason=f"CIFAR-10 shards not found at {CIFAR}")


def _export(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(source / name, target / name)
    return target


@pytest.fixture
def run_with_two_exports(tmp_path) -> Path:
    """A run folder whose model/ and model_best/ hold different weights (the zoo's XE and FCL models)."""
    run = tmp_path / "cifar_run"
    _export(ROOT / "zoo" / "resnet20_cifar.xe_cifar10", run / "model")
    _export(ROOT / "zoo" / "resnet20_cifar.fcl_cifar10", run / "model_best")
    return run


def _argv(models, out: Path) -> list[str]:
    return [*[a for m in models for a in ("--model", str(m))], "--data-dir", str(CIFAR), "--suites", "clean", "un",
            "--max-samples", "100", "--batch-size", "100", "--workers", "0", "--threads", "1", "--output", str(out)]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_labels_that_two_models_share_are_made_unique(tmp_path):
    run = tmp_path / "cifar_run"
    for name in ("model", "model_best"):
        (run / name).mkdir(parents=True)
    assert unique_labels([f"{run}/model", f"{run}/model_best"], [None, None]) == ["cifar_run/model",
                                                                                  "cifar_run/model_best"]
    assert unique_labels(["resnet18", "resnet18"], ["a/model/model.safetensors", "a/model_best/model.safetensors"]) \
        == ["resnet18:model/model.safetensors", "resnet18:model_best/model.safetensors"]
    assert unique_labels(["resnet18", "resnet18"], [None, None]) == ["resnet18 (1)", "resnet18 (2)"]
    assert unique_labels([f"{run}/model", "resnet18"], [None, "x.safetensors"]) == ["cifar_run", "resnet18:x"]


@needs_cifar
def test_two_exports_of_one_run_keep_an_entry_each_with_their_own_digest_and_numbers(run_with_two_exports, tmp_path):
    """`--model RUN/model --model RUN/model_best` keyed both results by the run's name, so one model disappeared;
    after a kill and a re-run, model_best's entry carried its own digest but model/'s rows, and publishing passed its
    digest check with the wrong numbers. Now each has its entry, its digest and its own numbers, and a killed
    evaluation continued is the uninterrupted one."""
    run = run_with_two_exports
    both = eval_cli.main(eval_cli.get_args_parser().parse_args(_argv([run / "model", run / "model_best"],
                                                                     tmp_path / "both")))
    assert list(both) == ["cifar_run/model", "cifar_run/model_best"]
    alone = {name: _results_of(run / name, tmp_path / f"alone_{name}") for name in ("model", "model_best")}
    for name in ("model", "model_best"):
        entry = both[f"cifar_run/{name}"]
        assert entry["weights_sha256"] == alone[name]["weights_sha256"]
        assert [_numbers(r) for r in entry["rows"]] == [_numbers(r) for r in alone[name]["rows"]]
    assert both["cifar_run/model"]["weights_sha256"] != both["cifar_run/model_best"]["weights_sha256"]
    assert [_numbers(r) for r in both["cifar_run/model"]["rows"]] != \
        [_numbers(r) for r in both["cifar_run/model_best"]["rows"]]

    # killed after the first model's rows, then run again: the same results as the uninterrupted evaluation
    out = tmp_path / "killed"
    argv = _argv([run / "model", run / "model_best"], out)
    calls = {"n": 0}
    record = eval_cli.Journal.record

    def killed_after_two_rows(journal, row):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        record(journal, row)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eval_cli.Journal, "record", killed_after_two_rows)
        with pytest.raises(KeyboardInterrupt):
            eval_cli.main(eval_cli.get_args_parser().parse_args(argv))
    assert eval_cli.main(eval_cli.get_args_parser().parse_args(argv)) == both


def _results_of(model: Path, out: Path) -> dict:
    return next(iter(eval_cli.main(eval_cli.get_args_parser().parse_args(_argv([model], out))).values()))


def _numbers(row: dict) -> tuple:
    return row["suite"], row["corruption"], row["severity"], row["correct"], row["total"], row["hits"]


def test_a_journal_row_is_reused_only_for_the_weights_it_was_measured_on(monkeypatch):
    import torch

    import timm_fcl.robustness.evaluation as evaluation

    class Set:
        suite, corruption, severity, data, unreadable = "clean", "clean", 0, None, 0

    def all_right(*args, per_image, **kwargs):  # 2 of 2 right, whatever the model
        per_image.append(torch.ones(2, dtype=torch.bool))
        return (2, 2), 2
    monkeypatch.setattr(evaluation, "evaluate_accuracy", all_right)
    model = evaluation.EvalModel("m", "m", None, {"mean": (0,), "std": (1,)}, "own", "digest-new")
    earlier = {"model": "m", "suite": "clean", "corruption": "clean", "severity": 0, "accuracy": 50.0, "top5": 50.0,
               "correct": 1, "correct_top5": 1, "total": 2, "hits": "", "weights_sha256": "digest-old"}
    key = ("m", "clean", "clean", 0)
    rows = evaluation.run(models=[model], sets=[Set()], suite_presets={}, done={key: earlier})["m"]["rows"]
    assert rows[0]["accuracy"] == 100.0  # measured again: the journal's row was of other weights
    same = dict(earlier, weights_sha256="digest-new")
    rows = evaluation.run(models=[model], sets=[Set()], suite_presets={}, done={key: same})["m"]["rows"]
    assert rows[0]["accuracy"] == 50.0 and "weights_sha256" not in rows[0]


@needs_cifar
def test_a_second_evaluation_on_the_same_output_is_one_line_and_touches_nothing(run_with_two_exports, tmp_path,
                                                                                 capsys):
    """Two evaluations started on one --output at once mixed their rows after a kill: the folder is now locked."""
    from timm_fcl.training.lock import _start_time

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "run_id": "other",
                                               "started_ticks": _start_time(holder.pid)}))
        time.sleep(0.1)
        capsys.readouterr()
        assert eval_cli.cli(_argv([run_with_two_exports / "model"], out)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by another run" in err[0] and f"pid {holder.pid}" in err[0], err
        assert sorted(os.listdir(out)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("flag, value, least", [("--max-samples", "-3", 1), ("--batch-size", "0", 1),
                                                ("--workers", "-1", 0)])
def test_a_count_out_of_range_is_one_line_naming_the_flag(flag, value, least, tmp_path, capsys):
    """--max-samples -3 ended in numpy's 'Negative dimensions are not allowed'."""
    capsys.readouterr()
    assert eval_cli.cli(["--model", "resnet18", "--checkpoint", "none", "--suites", "clean", "--data-dir",
                         str(tmp_path), "--output", str(tmp_path / "out"), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"timm_fcl.eval: error: {flag} must be at least {least}, got {value}"]


@needs_cifar
def test_sigterm_during_a_two_worker_generation_leaves_no_process(tmp_path):
    """SIGTERM to `timm_fcl.eval --gen-workers 2` left the two pool workers running (PPID 1, ~620 MB each): now the
    command and every process it started are gone 10 s later."""
    import signal
    import sys

    import psutil

    from train_helpers import env

    proc = subprocess.Popen([sys.executable, "-m", "timm_fcl.eval", "--model", str(ROOT / "zoo" /
                             "resnet20_cifar.xe_cifar10"), "--data-dir", str(CIFAR), "--suites", "generated",
                             "--max-samples", "500", "--gen-workers", "2", "--workers", "0", "--cache-dir",
                             str(tmp_path / "cache"), "--output", str(tmp_path / "out")],
                            env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, workers = time.time() + 120, []
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            workers = psutil.Process(proc.pid).children(recursive=True)
            time.sleep(0.2)
        assert len(workers) >= 2, f"no generation workers seen: {proc.stderr.read() if proc.poll() else ''}"
        time.sleep(1.0)  # the workers are inside a corruption block
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"left running: {[p.pid for p in alive]}"
        assert proc.returncode == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()


def test_generation_with_two_workers_writes_what_one_process_writes(tmp_path):
    import numpy as np

    from timm_fcl.robustness.datasets import generated_suite_dir

    images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(6) % 3
    folders = [generated_suite_dir(images, labels, cache_dir=tmp_path / f"w{w}", corruptions=["fog", "glass_blur"],
                                   workers=w) for w in (0, 2)]
    for name in ("fog", "glass_blur", "labels"):
        assert np.array_equal(np.load(folders[0] / f"{name}.npy"), np.load(folders[1] / f"{name}.npy"))


def test_a_journal_cut_in_its_first_line_names_its_file(tmp_path):
    from timm_fcl.robustness.journal import Journal

    path = tmp_path / "results.partial.jsonl"
    path.write_text('{"command": {"mod')
    with pytest.raises(ValueError) as why:
        Journal(path, {"model": ["x"]})
    assert str(why.value) == f"{path} does not start with the command it continues (cut short?): delete it to " \
        "start this evaluation afresh"
