"""What FCL costs on a GPU at ImageNet shape, in one command that fits a 10-minute slot.

Three sections, each written to the JSON as soon as it is measured (a run cut short keeps what it finished):

1. ``step_cost``: one training step of every mode (xe, fcl, fcl every 4, fcl fraction 0.25, xe_gauss) on random
   224 px data, batch 128, bf16 autocast, channels-last, for each model, eager and with ``torch.compile``
   (the regularizer's ``compile_backend``: forward_features and forward_head). Time per step (device-synchronized,
   median of --steps rounds after --warmup, the modes interleaved round-robin), images/s, peak memory of a step, the
   ratio to XE, and the pass-count floor of each mode beside it. The floor comes from the same run: F, a forward of
   the batch, and B = (XE step - F), a backward (with the optimizer step); with r = B / F an FCL step needs a clean
   forward, an input-only backward (~B/2), a forward over 2 batches and a backward over 3: (3 + 3.5 r) / (1 + r) XE
   steps; every n: (n - 1 + that) / n; fraction f: 1 + f (3 + 2.5 r) / (1 + r); xe_gauss: 2.
2. ``end_to_end``: train_fcl.py under ``accelerate launch`` (bf16, channels-last) over ImageNet-shaped WebDataset shards
   the script writes itself (--e2e-images JPEGs of 256 px, --e2e-classes classes, smooth random images): the
   images/s it logs for XE and FCL, median over the log intervals after the first.
3. ``loader``: train_fcl.py's own loader (same shards, same train transforms, same workers) alone: images/s. The loader
   keeps up when it delivers at least what FCL consumes (the target is 1.5x, headroom for a busier host).

    python benchmarks/gpu_check.py                      # on one GPU: ~5-8 min, writes gpu_check.json
    python benchmarks/gpu_check.py --smoke              # the same code, tiny, on the CPU (under a minute)

Without --smoke it refuses to start (one line) unless a CUDA device with bf16 is there. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from step_cost import mode_config, step  # noqa: E402

MODES = ("xe", "fcl", "fcl-every", "fcl-fraction", "xe_gauss")
TARGETS = {"fcl_over_floor": 1.05, "every_over_xe": 1.6, "loader_over_fcl": 1.5}


class CheckError(Exception):
    """A one-line refusal (wrong device, bad flag)."""


# ------------------------------------------------------------------------------------------------- the JSON
class Report:
    """gpu_check.json, rewritten after every section so that a run cut short keeps what it measured."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.data = {"meta": meta, "step_cost": [], "end_to_end": [], "loader": [], "targets": {}, "skipped": []}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def pass_floor(mode: str, r: float, *, every: int, fraction: float) -> float:
    """XE steps one step of ``mode`` needs by pass count, with r = backward / forward time (see the docstring)."""
    fcl = (3 + 3.5 * r) / (1 + r)
    return {"xe": 1.0, "xe_gauss": 2.0, "fcl": fcl, "fcl-every": (every - 1 + fcl) / every,
            "fcl-fraction": 1 + fraction * (3 + 2.5 * r) / (1 + r)}[mode]


# ------------------------------------------------------------------------------------------ 1. step cost
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_runs(args, model_name: str, compile_backend: Optional[str]) -> dict:
    """{mode: (regularizer, optimizer, x, y)} around one model (so a compiled graph is shared by the modes)."""
    import timm

    from timm_fcl import FCLConfig, FeatureContrastiveRegularizer

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=args.num_classes).to(args.device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=g)
    x = x.to(args.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(args.device)
    runs = {}
    for mode in args.modes:
        config = mode_config(mode, args)
        cfg = FCLConfig(**{"k": args.k, "sigma": 0.5, "tau": 0.5, "weight": 1e-4, **config})
        reg = FeatureContrastiveRegularizer(model, cfg, compile_backend=compile_backend).train()
        runs[mode] = (reg, opt, x, y)
    return runs


def autocast(device: str):
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def timed(args, run, mode: str) -> float:
    """Seconds per step of one round (for fcl-every the mean over a whole cycle: one FCL step, every - 1 XE steps)."""
    cycle = args.every if mode == "fcl-every" else 1
    sync(args.device)
    t0 = time.perf_counter()
    for at in range(cycle):
        with autocast(args.device):
            step(*run, at=at)
    sync(args.device)
    return (time.perf_counter() - t0) / cycle


def forward_time(args, run) -> float:
    """One forward of the batch with autograd recording, as a training step's forward (no backward)."""
    reg, _, x, y = run
    sync(args.device)
    t0 = time.perf_counter()
    with autocast(args.device):
        reg(x, y, step=0).loss.detach()
    sync(args.device)
    return time.perf_counter() - t0


def peak_memory_gib(args, run, mode: str) -> Optional[float]:
    """Peak device memory of one step beyond what was allocated before it (CUDA only)."""
    if not args.device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with autocast(args.device):
        step(*run, at=0)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def measure_steps(args, model_name: str, compile_backend: Optional[str]) -> dict:
    began = time.time()
    runs = build_runs(args, model_name, compile_backend)
    for mode in args.modes:  # warm-up, compilation included (every shape and cycle position once)
        for _ in range(args.warmup):
            timed(args, runs[mode], mode)
    setup_s = time.time() - began
    times = {m: [] for m in args.modes}
    forwards = []
    for _ in range(args.steps):
        for mode in args.modes:
            times[mode].append(timed(args, runs[mode], mode))
        forwards.append(forward_time(args, runs["xe"]))
    xe = statistics.median(times["xe"])
    fwd = statistics.median(forwards)
    r = max(xe - fwd, 0.0) / fwd
    rows = []
    for mode in args.modes:
        med = statistics.median(times[mode])
        floor = pass_floor(mode, r, every=args.every, fraction=args.fraction)
        rows.append({"mode": mode, "config": mode_config(mode, args), "median_s": med,
                     "img_per_s": args.batch_size / med, "ratio_to_xe": med / xe, "floor": floor,
                     "ratio_to_floor": med / xe / floor, "peak_mem_gib": peak_memory_gib(args, runs[mode], mode),
                     "times_s": times[mode]})
    return {"model": model_name, "compile": compile_backend or "none", "img_size": args.img_size,
            "batch_size": args.batch_size, "forward_s": fwd, "backward_over_forward": r, "setup_s": setup_s,
            "rows": rows}


def print_steps(entry: dict) -> None:
    print(f"\n{entry['model']} {entry['img_size']} px batch {entry['batch_size']}, bf16, channels-last, compile "
          f"{entry['compile']} (backward / forward r = {entry['backward_over_forward']:.2f}, set-up and warm-up "
          f"{entry['setup_s']:.0f} s)")
    print(f"| {'mode':<13} | {'s / step':>9} | {'img/s':>8} | {'x XE':>5} | {'floor':>5} | {'/ floor':>7} | "
          f"{'peak GiB':>8} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in entry["rows"]:
        mem = f"{r['peak_mem_gib']:8.2f}" if r["peak_mem_gib"] is not None else f"{'-':>8}"
        print(f"| {r['mode']:<13} | {r['median_s']:9.4f} | {r['img_per_s']:8.1f} | {r['ratio_to_xe']:5.2f} | "
              f"{r['floor']:5.2f} | {r['ratio_to_floor']:7.2f} | {mem} |")


# ---------------------------------------------------------------------------------------- 2. the shards
def _smooth_jpeg(i: int, size: int, num_classes: int, seed: int) -> tuple[bytes, str, int]:
    """A smooth random image (a low-resolution noise field upsampled, so its JPEG is photo-sized), its label."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), "jpg", i % num_classes


def write_imagenet_shards(out: Path, *, images: int, val_images: int, size: int, num_classes: int,
                          workers: int) -> dict:
    from timm_fcl.data.shards import write_shards

    began = time.time()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for split, n, seed in (("train", images, 0), ("validation", val_images, 1)):
            samples = pool.map(_smooth_jpeg, range(n), [size] * n, [num_classes] * n, [seed] * n, chunksize=64)
            write_shards(samples, output=out, name="imagenet_shaped", split=split,
                         shard_size=max(1, min(1000, n // 4 or 1)), num_classes=num_classes)
    nbytes = sum(p.stat().st_size for p in out.glob("*.tar"))
    return {"images": images, "val_images": val_images, "size": size, "classes": num_classes,
            "mb": nbytes / 2**20, "seconds": time.time() - began}


# ------------------------------------------------------------------------------------------ 2. end to end
RATE = re.compile(r" img/s ([0-9.]+)")


def train_rate(args, shards: Path, method: str, out: Path) -> dict:
    """train_fcl.py under accelerate launch, one process; the images/s of its log lines after the first."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    if not args.device.startswith("cuda"):
        cmd += ["--cpu"]
    cmd += [str(ROOT / "train_fcl.py"), "--model", args.models[0], "--dataset", "wds/imagenet_shaped",
            "--data-dir", str(shards), "--num-classes", str(args.num_classes), "--img-size", str(args.img_size),
            "-b", str(args.batch_size), "--epochs", "1", "--method", method, "--fcl-k", str(args.k),
            "--fcl-start-step", "0", "--fcl-ramp-steps", "0", "--opt", "sgd", "--lr", "0.01", "--sched", "cosine",
            "--warmup-epochs", "0", "--workers", str(args.workers), "--channels-last", "--pin-mem",
            "--log-interval", str(args.log_interval), "--val-subset", str(args.batch_size), "--no-progress",
            "--seed", "0", "--output", str(out)]
    if args.e2e_train_images:
        cmd += ["--train-subset", str(args.e2e_train_images)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    began = time.time()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - began
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise CheckError(f"train_fcl.py --method {method} failed ({proc.returncode}): " + " | ".join(tail))
    rates = [float(m.group(1)) for m in RATE.finditer(proc.stdout + proc.stderr)]
    steady = rates[1:] or rates
    return {"method": method, "model": args.models[0], "img_per_s": statistics.median(steady) if steady else None,
            "intervals": rates, "wall_s": wall}


def loader_rate(args, shards: Path) -> dict:
    """train_fcl.py's loader alone (its train transforms at this size, the same workers): images/s after the
    first batch (the workers' start-up)."""
    from timm.data import create_transform

    from timm_fcl.data import EpochStream, create_source, make_loader

    source = create_source("wds/imagenet_shaped", str(shards), "train")
    transform = create_transform(input_size=(3, args.img_size, args.img_size), is_training=True)
    n = args.e2e_train_images or len(source)
    stream = EpochStream(source, transform=transform, is_training=True, seed=0, batch_size=args.batch_size,
                         num_workers=args.workers, subset=n)
    seen, t0 = 0, None
    for x, _ in make_loader(stream, num_workers=args.workers, pin_memory=args.device.startswith("cuda")):
        if t0 is None:
            t0 = time.perf_counter()
            continue
        seen += len(x)
    rate = seen / (time.perf_counter() - t0) if seen else None
    return {"workers": args.workers, "img_per_s": rate, "images": seen}


# -------------------------------------------------------------------------------------------------- main
def check_device(args) -> None:
    if args.smoke:
        return
    if not torch.cuda.is_available():
        raise CheckError("no CUDA device: this check is for a GPU (--smoke runs the same code tiny on the CPU)")
    if not torch.cuda.is_bf16_supported():
        raise CheckError(f"{torch.cuda.get_device_name(0)} has no bf16: the check measures bf16 autocast")


def apply_smoke(args) -> None:
    """The same code, tiny: timm's test_resnet, 64 px, batch 8, a few rounds, 96 images of 72 px; eager compile backend."""
    args.device = "cpu"
    args.models = args.models if args.models_given else ["test_resnet"]
    args.img_size, args.batch_size, args.num_classes, args.k = 64, 8, 10, 64
    args.steps, args.warmup = 2, 1
    args.compile = ["none", "eager"]
    args.e2e_images, args.e2e_val_images, args.e2e_size, args.e2e_train_images = 96, 16, 72, 0
    args.workers, args.log_interval = 1, 4


def summarize_targets(report: Report, args) -> None:
    data, targets = report.data, {}
    for e in data["step_cost"]:
        rows = {r["mode"]: r for r in e["rows"]}
        key = f"{e['model']}/{e['compile']}"
        if "fcl" in rows:
            targets[f"{key}: fcl / floor"] = (rows["fcl"]["ratio_to_floor"], TARGETS["fcl_over_floor"])
        if "fcl-every" in rows:
            targets[f"{key}: every {args.every} / xe"] = (rows["fcl-every"]["ratio_to_xe"], TARGETS["every_over_xe"])
    fcl_e2e = next((r["img_per_s"] for r in data["end_to_end"] if r["method"] == "fcl"), None)
    if data["loader"] and fcl_e2e:
        targets["loader / fcl end to end"] = (data["loader"][0]["img_per_s"] / fcl_e2e, TARGETS["loader_over_fcl"])
    data["targets"] = {k: {"measured": v, "target": t, "met": (v >= t) if k.startswith("loader") else (v <= t)}
                       for k, (v, t) in targets.items()}


def run(args) -> dict:
    check_device(args)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "smoke": args.smoke, "device": args.device,
            "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "models": args.models, "img_size": args.img_size,
            "batch_size": args.batch_size, "k": args.k, "every": args.every, "fraction": args.fraction,
            "steps": args.steps, "warmup": args.warmup, "workers": args.workers}
    import timm
    meta["timm"] = timm.__version__
    report = Report(Path(args.out), meta)
    deadline = time.time() + args.budget_s
    began = time.time()

    def left(what: str) -> bool:
        if time.time() < deadline:
            return True
        report.data["skipped"].append(what)
        print(f"skipped {what}: the --budget-s {args.budget_s:.0f} is spent", flush=True)
        return False

    for backend in args.compile:  # eager first for every model: the cheap answers before the compile time
        for model_name in args.models:
            if left(f"step cost {model_name} compile {backend}"):
                entry = measure_steps(args, model_name, None if backend == "none" else backend)
                report.data["step_cost"].append(entry)
                report.save()
                print_steps(entry)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        if left("end to end"):
            info = write_imagenet_shards(shards, images=args.e2e_images, val_images=args.e2e_val_images,
                                         size=args.e2e_size, num_classes=args.num_classes,
                                         workers=min(16, os.cpu_count() or 1))
            report.data["meta"]["shards"] = info
            print(f"\nshards: {info['images']} JPEGs of {info['size']} px, {info['classes']} classes, "
                  f"{info['mb']:.0f} MB in {info['seconds']:.0f} s", flush=True)
            for i, method in enumerate(("xe", "fcl")):
                if left(f"end to end {method}"):
                    report.data["end_to_end"].append(train_rate(args, shards, method, Path(tmp) / f"run{i}"))
                    report.save()
            if left("loader"):
                report.data["loader"].append(loader_rate(args, shards))
    summarize_targets(report, args)
    report.data["meta"]["wall_s"] = time.time() - began
    report.save()
    print_end(report)
    return report.data


def print_end(report: Report) -> None:
    data = report.data
    if data["end_to_end"] or data["loader"]:
        print(f"\n| end to end ({data['meta']['models'][0]}, {data['meta']['workers']} loader workers) | img/s |")
        print("| --- | --- |")
        for r in data["end_to_end"]:
            rate = f"{r['img_per_s']:.1f}" if r["img_per_s"] else "-"
            print(f"| train_fcl.py --method {r['method']} | {rate} |")
        for r in data["loader"]:
            rate = f"{r['img_per_s']:.1f}" if r["img_per_s"] else "-"
            print(f"| the loader alone | {rate} |")
    print("\n| target | measured | wanted | met |")
    print("| --- | --- | --- | --- |")
    for k, t in data["targets"].items():
        op = ">=" if k.startswith("loader") else "<="
        print(f"| {k} | {t['measured']:.2f} | {op} {t['target']} | {'yes' if t['met'] else 'no'} |")
    print(f"\nwrote {report.path} in {data['meta']['wall_s']:.0f} s")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the same code, tiny, on the CPU")
    p.add_argument("--models", nargs="+", default=None, help="default: resnetv2_50 resnet50")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--k", type=int, default=256 * 49, help="FCL's k (default: 256 of 3,072 CIFAR elements, as a "
                   "share of 224 x 224 x 3)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--chunks", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--compile", nargs="+", default=["none", "inductor"],
                   help="compile backends timed ('none': eager)")
    p.add_argument("--steps", type=int, default=10, help="timed rounds per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds per mode (compilation happens here)")
    p.add_argument("--e2e-images", type=int, default=20000, help="training JPEGs written for the end-to-end run")
    p.add_argument("--e2e-val-images", type=int, default=256)
    p.add_argument("--e2e-size", type=int, default=256)
    p.add_argument("--e2e-train-images", type=int, default=12800, help="images trained per end-to-end run (0: all)")
    p.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)),
                   help="loader workers (end to end and the loader alone)")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=480, help="skip what is left after this many seconds")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="gpu_check.json")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    args.models_given = args.models is not None
    args.models = args.models or ["resnetv2_50", "resnet50"]
    if args.smoke:
        apply_smoke(args)
    try:
        run(args)
    except CheckError as e:
        print(f"gpu_check.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
