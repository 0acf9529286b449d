"""What the training tests share: small synthetic shard sets (class-coloured noise images, learnable in a few steps),
the toy run's flags, how train_fcl.py is launched, and how its refusals and run folders are read."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import DATA_DIR
from timm_fcl.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]
CIFAR_WDS = DATA_DIR / "cifar10-wds"
# a ResNet-18 on 16 px toy shards that learns in a few steps; each test file adds its batch, interval, epochs, ...
TOY_RUN = ["--model", "resnet18", "--dataset", "wds/toy", "--img-size", "16", "--crop-pct", "1", "--sched", "step",
           "--warmup-epochs", "0", "--lr", "0.05", "--no-progress", "--fcl-k", "64"]
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]])


def synthetic_samples(n: int, *, size: int = 16, seed: int = 0, num_classes: int = 10, bad_label_at=None):
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % num_classes
        img = PALETTE[label] + rng.normal(0, 40, (size, size, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        yield buf.getvalue(), "png", (num_classes + 3 if i == bad_label_at else label)


def make_shards(out: Path, *, train: int = 192, val: int = 64, shard_size: int = 48, bad_label_at=None) -> Path:
    write_shards(synthetic_samples(train, seed=1, bad_label_at=bad_label_at), output=out, name="toy", split="train",
                 shard_size=shard_size, num_classes=10)
    write_shards(synthetic_samples(val, seed=2), output=out, name="toy", split="validation",
                 shard_size=shard_size, num_classes=10)
    return out


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    e.pop("ACCELERATE_MIXED_PRECISION", None)
    return e


def free_port() -> int:
    """A TCP port free now, for one multi-process launch: tests running side by side (pytest -n) never share one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(processes: int, mixed_precision: str = "no") -> list[str]:
    """``accelerate launch`` of ``processes`` CPU processes as one distributed job, on a port of its own."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def train_cmd(*args: str, processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, str(ROOT / "train_fcl.py"), *args]
    return [*launch_cmd(processes), str(ROOT / "train_fcl.py"), *args]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``cmd`` run to its end, output captured. One still running after ``timeout`` s fails the test with the Python
    stacks of all its processes (a multi-process launch included), so a hang shows where each process waits."""
    proc = subprocess.Popen(cmd, env=dict(env(), PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        err = stacks_then_kill(proc)
        raise AssertionError(f"{' '.join(map(str, cmd[:8]))} ... still running after {timeout:g} s; its output and "
                             f"the stacks of its processes:\n{err[-20000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stacks_then_kill(proc: subprocess.Popen) -> str:
    """SIGABRT to ``proc`` and every process under it (faulthandler prints each one's thread stacks on it), one
    process at a time so that stacks written to one shared stderr do not interleave, then SIGKILL to whatever is
    left; returns the captured stderr."""
    import psutil

    tree = psutil.Process(proc.pid).children(recursive=True)[::-1] + [psutil.Process(proc.pid)]  # workers first
    for p in tree:
        try:
            p.send_signal(signal.SIGABRT)
            if p.pid != proc.pid:  # the command's own stderr is read by communicate() below
                p.wait(timeout=10)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            pass
    try:
        return proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return proc.communicate()[1]


def trained_run(out: Path, toy: Path, flags: list[str]) -> Path:
    """``out`` after an uninterrupted train_fcl.py run with ``flags`` on the toy shards (the reference a stopped and
    resumed run must equal)."""
    proc = run(train_cmd(*flags, "--data-dir", str(toy), "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]  # warnings above may name an exception (Error:)


def one_error_line(name: str, returncode: int, stderr: str) -> str:
    """The single ``train_fcl.py: error: ...`` line of a refused run (exit 2, no traceback)."""
    assert returncode == 2, f"{name}: {stderr[-3000:]}"
    assert "Traceback" not in stderr, f"{name}: {stderr[-3000:]}"
    errors = error_lines(stderr)
    assert len(errors) == 1 and errors[0].startswith("train_fcl.py: error: "), f"{name}: {errors}"
    return errors[0]


def tree_digest(folder: Path) -> dict:
    """{file: sha1} of a run folder, its TensorBoard logs left out."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "tb" not in p.parts}


def parse_train(*argv: str):
    """train_fcl.py's parsed flags (no file or data is touched)."""
    from train_fcl import parse_args
    return parse_args(list(argv))


def summary_rows(out: Path) -> list[dict]:
    """The rows of a run's summary.csv."""
    import csv
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def same_weights(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-identical tensors."""
    import torch
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def build_in_process(args, accelerator, out: Path):
    """(data, model, run): train_fcl's sources, model, streams and training built in this process, as a run starts."""
    from timm_fcl.training import flags
    from timm_fcl.training.build import build_data, build_run_model, build_training, open_sources
    from train_fcl import get_args_parser

    sources = open_sources(args, accelerator, out)
    model, data_config = build_run_model(args, sources)
    data = build_data(args, accelerator, sources, data_config, model.num_classes)
    return data, model, build_training(args, accelerator, data, model, out, flags.result_settings(get_args_parser(),
                                                                                                   args))
