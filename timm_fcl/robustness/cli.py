"""Robustness evaluation of timm models (paper sections 4.2.1-4.2.2, Tables 2-3, Appendix C).

    python -m timm_fcl.eval --model output/quickstart --data-dir ../shared/data/cifar10-wds --dataset wds/cifar10 \
        --suites clean un nun generated --output output/eval/quickstart

Models: a timm name (``--checkpoint`` a safetensors / .pth file), an ``hf-hub:`` / ``local-dir:`` name, or a training
output folder (``model.safetensors`` + ``config.json``, or a train_fcl.py ``--output`` with them in ``model/``).
Repeat ``--model`` (and ``--checkpoint``) to compare models.
Suites: ``clean``, ``un`` / ``nun`` (the noisy test sets of sections 4.1 / 4.2.1), ``cifar-c`` (a CIFAR-10-C or
CIFAR-100-C folder), ``imagenet-c`` (an ImageNet-C tree), ``generated`` (the 19 corruptions applied to the clean test
set, cached). Writes ``results.json``, ``results.csv`` (one row per model x set, top-1 and top-5) and
a plot into ``--output`` (``corruptions.png`` with a corruption suite, else ``clean_and_noisy.png``: the values on
the bars, the images behind each panel); while it runs, ``results.partial.jsonl`` there holds the finished sets, and the
same command run again continues from them (``journal.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import threading
import json
import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from ..data import shard_dataset
from ..models.zoo import show_source_on_stderr
from ..run.cli import OneLineParser, run_cli
from .corruptions import CORRUPTIONS, PRESETS
from ..run import folder as run_folder
from .evaluation import (AMP_DTYPES, DEFAULT_CACHE_DIR, SUITES, CleanSource, build_sets, default_workers,
                         load_models, model_classes, model_label_names, run)
from .journal import PARTIAL, Journal
from .reports import format_table, write_reports
from .units import UNIT, check_unit

PROG = "timm_fcl.eval"
DATA_OVERRIDES = ("img_size", "mean", "std", "crop_pct", "interpolation")
# flags that change where and how fast, not what is computed: a rerun may differ in them and still continue
NOT_IN_FINGERPRINT = ("output", "compare", "batch_size", "workers", "gen_workers", "threads", "cache_dir")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Robustness evaluation of timm models", add_help=add_help)
    p.add_argument("--model", action="append", required=True,
                   help="timm name, hf-hub:/local-dir: name or training output folder (repeat to compare)")
    p.add_argument("--checkpoint", action="append",
                   help="weights for a timm-name --model (one per --model; 'none': random weights on purpose)")
    p.add_argument("--pretrained", action="store_true",
                   help="timm's pretrained weights for timm-name models without --checkpoint (tags allowed)")
    p.add_argument("--num-classes", type=int, help="default: from the checkpoint / config")
    p.add_argument("--suites", nargs="+", default=["clean", "generated"], help=f"any of {', '.join(SUITES)}")
    p.add_argument("--data-dir", help="clean test set root (WebDataset shards or an image folder)")
    p.add_argument("--dataset", default=None, help="timm dataset name, e.g. wds/cifar10 ('' for an image folder; "
                   "default: wds/NAME for a --data-dir holding _info.json, else '')")
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
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="data loader workers (default: 4 as timm's validate.py, at most the CPU count)")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), help="run the models under autocast in this precision")
    p.add_argument("--channels-last", action="store_true", help="models and inputs in channels_last memory format")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a machine shared with other jobs)")
    p.add_argument("--compare", nargs="+", default=[], help="results.json files of earlier runs to add to the plot")
    p.add_argument("--output", default="output/eval", help="folder for results.json, results.csv and the plot")
    return p


def evaluation_kwargs(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """The parsed flags as the keyword arguments of ``load_models``, ``build_sets`` and ``run``."""
    models = dict(specs=args.model, checkpoints=args.checkpoint, pretrained=args.pretrained,
                  num_classes=args.num_classes, device=args.device, channels_last=args.channels_last,
                  data_overrides={k: getattr(args, k) for k in DATA_OVERRIDES if getattr(args, k)})
    clean = CleanSource(data_dir=args.data_dir, dataset=args.dataset, split=args.split, train_split=args.train_split,
                        std_samples=args.std_samples, max_samples=args.max_samples, seed=args.seed,
                        preset=args.preset, cache_dir=args.cache_dir, gen_workers=args.gen_workers)
    sets = dict(suites=args.suites, clean=clean, cifar_c_dir=args.cifar_c_dir, imagenet_c_dir=args.imagenet_c_dir,
                class_map=args.class_map, corruptions=args.corruptions)
    return models, sets, dict(batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp,
                              channels_last=args.channels_last)


def file_signature(path: str | os.PathLike) -> list:
    """[path, size, modification time] of a weights file: a retrained file at the same path changes it."""
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def command_fingerprint(args: argparse.Namespace) -> dict:
    """What an evaluation computes: every flag that changes the numbers, and the local weights files' signatures."""
    command = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_FINGERPRINT}
    files = [c for c in args.checkpoint or [] if c != "none" and os.path.isfile(c)]
    for spec in args.model:
        folder = spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec
        export = run_folder.find_export(folder) if os.path.isdir(folder) else None
        files += [export / run_folder.WEIGHTS] if export else []
    command["weight_files"] = [file_signature(f) for f in files]
    command["accuracy_unit"] = UNIT  # rows kept by a version that wrote fractions are not mixed with these
    return command


def read_earlier(paths: Sequence[str]) -> Dict[str, dict]:
    """The results of earlier evaluations (``--compare``), first file first for a label found twice; an entry in
    another unit than percent is refused."""
    earlier: Dict[str, dict] = {}
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--compare file {path} does not exist")
        results = json.loads(path.read_text())
        for label, entry in results.items():
            check_unit(entry, f"--compare file {path}, {label!r}")
        earlier.update({k: v for k, v in results.items() if k not in earlier})
    return earlier


@contextlib.contextmanager
def output_lock(output: Path):
    """The evaluation's hold on its --output folder (the lock training uses): a second evaluation started on the same
    folder stops with one line naming the holder."""
    from ..training.lock import LockedError, RunLock

    lock = RunLock(output / run_folder.LOCK)
    try:
        lock.acquire()
    except LockedError as exn:
        raise ValueError(str(exn)) from None
    try:
        yield lock
    finally:
        lock.release()


# the counts a command line may set, and the least each may be
COUNTS = {"max_samples": 1, "batch_size": 1, "std_samples": 1, "num_classes": 1, "threads": 1, "workers": 0,
          "gen_workers": 0}


def check_counts(args: argparse.Namespace) -> None:
    """A count out of range is one line naming the flag (--max-samples -3 ended in numpy's 'Negative dimensions')."""
    for name, least in COUNTS.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")


def main(args: argparse.Namespace) -> Dict[str, dict]:
    start = time.time()
    check_counts(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    earlier = read_earlier(args.compare)  # before the long part, so a wrong path fails at once
    # --dataset unset: wds/NAME for a shard folder (as an image folder it would hold 0 images), else ''
    args.dataset, note = shard_dataset(args.dataset, args.data_dir)
    if note:
        print(note)
    model_kwargs, set_kwargs, run_kwargs = evaluation_kwargs(args)
    show_source_on_stderr()  # a zoo tag says whether the Hub copy or the installed one was loaded
    models = load_models(**model_kwargs)
    with output_lock(Path(args.output)):  # one evaluation writes a folder at a time: their rows never mix
        journal = Journal(Path(args.output) / PARTIAL, command_fingerprint(args))
        if journal.done:
            print(f"continuing: {len(journal.done)} finished set(s) read from {journal.path}")
        sets, suite_presets = build_sets(data_config=models[0].data_config, num_classes=model_classes(models),
                                         label_names=model_label_names(models), **set_kwargs)
        results = run(models=models, sets=sets, suite_presets=suite_presets, done=journal.done, on_row=journal.record,
                      **run_kwargs)
        results.update({k: v for k, v in earlier.items() if k not in results})
        print(format_table(results))
        paths = write_reports(results, args.output)
        journal.finish()
    print(f"wrote {', '.join(map(str, paths))} ({time.time() - start:.0f} s)")
    return results


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds: the generation pool ends its workers, finished rows stay in the journal


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Run main; bad paths, names or flags end with one error line (exit 2), not a traceback. SIGTERM stops it as
    Ctrl-C does: what is finished is kept (rerun the command to continue) and no worker process is left behind."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        return run_cli(PROG, lambda a: main(get_args_parser().parse_args(a)), argv,
                       errors=(ValueError, FileNotFoundError, NotADirectoryError))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
