"""Does the input pipeline keep up with training? Images/s of train_fcl.py's loader on the CIFAR-10 shards
(decode + train transforms, 0, 1 and 2 loader workers) next to the images/s of one training step (XE and FCL).

    python benchmarks/loader_throughput.py [--data-dir ../shared/data/cifar10-wds] [--samples 2048]

Writes benchmarks/results/loader_throughput.json. The loader keeps up when its images/s exceed the step's;
with W workers it runs beside training, with 0 it runs in turn with it (time per image = 1/loader + 1/step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def loader_rate(source, transform, *, workers: int, samples: int, batch_size: int) -> float:
    from timm_fcl.data import EpochStream, make_loader

    stream = EpochStream(source, transform=transform, is_training=True, seed=0, batch_size=batch_size,
                         num_workers=workers, subset=samples)
    start, n = time.perf_counter(), 0
    for x, _ in make_loader(stream, num_workers=workers):
        n += len(x)
    return n / (time.perf_counter() - start)


def step_rate(method: str, *, model_name: str, batch_size: int, img_size: int, steps: int) -> float:
    """Training images/s of one method, with the step of step_cost.py (same model set-up, random data)."""
    from types import SimpleNamespace

    from step_cost import build, step

    run = build(method, SimpleNamespace(model=model_name, img_size=img_size, batch_size=batch_size, k=256,
                                        device="cpu", precision="fp32", channels_last=False))
    step(*run)  # the first step pays for allocations
    start = time.perf_counter()
    for _ in range(steps):
        step(*run)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    from shared_data import shared_data_root
    from timm_fcl.data import create_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(shared_data_root() / "cifar10-wds"))
    parser.add_argument("--samples", type=int, default=2048, help="images read per loader setting")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loader_throughput.json"))
    args = parser.parse_args()
    if not (Path(args.data_dir) / "_info.json").exists():
        sys.exit(f"loader_throughput.py: error: no CIFAR-10 shards at {args.data_dir} (--data-dir)")

    from timm.data import create_transform

    source = create_source("wds/cifar10", args.data_dir, "train")
    # the quickstart recipe's train transforms
    transform = create_transform(input_size=(3, 32, 32), is_training=True, scale=(0.64, 1.0), color_jitter=0.0,
                                 mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    rows = []
    for workers in args.workers:
        rate = loader_rate(source, transform, workers=workers, samples=args.samples, batch_size=args.batch_size)
        rows.append({"what": f"loader, {workers} worker(s)", "img_per_s": rate})
        print(f"{rows[-1]['what']:<34} {rate:9.1f} img/s", flush=True)
    for method in ("xe", "fcl"):
        rate = step_rate(method, model_name=args.model, batch_size=args.batch_size, img_size=32, steps=args.steps)
        rows.append({"what": f"train step, {args.model} {method}", "img_per_s": rate})
        print(f"{rows[-1]['what']:<34} {rate:9.1f} img/s", flush=True)
    step_fcl = rows[-1]["img_per_s"]
    print()
    print(f"| {'what':<34} | {'img/s':>9} | {'keeps up with the FCL step':<26} |")
    print(f"| {'-' * 34} | {'-' * 9} | {'-' * 26} |")
    for row in rows:
        verdict = "" if row["what"].startswith("train") else ("yes" if row["img_per_s"] >= step_fcl else "no")
        print(f"| {row['what']:<34} | {row['img_per_s']:9.1f} | {verdict:<26} |")
    meta = {"data_dir": args.data_dir, "samples": args.samples, "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
