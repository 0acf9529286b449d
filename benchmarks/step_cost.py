"""Cost of one training step per mode (xe, fcl, its cheaper modes, the baselines) relative to plain cross-entropy.

One command measures every setting of the suite (resnet18 at 64 px batch 32, resnetv2_50 at 64 px batch 16,
vit_tiny_patch16_224 at 224 px batch 8) in one process, all (setting, mode) runs interleaved round-robin so that load
on a shared machine hits every one alike; ratios are taken within this one run. Times are medians over --steps rounds
after --warmup rounds; for "fcl-every" one round is a full cycle of --every steps (one with the FCL term, the others
plain XE steps) and its time is the cycle's mean per step; "fcl-random" is FCL with ``selection="random"`` (no input
gradient). Peak memory: the highest amount of tensor memory allocated
during one step beyond what was allocated before it (CUDA: the allocator's peak; CPU: replayed from torch.profiler's
allocation events), for xe, fcl, fcl with the perturbed pass in --chunks checkpointed chunks, and fcl-fraction.
Writes the tables as JSON. Run it with 2 or more threads (the default: all of torch's): with one thread PyTorch puts
1x1 convolutions of batches under 16 on its slow non-oneDNN path, which penalises the small subset passes of
fcl-fraction (resnetv2_50 batch 16, one fraction-0.25 step: 134 slow-path convolutions with 1 thread, none with 2).

    python benchmarks/step_cost.py                      # the suite: 3 models x (xe, fcl, random, fraction, every), memory
    python benchmarks/step_cost.py --model vit_tiny_patch16_224 --img-size 224 --batch-size 8   # one setting
    # the CIFAR-10 benchmark's continuation step: bf16 autocast, channels-last, 1 thread, batch 128
    python benchmarks/step_cost.py --model resnet20_cifar --img-size 32 --batch-size 128 --precision bf16 \
        --channels-last --threads 1 --modes xe xe_gauss cl_gauss fcl fcl-random fcl-every --memory-modes xe
"""
import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

from timm_fcl import FCLConfig, FeatureContrastiveRegularizer

SUITE = (("resnet18", 64, 32), ("resnetv2_50", 64, 16), ("vit_tiny_patch16_224", 224, 8))
MODES = ("xe", "xe_gauss", "cl_gauss", "fcl", "fcl-random", "fcl-fraction", "fcl-every", "fcl-chunked")


def mode_config(mode: str, args) -> dict:
    """FCLConfig keywords of a mode: the method, and the cheaper / leaner option it turns on."""
    extra = {"fcl-fraction": {"fraction": args.fraction}, "fcl-every": {"every": args.every},
             "fcl-chunked": {"perturbed_chunks": args.chunks}, "fcl-random": {"selection": "random"}}
    return {"method": mode.split("-")[0], **extra.get(mode, {})}


def build(method: str, args, **config):
    """(regularizer, optimizer, x, y) for one method on random data; ``config`` overrides FCLConfig fields."""
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10, img_size=args.img_size) if "vit" in args.model or \
        "swin" in args.model else timm.create_model(args.model, num_classes=10)
    cfg = FCLConfig(**{"method": method, "k": args.k, "sigma": 0.5, "tau": 0.5, "weight": 1e-4, **config})
    reg = FeatureContrastiveRegularizer(model, cfg).to(args.device).train()
    opt = torch.optim.SGD(reg.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(args.device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(args.device)
    if args.channels_last:  # as train_fcl.py --channels-last: the model's weights and each batch
        reg, x = reg.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    return reg, opt, x, y, dtype


def step(reg, opt, x, y, dtype=None, at: int = 0) -> None:
    """One training step as train_fcl.py takes it (backward into the parameters only, not into FCL's input), the
    forward under autocast to ``dtype`` when one is given (as accelerate's --mixed_precision)."""
    amp = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with amp:
        out = reg(x, y, step=at)
    out.loss.backward(inputs=[p for p in reg.parameters() if p.requires_grad])
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


def settings(args) -> list[argparse.Namespace]:
    """The suite, or the one setting given by --model."""
    chosen = SUITE if args.model is None else ((args.model, args.img_size or 64, args.batch_size or 32),)
    return [argparse.Namespace(**{**vars(args), "model": m, "img_size": s, "batch_size": b}) for m, s, b in chosen]


def timed_unit(run, mode: str, args) -> float:
    """Seconds per step of one round: one step, or for fcl-every the mean over one full cycle of steps."""
    cycle = args.every if mode == "fcl-every" else 1
    sync(args.device)
    t0 = time.perf_counter()
    for at in range(cycle):  # start_step 0: step 0 of the cycle carries the FCL term
        step(*run, at=at)
    sync(args.device)
    return (time.perf_counter() - t0) / cycle


def main(args) -> dict:
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        raise SystemExit("step_cost.py: error: --precision fp16 needs a CUDA device; use bf16 on a CPU")
    torch.set_num_threads(args.threads)
    if args.threads == 1:
        print("note: 1 thread: 1x1 convolutions of batches < 16 take PyTorch's slow path (see the module docstring)")
    modes = list(dict.fromkeys(["xe"] + args.modes))
    memory_modes = list(dict.fromkeys(["xe"] + args.memory_modes))
    setups = settings(args)
    runs = {}
    for s in setups:
        for m in dict.fromkeys(modes + memory_modes):
            config = mode_config(m, args)
            runs[(s.model, m)] = build(config.pop("method"), s, **config)
    times = {key: [] for key in runs if key[1] in modes}
    for i in range(args.warmup + args.steps):
        for s in setups:
            for m in modes:
                t = timed_unit(runs[(s.model, m)], m, s)
                if i >= args.warmup:
                    times[(s.model, m)].append(t)
    memory = {}
    for s in setups:
        for m in memory_modes:
            if m not in modes:
                step(*runs[(s.model, m)])  # not timed: its first step (optimizer state, allocator) is not measured
            memory[(s.model, m)] = peak_memory_mib(runs[(s.model, m)], args.device)

    results = []
    for s in setups:
        base_t = statistics.median(times[(s.model, "xe")])
        base_m = memory[(s.model, "xe")]
        rows = []
        for m in dict.fromkeys(modes + memory_modes):
            row = {"mode": m, "config": mode_config(m, args)}
            if m in modes:
                med = statistics.median(times[(s.model, m)])
                row.update(median_s=med, ratio_to_xe=med / base_t, times_s=times[(s.model, m)])
            if m in memory_modes:
                row.update(peak_mem_mib=memory[(s.model, m)],
                           mem_ratio_to_xe=memory[(s.model, m)] / base_m if base_m > 0 else float("nan"))
            rows.append(row)
        results.append({"model": s.model, "img_size": s.img_size, "batch_size": s.batch_size, "rows": rows})
        print(f"\n{s.model} {s.img_size}px batch {s.batch_size}")
        print(f"{'mode':<14} {'median s':>9} {'x xe':>6} {'peak MiB':>9} {'x xe':>6}")
        blank = f"{'-':>9} {'-':>6}"
        for r in rows:
            t = f"{r['median_s']:9.4f} {r['ratio_to_xe']:6.2f}" if "median_s" in r else blank
            mem = f"{r['peak_mem_mib']:9.1f} {r['mem_ratio_to_xe']:6.2f}" if "peak_mem_mib" in r else blank
            print(f"{r['mode']:<14} {t} {mem}")

    print(f"\ntime / xe ({args.device}, {args.threads} threads, {args.precision}"
          f"{', channels-last' if args.channels_last else ''}, k={args.k}, fraction {args.fraction}, every "
          f"{args.every}, chunks {args.chunks}; median of {args.steps} rounds after {args.warmup} warm-up)")
    print(f"{'mode':<14} " + " ".join(f"{r['model'][:22]:>22}" for r in results))
    for m in modes:
        print(f"{m:<14} " + " ".join(f"{next(x for x in r['rows'] if x['mode'] == m)['ratio_to_xe']:22.2f}"
                                     for r in results))
    result = {"device": args.device, "threads": args.threads, "precision": args.precision,
              "channels_last": args.channels_last, "k": args.k, "fraction": args.fraction,
              "every": args.every, "chunks": args.chunks, "torch": torch.__version__, "timm": timm.__version__,
              "machine": platform.machine(), "steps": args.steps, "warmup": args.warmup, "settings": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Training-step cost of FCL, its cheaper modes and the baselines",
                                add_help=add_help)
    p.add_argument("--model", default=None, help="one setting instead of the suite")
    p.add_argument("--img-size", type=int, default=None, help="with --model (default 64)")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="with --model (default 32)")
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--fraction", type=float, default=0.25, help="FCLConfig.fraction of fcl-fraction")
    p.add_argument("--every", type=int, default=4, help="FCLConfig.every of fcl-every")
    p.add_argument("--chunks", type=int, default=4, help="FCLConfig.perturbed_chunks of fcl-chunked")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["xe", "fcl", "fcl-random", "fcl-fraction", "fcl-every"],
                   choices=MODES, help="modes timed")
    p.add_argument("--memory-modes", nargs="+", default=["xe", "fcl", "fcl-chunked", "fcl-fraction"],
                   choices=MODES, help="modes whose peak memory is measured")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="autocast dtype of the forward pass (fp16 on CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="model and batches in channels-last memory format")
    p.add_argument("--out", default="benchmarks/results/step_cost.json")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
