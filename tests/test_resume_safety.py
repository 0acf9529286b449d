"""Training states that are safe to resume: nothing in a state is unpickled (a planted pickle never runs), a damaged
newest state is passed over for the newest intact one and the run still ends bit-identical to an uninterrupted one,
a missing or damaged random-stream file is never resumed from, and the same holds with 2 processes."""
from __future__ import annotations

import json
import pickle
import random
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from timm_fcl.training import rng
from timm_fcl.training.state_files import StateError, read_part, write_part
from timm_fcl.training.states import file_sha256, load_training_state, save_state_atomic
from train_helpers import TOY_RUN, one_error_line, run, train_cmd, trained_run

TOY = [*TOY_RUN, "-b", "16", "--log-interval", "4", "--epochs", "2", "--workers", "0", "--checkpoint-interval", "3",
       "--state-hist", "10"]
# what accelerate's save_state writes (all of it unpickled by its load_state)
ACCELERATE_FILES = ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl",
                    "random_states_1.pkl", "optimizer.bin", "scheduler.bin", "pytorch_model.bin", "sampler.bin",
                    "scaler.pt"]


def _state(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:09d}"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line or "Error" in line]


def _same_export(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _cut_back(finished: Path, to: Path, newest_step: int) -> Path:
    """The run folder as a run killed right after saving step `newest_step` left it (no export of the last epoch)."""
    shutil.copytree(finished, to)
    shutil.rmtree(to / "model")
    for state in (to / "checkpoints").iterdir():
        if int(state.name.split("_")[1]) > newest_step:
            shutil.rmtree(state)
    return to


@pytest.fixture(scope="module")
def uninterrupted(toy, tmp_path_factory) -> Path:
    """An uninterrupted run: 2 epochs of 12 steps, a state every 3 steps (the one at step 15 is mid-epoch)."""
    return trained_run(tmp_path_factory.mktemp("uninterrupted") / "run", toy, TOY)


# ------------------------------------------------------------------------------------------- the files of a state
def test_state_parts_round_trip_with_types_and_bits_kept(tmp_path):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    model = torch.nn.Linear(4, 3)
    optimizer = create_optimizer_v2(model, "lamb", lr=0.1)  # a tensor in its param_groups, int keys in its state
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler, _ = create_scheduler_v2(optimizer, "multistep", decay_milestones=[2, 4], num_epochs=6)
    part = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best": -float("inf"),
            "scaler": torch.amp.GradScaler("cpu").state_dict(), "bf16": torch.randn(3, dtype=torch.bfloat16),
            "channels_last": torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last), "none": None}
    write_part(tmp_path / "part.safetensors", part)
    back = read_part(tmp_path / "part.safetensors")

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, dict):
            return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    assert same(part, back)
    assert list(back["optimizer"]["state"]) == [0, 1]  # integer keys stay integers
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples stay tuples


def test_random_streams_come_back_exactly(tmp_path):
    def draws():
        return random.random(), float(np.random.rand()), np.random.randn(), torch.rand(3).tolist()

    np.random.randn()  # a cached gaussian is part of numpy's state
    write_part(tmp_path / "rng.safetensors", rng.capture("cpu"))
    expected = draws()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = read_part(tmp_path / "rng.safetensors")
    rng.check(saved)
    rng.restore(saved, "cpu")
    assert draws() == expected
    with pytest.raises(Exception):
        rng.check({**saved, "torch": torch.zeros(3, dtype=torch.uint8)})


def test_a_planted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    payload = _planted(marker)
    pickle.loads(payload)  # the plant works: unpickling it creates the marker
    assert marker.exists()
    marker.unlink()
    for name in ("model.safetensors", "state.json"):
        (tmp_path / name).write_bytes(payload)
    with pytest.raises(StateError, match="model.safetensors is unreadable"):
        read_part(tmp_path / "model.safetensors")
    with pytest.raises(StateError, match="missing"):
        read_part(tmp_path / "absent.safetensors")
    assert not marker.exists()


class _Opener:
    """Unpickled, creates the file it names."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _planted(marker: Path) -> bytes:
    return pickle.dumps(_Opener(marker))


# ------------------------------------------------------------------ saving and loading real parts in one process
ONE_PROCESS = types.SimpleNamespace(is_main_process=True, process_index=0, num_processes=1, device=torch.device("cpu"),
                                    scaler=None, wait_for_everyone=lambda: None, reduce=lambda t, reduction: t)


def _parts(seed: int):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3
    from timm_fcl.training.build import Progress

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    optimizer = create_optimizer_v2(model, "adamw", lr=0.05)
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=4, warmup_epochs=1, noise=(0.2, 0.9),
                                       updates_per_epoch=3)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "ema": ModelEmaV3(model, decay=0.9),
            "progress": Progress()}


def _train(parts: dict, steps: int) -> list:
    """Steps whose noise comes from the global torch RNG, as the regularizer's does."""
    model, p = parts["model"], parts["progress"]
    for _ in range(steps):
        x = torch.randn(4, 6)
        loss = model(x + 0.1 * torch.randn_like(x)).square().mean()
        loss.backward()
        parts["optimizer"].step()
        parts["optimizer"].zero_grad()
        p.step += 1
        parts["scheduler"].step_update(num_updates=p.step)
        parts["ema"].update(model, step=p.step)
    return [t.clone() for t in [*model.state_dict().values(), *parts["ema"].state_dict().values()]]


def test_saved_parts_resume_bit_exactly_and_stale_saves_are_cleared(tmp_path):
    parts = _parts(0)
    _train(parts, 3)
    folder = save_state_atomic(ONE_PROCESS, tmp_path, 3, keep=2, parts={**parts, "scaler": None})
    assert sorted(p.name for p in folder.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.safetensors", "progress.safetensors", "rng_0.safetensors",
        "scheduler.safetensors", "state.json"]
    expected = _train(parts, 4)

    (tmp_path / "checkpoints" / ".step_000000004.tmp").mkdir()  # a save killed midway
    shutil.copytree(folder, tmp_path / "checkpoints" / ".step_000000003.old")  # a replaced state, replacement in place
    shutil.copytree(folder, tmp_path / "checkpoints" / ".step_000000002.old")  # a replaced state, replacement lost
    fresh = _parts(1)
    assert load_training_state(ONE_PROCESS, fresh, output=tmp_path) == folder
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000002", "step_000000003"]
    assert fresh["progress"].step == 3
    got = _train(fresh, 4)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_a_state_without_the_parts_this_run_needs_or_from_another_world_size_is_refused(tmp_path):
    parts = _parts(0)
    save_state_atomic(ONE_PROCESS, tmp_path, 1, keep=2, parts={**parts, "ema": None})
    with pytest.raises(Exception, match="holds no ema state"):
        load_training_state(ONE_PROCESS, _parts(1), output=tmp_path)
    two = types.SimpleNamespace(**{**vars(ONE_PROCESS), "num_processes": 2})
    with pytest.raises(Exception, match="saved by 1 process"):
        load_training_state(two, {**_parts(1), "ema": None}, output=tmp_path)


def test_random_streams_that_do_not_restore_are_refused(tmp_path):
    parts = _parts(0)
    folder = save_state_atomic(ONE_PROCESS, tmp_path, 1, keep=2, parts=parts)
    streams = read_part(folder / "rng_0.safetensors")
    write_part(folder / "rng_0.safetensors", {**streams, "python": (3, (1, 2), None)})
    manifest = json.loads((folder / "state.json").read_text())
    manifest["files"]["rng_0.safetensors"] = {"size": (folder / "rng_0.safetensors").stat().st_size,
                                              "sha256": file_sha256(folder / "rng_0.safetensors")}
    (folder / "state.json").write_text(json.dumps(manifest))
    fresh = _parts(1)
    torch.manual_seed(7)
    with pytest.raises(StateError, match="rng_0.safetensors holds no usable random streams"):
        load_training_state(ONE_PROCESS, fresh, output=tmp_path)
    after_refusal = torch.rand(2)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(2), after_refusal)  # the refused streams were not half restored


def test_a_same_size_change_is_caught_by_the_digest_and_a_sizes_only_manifest_still_loads(tmp_path):
    parts = _parts(0)
    folder = save_state_atomic(ONE_PROCESS, tmp_path, 1, keep=2, parts=parts)
    manifest = json.loads((folder / "state.json").read_text())
    assert manifest["files"]["model.safetensors"]["sha256"] == file_sha256(folder / "model.safetensors")
    sizes_only = {**manifest, "format": "timm-fcl training state 1",
                  "files": {k: v["size"] for k, v in manifest["files"].items()}}
    (folder / "state.json").write_text(json.dumps(sizes_only))
    assert load_training_state(ONE_PROCESS, _parts(1), output=tmp_path) == folder  # states saved before digests
    (folder / "state.json").write_text(json.dumps(manifest))
    data = bytearray((folder / "optimizer.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: still parses, same size
    (folder / "optimizer.safetensors").write_bytes(bytes(data))
    with pytest.raises(StateError, match="optimizer.safetensors does not match its SHA-256"):
        load_training_state(ONE_PROCESS, _parts(1), output=tmp_path)


# ---------------------------------------------------------------------------------------- train_fcl.py end to end
def test_planted_pickles_never_run_on_resume(uninterrupted, toy, tmp_path):
    marker = tmp_path / "ran"
    payload = _planted(marker)
    out = _cut_back(uninterrupted, tmp_path / "run", 15)
    for state in (out / "checkpoints").iterdir():
        for name in ACCELERATE_FILES:
            (state / name).write_bytes(payload)
    for path in _state(out, 15).iterdir():  # the newest state: every file a pickle
        path.write_bytes(payload)

    same = run(train_cmd(*TOY, "--data-dir", str(toy), "--output", str(out)))
    assert same.returncode == 0, same.stderr[-3000:]
    assert f"resumed from {_state(out, 12)}" in same.stderr
    assert _same_export(uninterrupted, out)

    only_planted = tmp_path / "planted"
    shutil.copytree(_state(tmp_path / "run", 3), _state(only_planted, 3))
    shutil.copy(tmp_path / "run" / "run.json", only_planted / "run.json")  # a run's folder, whose state is planted
    for path in _state(only_planted, 3).iterdir():
        path.write_bytes(payload)
    refusals = {"--resume STATE": ["--resume", str(_state(only_planted, 3)), "--output", str(tmp_path / "a")],
                "--resume RUN": ["--resume", str(only_planted), "--output", str(tmp_path / "b")],
                "same command": ["--output", str(only_planted)]}
    for name, argv in refusals.items():
        proc = run(train_cmd(*TOY, "--data-dir", str(toy), *argv))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, f"{name}: {proc.stderr[-3000:]}"
        errors = _error_lines(proc.stderr)
        assert len(errors) == 1 and errors[0].startswith("train_fcl.py: error: no intact training state"), errors
    assert not marker.exists()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_header(path: Path) -> None:  # same size, so only reading it finds the damage
    data = bytearray(path.read_bytes())
    data[8:40] = b"\0" * 32
    path.write_bytes(bytes(data))


def _zero_weights(path: Path) -> None:  # same size, header intact: the file still parses, with other weights
    data = bytearray(path.read_bytes())
    end = min(len(data), 8 + int.from_bytes(data[:8], "little") + 40_000)
    data[end - 40_000:end] = b"\0" * 40_000
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated optimizer", "garbled model", "zeroed weights", "missing rng"])
def test_a_damaged_newest_state_is_passed_over_and_the_run_ends_identical(uninterrupted, toy, tmp_path, damage):
    out = _cut_back(uninterrupted, tmp_path / "run", 15)
    newest = _state(out, 15)
    {"truncated optimizer": lambda: _truncate(newest / "optimizer.safetensors"),
     "garbled model": lambda: _garble_header(newest / "model.safetensors"),
     "zeroed weights": lambda: _zero_weights(newest / "model.safetensors"),
     "missing rng": lambda: (newest / "rng_0.safetensors").unlink()}[damage]()
    proc = run(train_cmd(*TOY, "--data-dir", str(toy), "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = [line for line in proc.stderr.splitlines() if "resuming from" in line]
    assert len(warning) == 1 and str(_state(out, 12)) in warning[0] and str(newest) in warning[0], warning
    if damage == "zeroed weights":
        assert "model.safetensors does not match its SHA-256" in warning[0]
    assert f"resumed from {_state(out, 12)}: epoch 1, batch 0, step 12" in proc.stderr
    assert _same_export(uninterrupted, out)


def test_the_only_state_without_its_rng_file_is_refused(uninterrupted, toy, tmp_path):
    out = _cut_back(uninterrupted, tmp_path / "run", 3)
    (_state(out, 3) / "rng_0.safetensors").unlink()
    proc = run(train_cmd(*TOY, "--data-dir", str(toy), "--output", str(out)))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _error_lines(proc.stderr) == [f"train_fcl.py: error: no intact training state in {out}: {_state(out, 3)}: "
                                         f"rng_0.safetensors is missing"]
    assert not (out / "model").exists()  # nothing trained


def test_two_processes_pass_over_a_state_missing_one_rank_file_and_end_identical(toy, tmp_path):
    # 2 processes on 96 samples: 3 steps per epoch, a state after each; steps 4 and 5 are mid-epoch
    argv = [*TOY, "--data-dir", str(toy), "--train-subset", "96", "--checkpoint-interval", "1"]
    uninterrupted = tmp_path / "uninterrupted"
    proc = run(train_cmd(*argv, "--output", str(uninterrupted), processes=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _cut_back(uninterrupted, tmp_path / "run", 5)
    (_state(out, 5) / "rng_1.safetensors").unlink()  # only rank 1 finds the damage; both must pass it over
    again = run(train_cmd(*argv, "--output", str(out), processes=2))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {_state(out, 4)} instead of {_state(out, 5)}" in again.stderr
    assert f"resumed from {_state(out, 4)}: epoch 1, batch 1, step 4" in again.stderr
    assert _same_export(uninterrupted, out)

    one = run(train_cmd(*argv, "--output", str(out)))  # the states were saved by 2 processes
    assert one.returncode == 2 and _error_lines(one.stderr)[0].endswith(
        "was saved by 2 process(es) and this run has 1: resume with as many (each keeps its own place in the data "
        "and random streams)")


# ------------------------------------------------------------------------------------------------------ a full disk
# train_fcl.py with the safetensors writer failing as on a full disk for every file of one state folder
FULL_DISK = """
import runpy, sys
from safetensors import SafetensorError
from timm_fcl.training import state_files
real, marker = state_files.save_file, sys.argv[1]
def save_file(tensors, path, metadata=None):
    if marker in path:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    return real(tensors, path, metadata=metadata)
state_files.save_file = save_file
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_full_disk_during_a_save_is_one_line_keeps_the_newest_state_and_the_run_resumes(uninterrupted, toy, tmp_path):
    out = tmp_path / "run"
    argv = [*TOY, "--data-dir", str(toy), "--output", str(out)]
    python, script = train_cmd()
    full = run([python, "-c", FULL_DISK, "step_000000006", script, *argv])
    line = one_error_line("full disk", full.returncode, full.stderr)
    assert line == (f"train_fcl.py: error: cannot save the training state of step 6: Error while serializing: I/O "
                    f"error: No space left on device (os error 28); the newest complete state "
                    f"({_state(out, 3)}) is kept: free space (or make the folder writable) and run the same command to "
                    f"resume"), line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000003"]  # no half-written folder
    assert not (out / ".lock").exists()
    again = run(train_cmd(*argv))  # space is back
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {_state(out, 3)}" in again.stderr
    assert _same_export(uninterrupted, out)


def test_a_full_disk_during_an_export_keeps_the_previous_export(tmp_path, monkeypatch):
    import timm
    from safetensors import SafetensorError
    from timm_fcl.run import export
    from timm_fcl.run.atomic import WriteError

    model = timm.create_model("resnet18", num_classes=3)
    config = timm.data.resolve_model_data_config(model)
    export.export_model(model, tmp_path / "model", data_config=config)
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(export, "save_file", full)
    with torch.no_grad():
        next(model.parameters()).add_(1)
    with pytest.raises(WriteError, match=r"cannot export the model to .*model: .*No space left on device.*; the "
                                         r"previous export is kept"):
        export.export_model(model, tmp_path / "model", data_config=config)
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left


def test_the_launch_configs_mixed_precision_is_part_of_what_a_resume_must_match(toy, tmp_path):
    """A run started under the launch config's bf16 (ACCELERATE_MIXED_PRECISION, as `accelerate launch
    --mixed_precision bf16` sets it) resumed in fp32 without a word: the effective precision is now recorded in
    resolved.yaml and a resume under another one is refused in one line."""
    import subprocess

    from train_helpers import ROOT, env

    flags = [*TOY, "--method", "xe", "--train-subset", "32", "--val-subset", "16", "--data-dir", str(toy)]
    out = tmp_path / "run"
    first = subprocess.run(train_cmd(*flags, "--epochs", "1", "--output", str(out)), capture_output=True, text=True,
                           cwd=ROOT, env=dict(env(), ACCELERATE_MIXED_PRECISION="bf16"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "mixed_precision: bf16" in (out / "resolved.yaml").read_text()
    proc = run(train_cmd(*flags, "--epochs", "2", "--output", str(out)))
    line = one_error_line("fp32 resume of a bf16 run", proc.returncode, proc.stderr)
    assert "mixed_precision bf16 -> no" in line, line


def test_a_checkpoints_file_in_place_of_the_folder_is_named_not_taken_for_a_full_disk(toy, tmp_path):
    """`checkpoints` being a file said "free space", which cannot help."""
    out = trained_run(tmp_path / "run", toy, [*TOY, "--epochs", "1", "--method", "xe", "--train-subset", "32"])
    shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").write_text("not a folder")
    proc = run(train_cmd(*TOY, "--epochs", "1", "--method", "xe", "--train-subset", "32", "--data-dir", str(toy),
                         "--output", str(out)))
    line = one_error_line("checkpoints is a file", proc.returncode, proc.stderr)
    assert line.endswith(f"{out / 'checkpoints'} is a file, not a folder: move it away and run the same command to "
                         f"resume"), line
    assert (out / "checkpoints").read_text() == "not a folder"
