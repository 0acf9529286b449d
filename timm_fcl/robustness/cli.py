"""Robustness evaluation of timm models (paper sections 4.2.1-4.2.2, Tables 2-3, Appendix C).

    python -m timm_fcl.eval --model output/quickstart --data-dir ../shared/data/cifar10-wds --dataset wds/cifar10 \
        --suites clean un nun generated --output output/eval/quickstart

Models: a timm name (``--checkpoint`` a safetensors / .pth file), an ``hf-hub:`` / ``local-dir:`` name, or a training
output folder (``model.safetensors`` + ``config.json``, or a train_fcl.py ``--output`` with them in ``model/``).
Repeat ``--model`` (and ``--checkpoint``) to compare models.
Suites: ``clean``, ``un`` / ``nun`` (the noisy test sets of sections 4.1 / 4.2.1), ``cifar-c`` (a CIFAR-10-C or
CIFAR-100-C folder), ``imagenet-c`` (an ImageNet-C tree), ``generated`` (the 19 corruptions applied to the clean test
set, cached). Writes ``results.json``, ``results.csv`` (one row per model x set) and ``corruptions.png`` into
``--output``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .._cli import OneLineParser, run_cli
from .corruptions import CORRUPTIONS, PRESETS
from .evaluation import DEFAULT_CACHE_DIR, SUITES, CleanSource, build_sets, load_models, run
from .reports import format_table, write_reports

PROG = "timm_fcl.eval"
DATA_OVERRIDES = ("img_size", "mean", "std", "crop_pct", "interpolation")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Robustness evaluation of timm models", add_help=add_help)
    p.add_argument("--model", action="append", required=True,
                   help="timm name, hf-hub:/local-dir: name or training output folder (repeat to compare)")
    p.add_argument("--checkpoint", action="append", help="weights for a timm-name --model (one per --model, or 'none')")
    p.add_argument("--num-classes", type=int, help="default: from the checkpoint / config")
    p.add_argument("--suites", nargs="+", default=["clean", "generated"], help=f"any of {', '.join(SUITES)}")
    p.add_argument("--data-dir", help="clean test set root (WebDataset shards or an image folder)")
    p.add_argument("--dataset", default="", help="timm dataset name, e.g. wds/cifar10 ('' for an image folder)")
    p.add_argument("--split", default="test")
    p.add_argument("--train-split", default="train", help="split whose per-pixel std places the NUN noise")
    p.add_argument("--std-samples", type=int, default=10000, help="training images used for that std")
    p.add_argument("--max-samples", type=int, help="evaluate a seeded random subset of the clean test set")
    p.add_argument("--cifar-c-dir", help="CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy, labels.npy)")
    p.add_argument("--imagenet-c-dir", help="ImageNet-C folder (<corruption>/<severity>/<wnid>/*.JPEG)")
    p.add_argument("--class-map", help="ImageNet-C wnid -> index (.txt, one wnid per line); default: sorted wnids")
    p.add_argument("--corruptions", nargs="+", choices=CORRUPTIONS, help="default: all 19 (those present on disk)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="generated suite parameters; default by image size")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--gen-workers", type=int, default=0, help="processes generating corruptions (0: in-process)")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset, the generated corruptions and UN / NUN")
    p.add_argument("--img-size", type=int, help="crop larger clean images to this size (default: the model's)")
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--interpolation")
    p.add_argument("--mean", type=float, nargs=3, help="override the model's normalization mean")
    p.add_argument("--std", type=float, nargs=3, help="override the model's normalization std")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a machine shared with other jobs)")
    p.add_argument("--compare", nargs="+", default=[], help="results.json files of earlier runs to add to the plot")
    p.add_argument("--output", default="output/eval", help="folder for results.json, results.csv, corruptions.png")
    return p


def evaluation_kwargs(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """The parsed flags as the keyword arguments of ``load_models``, ``build_sets`` and ``run``."""
    models = dict(specs=args.model, checkpoints=args.checkpoint, num_classes=args.num_classes, device=args.device,
                  data_overrides={k: getattr(args, k) for k in DATA_OVERRIDES if getattr(args, k)})
    clean = CleanSource(data_dir=args.data_dir, dataset=args.dataset, split=args.split, train_split=args.train_split,
                        std_samples=args.std_samples, max_samples=args.max_samples, seed=args.seed,
                        preset=args.preset, cache_dir=args.cache_dir, gen_workers=args.gen_workers)
    sets = dict(suites=args.suites, clean=clean, cifar_c_dir=args.cifar_c_dir, imagenet_c_dir=args.imagenet_c_dir,
                class_map=args.class_map, corruptions=args.corruptions)
    return models, sets, dict(batch_size=args.batch_size, workers=args.workers, device=args.device)


def read_earlier(paths: Sequence[str]) -> Dict[str, dict]:
    """The results of earlier evaluations (``--compare``), first file first for a label found twice."""
    earlier: Dict[str, dict] = {}
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--compare file {path} does not exist")
        earlier.update({k: v for k, v in json.loads(path.read_text()).items() if k not in earlier})
    return earlier


def main(args: argparse.Namespace) -> Dict[str, dict]:
    start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    earlier = read_earlier(args.compare)  # before the long part, so a wrong path fails at once
    model_kwargs, set_kwargs, run_kwargs = evaluation_kwargs(args)
    models = load_models(**model_kwargs)
    sets, suite_presets = build_sets(data_config=models[0].data_config, **set_kwargs)
    results = run(models=models, sets=sets, suite_presets=suite_presets, **run_kwargs)
    results.update({k: v for k, v in earlier.items() if k not in results})
    print(format_table(results))
    paths = write_reports(results, args.output)
    print(f"wrote {', '.join(map(str, paths))} ({time.time() - start:.0f} s)")
    return results


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Run main; bad paths, names or flags end with one error line (exit 2), not a traceback."""
    return run_cli(PROG, lambda a: main(get_args_parser().parse_args(a)), argv,
                   errors=(ValueError, FileNotFoundError, NotADirectoryError))
