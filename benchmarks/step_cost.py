"""Cost of one training step per method (xe, xe_gauss, cl_gauss, fcl) relative to plain cross-entropy.

Times are medians over --steps measured steps after --warmup steps, methods interleaved round-robin in one process so
that load on a shared machine hits every method alike; ratios are taken within this one run. Peak memory: the highest
amount of tensor memory allocated during one step beyond what was allocated before it (CUDA: the allocator's peak;
CPU: replayed from torch.profiler's allocation events). Writes the table as JSON.

    python benchmarks/step_cost.py                       # resnet18, 64 px, batch 32 (issue 2's setting)
    python benchmarks/step_cost.py --model vit_tiny_patch16_224 --img-size 224 --batch-size 8
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

from timm_fcl import FCLConfig, FeatureContrastiveRegularizer

METHODS = ("xe", "xe_gauss", "cl_gauss", "fcl")


def build(method: str, args):
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10, img_size=args.img_size) if "vit" in args.model or \
        "swin" in args.model else timm.create_model(args.model, num_classes=10)
    cfg = FCLConfig(method=method, k=args.k, sigma=0.5, tau=0.5, weight=1e-4)
    reg = FeatureContrastiveRegularizer(model, cfg).to(args.device).train()
    opt = torch.optim.SGD(reg.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(args.device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(args.device)
    return reg, opt, x, y


def step(reg, opt, x, y) -> None:
    out = reg(x, y, step=0)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mib(run, device: str) -> float:
    """Peak tensor memory allocated by one step on top of what was allocated before it, in MiB."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(*run)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step(*run)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:  # allocations are positive, frees negative
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    runs = {m: build(m, args) for m in args.methods}
    times = {m: [] for m in args.methods}
    for i in range(args.warmup + args.steps):
        for m in args.methods:
            sync(args.device)
            t0 = time.perf_counter()
            step(*runs[m])
            sync(args.device)
            if i >= args.warmup:
                times[m].append(time.perf_counter() - t0)
    memory = {m: peak_memory_mib(runs[m], args.device) for m in args.methods}
    base_t, base_m = statistics.median(times["xe"]), memory["xe"]
    rows = [{"method": m, "median_s": statistics.median(times[m]), "ratio_to_xe": statistics.median(times[m]) / base_t,
             "peak_mem_mib": memory[m], "mem_ratio_to_xe": memory[m] / base_m if base_m > 0 else float("nan"),
             "times_s": times[m]} for m in args.methods]
    print(f"{args.model} {args.img_size}px batch {args.batch_size} on {args.device} ({args.threads} threads), "
          f"k={args.k}, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'method':<10} {'median s':>9} {'x xe':>6} {'peak MiB':>9} {'x xe':>6}")
    for r in rows:
        print(f"{r['method']:<10} {r['median_s']:9.4f} {r['ratio_to_xe']:6.2f} {r['peak_mem_mib']:9.1f} "
              f"{r['mem_ratio_to_xe']:6.2f}")
    result = {"model": args.model, "img_size": args.img_size, "batch_size": args.batch_size, "k": args.k,
              "device": args.device, "threads": args.threads, "torch": torch.__version__, "timm": timm.__version__,
              "machine": platform.machine(), "steps": args.steps, "warmup": args.warmup, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Training-step cost of FCL and its baselines", add_help=add_help)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benchmarks/results/step_cost.json")
    return p


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    if "xe" not in args.methods:
        args.methods = ["xe"] + args.methods
    main(args)
