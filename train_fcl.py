#!/usr/bin/env python3
"""Train a timm model with Feature Contrastive Learning (FCL) under Accelerate.

    accelerate launch train_fcl.py --config configs/cifar10_resnet56_fcl.yaml --data-dir SHARDS

The paper (Feature Contrastive Learning, section 4 and Appendix B) trains with SGD or Adam, a step or
exponential learning-rate schedule, and turns the FCL term on after a number of epochs with a linear ramp;
every one of those is a flag here, and configs/ holds the paper's recipes. Flag names follow timm's train.py.

The FCL regularizer (one nn.Module around the timm model) is what accelerate prepares, so DDP and autocast see
one forward and one backward per step. Runs resume exactly (mid-epoch, any number of processes) from the
latest state in --output, and every epoch exports the bare timm model as model.safetensors + config.json.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import io
import itertools
import json
import logging
import math
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

import timm_fcl  # noqa: F401  (registers timm_fcl's models, e.g. lenet_mnist, in timm)
from timm_fcl import FCLConfig, FCLOutput, FeatureContrastiveRegularizer, PatchGaussian, run_folder
from timm_fcl._cli import OneLineParser, UsageError, first_line, run_cli
from timm_fcl.checkpoint import (atomic_write_text, export_model, list_states, load_training_state, run_tag,
                                 save_state_atomic)
from timm_fcl.config import METHODS
from timm_fcl.data import AugMixViews, DataError, EpochStream, create_source, make_loader, seeded
from timm_fcl.metrics import topk_hits
from timm_fcl.model_io import create_model, default_in_chans
from timm_fcl.run_lock import LockedError, RunLock

_logger = logging.getLogger("train_fcl")


class ConfigError(UsageError):
    """A bad flag, config file or model choice: reported as one line."""


class DivergedError(RuntimeError):
    """The loss or the weights became NaN or infinite: reported as one line, nothing of it saved."""


# ------------------------------------------------------------------------------------------------------ arguments


def _fcl_flags(parser: argparse.ArgumentParser) -> None:
    """An --fcl-* flag for every FCLConfig field (--method for the method), typed from the dataclass."""
    group = parser.add_argument_group("FCL (paper section 3; defaults of section 4.1)")
    group.add_argument("--method", default="fcl", choices=METHODS, help="training objective (paper section 4.2)")
    hints = typing.get_type_hints(FCLConfig)
    for field in dataclasses.fields(FCLConfig):
        if field.name == "method":
            continue
        kind = hints[field.name]
        args = typing.get_args(kind)
        flag = "--fcl-" + field.name.replace("_", "-")
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            inner = next(a for a in args if a is not type(None))
            if typing.get_origin(inner) is tuple:  # e.g. input_std: Optional[tuple[float, ...]]
                default = "the --std of the input normalization" if field.name == "input_std" else "none"
                group.add_argument(flag, type=float, nargs="+", default=field.default, dest="fcl_" + field.name,
                                   help=f"FCLConfig.{field.name} (default: {default})")
                continue
            kind = inner
        group.add_argument(flag, type=kind, default=field.default, dest="fcl_" + field.name,
                           help=f"FCLConfig.{field.name} (default {field.default})")
    group.add_argument("--fcl-start-epochs", type=float, default=None,
                       help="turn FCL on after this many epochs (sets --fcl-start-step from the steps per epoch)")
    group.add_argument("--fcl-ramp-epochs", type=float, default=None,
                       help="linear ramp of the FCL weight over this many epochs (sets --fcl-ramp-steps)")
    group.add_argument("--patch-gaussian", action="store_true", help="Patch Gaussian augmentation (Lopes et al.)")
    group.add_argument("--patch-gaussian-size", type=int, default=25)
    group.add_argument("--patch-gaussian-sigma", type=float, default=0.1)


def _timm_flags(parser: argparse.ArgumentParser) -> None:
    """The regularization, naming, metric, tracker and precision flags of timm's train.py, with its names, defaults and
    meanings (--amp: see resolve_mixed_precision; --output keeps this script's meaning, the run folder itself)."""
    from timm.utils import ParseKwargs

    group = parser.add_argument_group("regularization (timm's train.py)")
    group.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (timm's default 0.1; the paper "
                       "trains with plain cross-entropy: 0)")
    group.add_argument("--mixup", type=float, default=0.0, help="mixup alpha, mixup on if > 0")
    group.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha, cutmix on if > 0")
    group.add_argument("--cutmix-minmax", type=float, nargs="+", default=None,
                       help="cutmix min/max area ratio; overrides the alpha and turns cutmix on")
    group.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    group.add_argument("--mixup-switch-prob", type=float, default=0.5,
                       help="probability of cutmix instead of mixup when both are on")
    group.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"),
                       help="mixup / cutmix parameters drawn per batch, pair or element")
    group.add_argument("--mixup-off-epoch", type=int, default=0, help="no mixup / cutmix from this epoch on (0: never)")
    group.add_argument("--drop", type=float, default=0.0, help="dropout rate of the model")
    group.add_argument("--drop-path", type=float, default=None, help="drop path (stochastic depth) rate of the model")
    group.add_argument("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
                       help="more timm.create_model arguments")
    group.add_argument("--aug-splits", type=int, default=0, help="AugMix views per image (0: off, else >= 2: a clean "
                       "view and augmented ones, e.g. with --aa augmix-m3-w3); the FCL term is taken on the clean view")
    group.add_argument("--jsd-loss", action="store_true", help="Jensen-Shannon consistency + CE over the --aug-splits")
    group.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"), help="how --clip-grad clips")

    group = parser.add_argument_group("run naming, metrics, trackers (timm's train.py)")
    group.add_argument("--experiment", default="", help="run name: the run folder is output/train/NAME (OUTPUT/NAME "
                       "with --output)")
    group.add_argument("--eval-metric", default="top1", choices=("top1", "top5", "loss"),
                       help="validation metric choosing model_best/ (lower is better for loss)")
    group.add_argument("--log-wandb", action="store_true", help="also log to Weights & Biases (needs wandb)")
    group.add_argument("--amp", action="store_true", help="mixed precision: the launch config's, else bf16 on a CPU "
                       "and fp16 on a GPU (--mixed-precision, when given, wins)")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = OneLineParser(description="Train a timm model with Feature Contrastive Learning", add_help=add_help)
    parser.add_argument("--config", default=None, help="YAML file setting any flag (by its long name); "
                        "flags given on the command line override it")
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None, help="shard folder (with _info.json), image folder or "
                       "torchvision root")
    group.add_argument("--dataset", default="", help="wds/NAME (WebDataset shards), torch/NAME (torchvision), "
                       "or '' (image folder with train/ and validation/ subfolders)")
    group.add_argument("--train-split", default="train")
    group.add_argument("--val-split", default="validation")
    group.add_argument("--dataset-download", action="store_true", help="let torchvision download torch/ sets")
    group.add_argument("--train-subset", type=int, default=None, help="train on the first N samples of each epoch's shuffled order")
    group.add_argument("--val-subset", type=int, default=None, help="validate on an evenly spaced subset of N")
    group.add_argument("--shuffle-buffer", type=int, default=2048, help="WebDataset in-worker shuffle buffer")
    group.add_argument("-j", "--workers", type=int, default=2, help="loader workers per process")
    group.add_argument("--pin-mem", action="store_true")

    group = parser.add_argument_group("model")
    group.add_argument("--model", default="resnet50")
    group.add_argument("--pretrained", action="store_true",
                       help="start from pretrained weights (timm's, an hf-hub:/local-dir: model's, or --pretrained-path); "
                            "a different --num-classes resets the classifier")
    group.add_argument("--pretrained-path", default=None,
                       help="load this file (safetensors preferred) as the pretrained weights, with the classifier "
                            "adapted to --num-classes as timm does for its own pretrained weights")
    group.add_argument("--initial-checkpoint", default="", help="load these weights before training")
    group.add_argument("--num-classes", type=int, default=None, help="default: from the checkpoint or the data")
    group.add_argument("--in-chans", type=int, default=None)
    group.add_argument("--img-size", type=int, default=None)
    group.add_argument("--input-size", type=int, nargs=3, default=None, metavar="C H W")
    group.add_argument("--crop-pct", type=float, default=None, help="validation center crop fraction")
    group.add_argument("--mean", type=float, nargs="+", default=None)
    group.add_argument("--std", type=float, nargs="+", default=None)
    group.add_argument("--interpolation", default="")
    group.add_argument("--channels-last", action="store_true")
    group.add_argument("--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                       help="torch.compile the model's forward_features and forward_head, the calls the FCL step "
                            "makes (default backend inductor; compiling takes minutes on a CPU)")
    group.add_argument("--model-ema", action="store_true", help="keep and export an EMA of the weights")
    group.add_argument("--model-ema-decay", type=float, default=0.9998)
    group.add_argument("--model-ema-warmup", action="store_true")

    group = parser.add_argument_group("augmentation (timm's create_transform)")
    group.add_argument("--no-aug", action="store_true")
    group.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0])
    group.add_argument("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0])
    group.add_argument("--hflip", type=float, default=0.5)
    group.add_argument("--color-jitter", type=float, default=0.4)
    group.add_argument("--aa", default=None, help="auto-augment policy, e.g. rand-m9-mstd0.5")
    group.add_argument("--reprob", type=float, default=0.0)
    group.add_argument("--crop-pad", type=int, default=0, metavar="PAD",
                       help="the standard CIFAR augmentation instead of timm's: zero-pad by PAD, random crop of the "
                            "input size, flip with --hflip (--scale, --ratio, --color-jitter, --aa, --reprob unused)")

    group = parser.add_argument_group("optimization")
    group.add_argument("-b", "--batch-size", type=int, default=128, help="per process")
    group.add_argument("--grad-accum-steps", type=int, default=1)
    group.add_argument("--epochs", type=int, default=300)
    group.add_argument("--opt", default="sgd", help="timm optimizer name (sgd is Nesterov; momentum is plain)")
    group.add_argument("--opt-eps", type=float, default=None)
    group.add_argument("--opt-betas", type=float, nargs="+", default=None)
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight-decay", type=float, default=2e-5)
    group.add_argument("--clip-grad", type=float, default=None)
    group.add_argument("--lr", type=float, default=None, help="default: lr-base x global batch / lr-base-size")
    group.add_argument("--lr-base", type=float, default=0.1)
    group.add_argument("--lr-base-size", type=int, default=256)
    group.add_argument("--sched", default="cosine", help="timm scheduler: cosine, step, multistep, plateau, ...")
    group.add_argument("--sched-on-updates", action="store_true")
    group.add_argument("--warmup-epochs", type=int, default=5)
    group.add_argument("--warmup-lr", type=float, default=1e-5)
    group.add_argument("--warmup-prefix", action="store_true")
    group.add_argument("--min-lr", type=float, default=0.0)
    group.add_argument("--decay-epochs", type=float, default=90)
    group.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270])
    group.add_argument("--decay-rate", "--dr", type=float, default=0.1)
    group.add_argument("--cooldown-epochs", type=int, default=0)

    _fcl_flags(parser)
    _timm_flags(parser)

    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--output", default=None, help="run folder (default: a new output/train/DATE-TIME-MODEL-SIZE); "
                       "a run finds its latest state there and resumes from it")
    group.add_argument("--resume", default="", help="resume from this state folder (or run folder's latest)")
    group.add_argument("--checkpoint-interval", type=int, default=0, help="also save the state every N steps")
    group.add_argument("--checkpoint-hist", type=int, default=2, help="training states kept")
    group.add_argument("--log-interval", type=int, default=50)
    group.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "fp16"),
                       help="default: accelerate's launch config, else no")
    group.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def _read_config(path: str) -> dict:
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except OSError as exn:
        raise ConfigError(f"cannot read --config {path}: {exn.strerror}") from None
    except yaml.YAMLError as exn:
        mark = getattr(exn, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"--config {path}: YAML syntax error{where}: "
                          f"{getattr(exn, 'problem', None) or first_line(exn)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected flag names and values, got a {type(values).__name__}")
    return values


def _config_value(action: argparse.Action, path: str, key: str, value):
    """A YAML value checked and converted as argparse checks and converts the same value on the command line (YAML's
    own types would slip past argparse: `epochs: 2.5`, `lr: [0.1]`, or `mixed_precision: no`, which YAML reads as
    false)."""
    kind = {int: "an integer", float: "a number"}.get(action.type, "a string")

    def refuse(expected: str) -> ConfigError:
        return ConfigError(f"--config {path}: {key}: expected {expected}, got {value!r}")

    def scalar(item):
        if isinstance(item, (bool, list, dict)) or item is None:
            raise refuse(f"{kind} (quote words YAML reads as booleans)" if isinstance(item, bool) else kind)
        try:
            return (action.type or str)(item if isinstance(item, str) else str(item))
        except (TypeError, ValueError):
            raise refuse(kind) from None

    if value is None and action.default is None:
        return None
    if isinstance(action.default, dict):  # KEY=VALUE pairs on the command line (--model-kwargs): a mapping in YAML
        if not isinstance(value, dict):
            raise refuse("a mapping")
        return value
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        count = action.nargs if isinstance(action.nargs, int) else None
        if not isinstance(value, list) or (count and len(value) != count) or (action.nargs == "+" and not value):
            raise refuse(f"a list of {count or 'one or more'} values")
        return [scalar(item) for item in value]
    return scalar(value)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Flags, with --config's YAML as defaults (command line wins), checked as argparse checks the command line."""
    parser = get_args_parser()
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("--config", default=None)
    pre, _ = config_parser.parse_known_args(argv)
    if pre.config:
        values = _read_config(pre.config)
        dests = {a.dest: a for a in parser._actions}
        unknown = [k for k in values if str(k).replace("-", "_") not in dests]
        if unknown:
            raise ConfigError(f"{pre.config}: unknown setting(s) {', '.join(map(str, unknown))}")
        parser.set_defaults(**{k.replace("-", "_"): _config_value(dests[k.replace("-", "_")], pre.config, k, v)
                               for k, v in values.items()})
    args = parser.parse_args(argv)
    for action in parser._actions:  # a YAML value bypasses argparse's choices check
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            raise ConfigError(f"argument {action.option_strings[-1]}: invalid choice: {value!r} "
                              f"(choose from {', '.join(map(str, action.choices))})")
    return args


# the lowest value of each numeric flag (a flag's every value, for lists); FCLConfig checks the --fcl-* fields
_AT_LEAST = {"epochs": 1, "batch_size": 1, "grad_accum_steps": 1, "log_interval": 1, "lr_base_size": 1,
             "train_subset": 1, "val_subset": 1, "num_classes": 1, "in_chans": 1, "img_size": 1, "input_size": 1,
             "patch_gaussian_size": 1, "workers": 0, "shuffle_buffer": 0, "checkpoint_interval": 0,
             "checkpoint_hist": 0, "seed": 0, "warmup_epochs": 0, "cooldown_epochs": 0, "decay_milestones": 0,
             "warmup_lr": 0, "min_lr": 0, "momentum": 0, "weight_decay": 0, "hflip": 0, "reprob": 0,
             "color_jitter": 0, "model_ema_decay": 0, "opt_betas": 0, "patch_gaussian_sigma": 0,
             "fcl_start_epochs": 0, "fcl_ramp_epochs": 0, "smoothing": 0, "mixup": 0, "cutmix": 0, "cutmix_minmax": 0,
             "mixup_prob": 0, "mixup_switch_prob": 0, "mixup_off_epoch": 0, "drop": 0, "drop_path": 0, "crop_pad": 0,
             "lr": 0}  # lr 0 trains nothing on purpose (e.g. checking what a run loads)
_ABOVE = {"lr_base": 0, "decay_epochs": 0, "decay_rate": 0, "clip_grad": 0, "opt_eps": 0, "crop_pct": 0,
          "std": 0, "scale": 0, "ratio": 0}
_AT_MOST = {"hflip": 1, "reprob": 1, "model_ema_decay": 1, "crop_pct": 1, "scale": 1, "opt_betas": 1, "smoothing": 1,
            "cutmix_minmax": 1, "mixup_prob": 1, "mixup_switch_prob": 1, "drop": 1, "drop_path": 1}
# flags that change how a run goes, not what it computes: a resume may change them (README, "Resuming"); the data
# may move (--data-dir) as long as it resolves to the same splits and sizes
MAY_CHANGE_ON_RESUME = ("workers", "pin_mem", "log_interval", "no_progress", "checkpoint_interval", "checkpoint_hist",
                        "resume", "output", "experiment", "log_wandb", "config", "dataset_download", "data_dir",
                        "epochs")
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "rsqrt", "constant")  # timm 1.0.31's


def _values(args, dest: str) -> list:
    value = getattr(args, dest, None)
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _check_numbers(parser: argparse.ArgumentParser, args) -> None:
    for action in parser._actions:
        flag = f"argument {max(action.option_strings, key=len)}" if action.option_strings else action.dest
        for v in _values(args, action.dest):
            if action.type is float and not math.isfinite(v):
                raise ConfigError(f"{flag}: must be a finite number, got {v}")
            low, above, high = _AT_LEAST.get(action.dest), _ABOVE.get(action.dest), _AT_MOST.get(action.dest)
            if (low is not None and v < low) or (above is not None and v <= above) or (high is not None and v > high):
                bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
                          f"<= {high}" if high is not None else ""]
                raise ConfigError(f"{flag}: must be {' and '.join(b for b in bounds if b)}, got {v}")


def _check_names(args) -> None:
    from timm.optim import list_optimizers

    if args.sched not in SCHEDULERS:
        raise ConfigError(f"argument --sched: unknown scheduler {args.sched!r} (choose from {', '.join(SCHEDULERS)})")
    *prefix, name = args.opt.lower().split("_")  # timm reads 'lookahead_NAME' as NAME wrapped in Lookahead
    if prefix not in ([], ["lookahead"]) or name not in list_optimizers():
        raise ConfigError(f"argument --opt: unknown optimizer {args.opt!r} (timm.optim.list_optimizers() lists "
                          f"them, optionally prefixed lookahead_)")


def _check_channels(args) -> None:
    channels = _in_chans(args) or default_in_chans(args.model)
    for dest in ("mean", "std", "fcl_input_std"):
        values = _values(args, dest)
        if values and len(values) not in (1, channels):
            raise ConfigError(f"argument --{dest.replace('_', '-')}: {len(values)} values for {channels} input "
                              f"channels (give 1 or {channels})")


def _writable(folder: Path) -> bool:
    # root passes os.access on any folder; a folder without write bits is meant read-only all the same
    return os.access(folder, os.W_OK | os.X_OK) and bool(folder.stat().st_mode & 0o222)


def _check_output(output: Path) -> None:
    existing = next(p for p in [output, *output.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--output {output}: {existing} is a file, not a folder")
    if not _writable(existing):
        raise ConfigError(f"--output {output}: {existing} is not writable")


def validate_args(args) -> None:
    """Every check that needs no model and no data, so a bad flag stops the run before any work or any write."""
    parser = get_args_parser()
    if not args.data_dir:
        raise ConfigError("--data-dir is needed")
    check_timm_flags(args)
    _check_numbers(parser, args)
    _check_names(args)
    _check_channels(args)
    build_fcl_config(args, {"std": (1.0,)}, updates_per_epoch=1)  # FCLConfig's own checks
    _check_output(output_folder(args))


def output_folder(args) -> Path:
    """The run folder --experiment / --output name, or for an unnamed run the folder its new run folder is made in."""
    base = Path(args.output or os.path.join("output", "train"))
    return base / args.experiment if args.experiment else base


# ------------------------------------------------------------------------------------------------------ building
def _device_type() -> str:
    """The accelerator this machine has (cuda, mps, xpu, ...), or cpu."""
    if hasattr(torch, "accelerator"):
        found = torch.accelerator.current_accelerator(check_available=True)
        return found.type if found is not None else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_mixed_precision(mixed_precision: str, device_type: str) -> None:
    """fp16 autocast needs a GPU loss scaler; on the CPU only bf16 (or no) autocast exists."""
    if mixed_precision == "fp16" and device_type == "cpu":
        raise ConfigError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no")


def _in_chans(args) -> Optional[int]:
    return args.in_chans or (args.input_size[0] if args.input_size else None)


def mixup_active(args) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def check_timm_flags(args) -> None:
    """Combinations of timm's flags that cannot work, refused with one line before anything is written."""
    if args.aug_splits < 0 or args.aug_splits == 1:
        raise ConfigError("--aug-splits must be 0 (off) or >= 2 (a clean view and augmented ones)")
    if args.jsd_loss and not args.aug_splits:
        raise ConfigError("--jsd-loss needs --aug-splits >= 2 (it compares the views of each image)")
    if args.aug_splits and mixup_active(args):
        raise ConfigError("--mixup / --cutmix cannot mix AugMix views (--aug-splits); use one or the other")
    if args.aug_splits and args.no_aug:
        raise ConfigError("--aug-splits augments views of each image; it cannot be used with --no-aug")
    if args.aug_splits and args.crop_pad:
        raise ConfigError("--crop-pad replaces timm's augmentation stages that --aug-splits builds its views from")
    if args.amp and args.mixed_precision == "no":
        raise ConfigError("--amp contradicts --mixed-precision no")
    if args.log_wandb:
        from accelerate.utils import is_wandb_available
        if not is_wandb_available():
            raise ConfigError("--log-wandb needs wandb (pip install wandb)")


def resolve_mixed_precision(args, device_type: str) -> Optional[str]:
    """--amp as timm users type it: the launch config's mixed precision (accelerate launch --mixed_precision or
    accelerate config) when it names one, else bf16 on a CPU (its only autocast) and fp16 on a GPU (timm's --amp
    dtype); an explicit --mixed-precision wins."""
    if args.mixed_precision or not args.amp:
        return args.mixed_precision
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched != "no":
        return launched
    return "bf16" if device_type == "cpu" else "fp16"


def _timestamped_name(args) -> str:
    """timm's name for an unnamed run: DATE-TIME-MODEL-IMGSIZE."""
    from timm.models import get_pretrained_cfg_value, safe_model_name

    size = args.input_size[-1] if args.input_size else args.img_size
    if size is None:
        try:
            size = (get_pretrained_cfg_value(args.model, "input_size") or [None])[-1]
        except (RuntimeError, ValueError):  # hub names and folders carry their config elsewhere
            size = None
    parts = [time.strftime("%Y%m%d-%H%M%S"), safe_model_name(args.model)] + ([str(size)] if size else [])
    return "-".join(parts)


def _claim_new_folder(parent: Path, name: str) -> Path:
    """A folder that did not exist, created here (NAME, else NAME-1, NAME-2, ...): runs started in the same second
    never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count():
        path = parent / (name if n == 0 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def run_output(args, state) -> Path:
    """The run folder, named as timm names runs: --experiment NAME is output/train/NAME (OUTPUT/NAME with --output),
    --output alone is the run folder itself; with neither, a new timestamped folder, so that two runs started with
    default flags never resume each other (resuming needs a named run folder or --resume). The main process
    claims the new folder and tells the others."""
    from accelerate.utils import broadcast_object_list

    if args.experiment or args.output:
        return output_folder(args)
    claimed = [str(_claim_new_folder(Path("output", "train"), _timestamped_name(args)))
               if state.is_main_process else None]
    broadcast_object_list(claimed)
    return Path(claimed[0])


def trackers(args, output: Path) -> list:
    """Accelerate's trackers: TensorBoard in OUTPUT/tb, and Weights & Biases with --log-wandb."""
    from accelerate.tracking import TensorBoardTracker

    return [TensorBoardTracker("tb", str(output))] + (["wandb"] if args.log_wandb else [])


def setup(args) -> tuple:
    """The Accelerator (cpu=True where no accelerator exists, so `accelerate launch --multi_gpu` there runs as MULTI_CPU
    over gloo instead of N unrelated single processes), logging, the seed, and the run folder's path."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed

    device_type = _device_type()
    mixed_precision = resolve_mixed_precision(args, device_type)
    check_mixed_precision(mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no"), device_type)
    output = run_output(args, PartialState(cpu=device_type == "cpu"))
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device_type == "cpu",
                              log_with=trackers(args, output), project_dir=str(output))
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    set_seed(args.seed)
    return accelerator, output


def lock_output(accelerator, output: Path) -> RunLock:
    """The main process locks the run folder for the whole run; it tells the other ranks, so every rank of a refused
    run stops with the same line."""
    from accelerate.utils import broadcast_object_list

    lock, refusal = RunLock(output / run_folder.LOCK), [None]
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except LockedError as exn:
            refusal[0] = str(exn)
    if accelerator.num_processes > 1:
        broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise ConfigError(refusal[0])
    return lock


def build_model(args, num_classes_from_data: Optional[int]) -> torch.nn.Module:
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        raise ConfigError(f"--initial-checkpoint {args.initial_checkpoint} does not exist")
    if args.num_classes is None and num_classes_from_data is None and not args.initial_checkpoint:
        raise ConfigError("--num-classes is needed: neither the data nor a checkpoint gives the class count")
    return create_model(args.model, num_classes=args.num_classes, default_num_classes=num_classes_from_data,
                        in_chans=_in_chans(args), pretrained=args.pretrained, pretrained_path=args.pretrained_path,
                        checkpoint=args.initial_checkpoint or None, checkpoint_flag="--initial-checkpoint",
                        drop_rate=args.drop, drop_path_rate=args.drop_path, **args.model_kwargs)


def pad_crop_transform(data_config: dict, *, pad: int, hflip: float):
    """CIFAR's "random cropping and flipping" (He et al. 2016; the paper's section 4.2): zero-pad by ``pad``, crop
    the input size at a random place, flip horizontally with probability ``hflip``, normalize. timm's
    create_transform only has the random-resized crop, which rescales as well as shifts."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomCrop(data_config["input_size"][-2:], padding=pad), transforms.RandomHorizontalFlip(hflip),
        transforms.ToTensor(), transforms.Normalize(data_config["mean"], data_config["std"])])


def build_transforms(args, data_config: dict):
    from timm.data import create_transform

    if args.crop_pad and not args.no_aug:
        train_tf = pad_crop_transform(data_config, pad=args.crop_pad, hflip=args.hflip)
    else:
        # with --aug-splits, timm's (primary, secondary, final) stages, which AugMixViews turns into the views
        train_tf = create_transform(
            **data_config, is_training=not args.no_aug, no_aug=args.no_aug, scale=args.scale, ratio=args.ratio,
            hflip=args.hflip, color_jitter=args.color_jitter, auto_augment=args.aa, re_prob=args.reprob,
            separate=args.aug_splits > 0)
    if args.patch_gaussian:
        from torchvision.transforms import Normalize
        final = train_tf[-1] if args.aug_splits else train_tf
        steps = list(final.transforms)
        at = next(i for i, t in enumerate(steps) if isinstance(t, Normalize))
        # on [0,1] pixels, before normalization (Lopes et al. 2019, as the paper uses it)
        steps.insert(at, PatchGaussian(patch_size=args.patch_gaussian_size, max_sigma=args.patch_gaussian_sigma))
        final.transforms = steps
    if args.aug_splits:
        train_tf = AugMixViews(train_tf, args.aug_splits)
    eval_tf = create_transform(**data_config, is_training=False)
    return train_tf, eval_tf


@dataclasses.dataclass
class Data:
    """The per-rank training and validation streams, their loaders, and what the model's input needs."""
    train: EpochStream
    val: EpochStream
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    model: torch.nn.Module
    num_classes: int
    class_names: Optional[list]
    data_config: dict


def build_data(args, accelerator, streams: Optional[int] = None) -> Data:
    """The model (its class count may come from the data, its input config decides the transforms) and the streams;
    each rank reads its own share, so the loaders are not prepared by accelerate (timm's rule). ``streams``: the
    parts of each rank's training share (a resumed run's own; default one per loader worker)."""
    from timm.data import resolve_data_config

    in_chans = _in_chans(args) or default_in_chans(args.model)
    train_src = create_source(args.dataset, args.data_dir, args.train_split, in_chans=in_chans,
                              download=args.dataset_download)
    val_src = create_source(args.dataset, args.data_dir, args.val_split, in_chans=in_chans,
                            download=args.dataset_download)
    model = build_model(args, train_src.num_classes)
    if train_src.num_classes and train_src.num_classes > model.num_classes:
        raise DataError(f"the data has {train_src.num_classes} classes but the model has {model.num_classes} outputs")
    data_config = resolve_data_config({**vars(args), "in_chans": _in_chans(args)}, model=model,
                                      verbose=accelerator.is_main_process)
    train_tf, eval_tf = build_transforms(args, data_config)
    common = dict(seed=args.seed, batch_size=args.batch_size, num_workers=args.workers,
                  rank=accelerator.process_index, world_size=accelerator.num_processes)
    train = EpochStream(train_src, transform=train_tf, is_training=True, subset=args.train_subset,
                        shuffle_buffer=args.shuffle_buffer, streams=streams, **common)
    val = EpochStream(val_src, transform=eval_tf, is_training=False, subset=args.val_subset, **common)
    return Data(train=train, val=val, model=model, num_classes=model.num_classes, class_names=train_src.class_names,
                data_config=data_config,
                train_loader=make_loader(train, num_workers=args.workers, pin_memory=args.pin_mem),
                val_loader=make_loader(val, num_workers=args.workers, pin_memory=args.pin_mem))


def build_fcl_config(args, data_config: dict, updates_per_epoch: int) -> FCLConfig:
    values = {f.name: getattr(args, "fcl_" + f.name) for f in dataclasses.fields(FCLConfig) if f.name != "method"}
    if args.fcl_start_epochs is not None:
        values["start_step"] = round(args.fcl_start_epochs * updates_per_epoch)
    if args.fcl_ramp_epochs is not None:
        values["ramp_steps"] = round(args.fcl_ramp_epochs * updates_per_epoch)
    # sigma is in [0,1] pixel units; the regularizer converts it with the normalization the inputs went through
    values["input_std"] = tuple(values["input_std"] or data_config["std"])
    try:
        return FCLConfig(method=args.method, **values)
    except ValueError as exn:
        raise ConfigError(str(exn)) from None


@dataclasses.dataclass
class Progress:
    """Where training is: saved with every state so a resumed run continues at the same batch."""
    epoch: int = 0  # current epoch
    batch: int = 0  # batches of the current epoch already trained (on this rank)
    step: int = 0   # optimizer updates so far

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, int(v))


@dataclasses.dataclass
class Training:
    """What the flags resolved to, and the objects a step needs; ``resolved()`` is saved with the run."""
    reg: torch.nn.Module  # the prepared regularizer (DDP-wrapped under several processes)
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: Optional[torch.nn.Module]
    progress: Progress
    fcl: FCLConfig
    lr: float
    num_epochs: int
    updates_per_epoch: int
    output: Path
    bare: torch.nn.Module  # the plain timm model inside the regularizer
    mixup: Optional[Callable] = None  # timm's Mixup (mixup / cutmix into soft targets), None when off
    finite: Optional[torch.Tensor] = None  # on the device: every loss of this process so far was finite
    settings: dict = dataclasses.field(default_factory=dict)  # resolved(), written beside every save

    def resolved(self, args, data: Data, world: int) -> dict:
        """What the run computes, as YAML reads it back; a resume must resolve to the same (epochs may grow)."""
        epochs = {"start": self.fcl.start_step / self.updates_per_epoch,
                  "ramp": self.fcl.ramp_steps / self.updates_per_epoch}
        settings = {k: v for k, v in vars(args).items() if k not in MAY_CHANGE_ON_RESUME}
        resolved = {"settings": settings, "fcl": dataclasses.asdict(self.fcl), "fcl_schedule_epochs": epochs,
                    "lr": self.lr, "num_classes": data.num_classes, "data_config": dict(data.data_config),
                    "world_size": world, "global_batch": args.batch_size * world * args.grad_accum_steps,
                    "updates_per_epoch": self.updates_per_epoch, "epochs": self.num_epochs,
                    "loader_streams": data.train.streams, "train_samples": len(data.train.source),
                    "val_samples": len(data.val.source)}
        return yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False))

    def state_parts(self, accelerator) -> dict:
        """What a saved training state holds, by name (timm_fcl.checkpoint saves and loads it without pickles)."""
        return {"model": accelerator.unwrap_model(self.reg), "optimizer": self.optimizer, "scheduler": self.scheduler,
                "ema": self.ema, "progress": self.progress, "scaler": accelerator.scaler}


def build_loss(args) -> tuple[Callable, Callable]:
    """timm's training loss for these flags, and the label loss of one view that the FCL term uses (the utility's loss,
    XE+Gaussian's loss): JSD + CE over the AugMix views (the FCL term: its CE of the clean view), soft-target CE under
    mixup / cutmix (the smoothing is in the targets), label-smoothing CE, or plain CE (--smoothing 0)."""
    from timm.loss import JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if args.jsd_loss:
        jsd = JsdCrossEntropy(num_splits=args.aug_splits, smoothing=args.smoothing)
        return jsd, jsd.cross_entropy_loss
    if mixup_active(args):
        loss = SoftTargetCrossEntropy()
    elif args.smoothing:
        loss = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        loss = torch.nn.CrossEntropyLoss()
    return loss, loss


def build_mixup(args, num_classes: int) -> Optional[Callable]:
    """timm's Mixup for --mixup / --cutmix (its targets carry the label smoothing), None when both are off."""
    if not mixup_active(args):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def build_training(args, accelerator, data: Data, output: Path) -> Training:
    """The regularizer around the model, optimizer, scheduler (per update), EMA, prepared for the processes."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    world = accelerator.num_processes
    updates_per_epoch = math.ceil(len(data.train) / args.grad_accum_steps)
    model = data.model.to(memory_format=torch.channels_last) if args.channels_last else data.model
    fcl = build_fcl_config(args, data.data_config, updates_per_epoch)
    try:  # before the first step, even when the term starts epochs later
        fcl.check_input(data.data_config["input_size"], args.batch_size)
    except ValueError as exn:
        raise ConfigError(f"FCL settings do not fit the model's input: {exn}") from None
    loss_fn, label_loss_fn = build_loss(args)
    reg = FeatureContrastiveRegularizer(model, fcl, loss_fn=loss_fn, compile_backend=args.torchcompile,
                                        num_splits=max(args.aug_splits, 1), label_loss_fn=label_loss_fn)
    lr = args.lr if args.lr is not None else \
        args.lr_base * args.batch_size * world * args.grad_accum_steps / args.lr_base_size
    resolved_args = argparse.Namespace(**{**vars(args), "lr": lr})
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(resolved_args))
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(resolved_args),
                                                updates_per_epoch=updates_per_epoch)
    reg, optimizer = accelerator.prepare(reg, optimizer)
    ema = None
    if args.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(accelerator.unwrap_model(reg).model, decay=args.model_ema_decay,
                         use_warmup=args.model_ema_warmup)
    return Training(reg=reg, optimizer=optimizer, scheduler=scheduler, ema=ema, progress=Progress(), fcl=fcl, lr=lr,
                    num_epochs=num_epochs, updates_per_epoch=updates_per_epoch, output=output,
                    bare=accelerator.unwrap_model(reg).model, mixup=build_mixup(args, data.num_classes),
                    finite=torch.ones((), dtype=torch.bool, device=accelerator.device))


def _flat(values: dict, prefix: str = "") -> dict:
    """Nested settings as trackers take hyper-parameters: dotted names, values bool / int / float / str."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def start_trackers(args, accelerator, output: Path, resolved: dict) -> None:
    """Start every tracker with the run's settings as its hyper-parameters: the flags and what they resolved to."""
    config = {**_flat(vars(args)), **_flat(resolved, "resolved.")}
    accelerator.init_trackers(args.experiment or "timm-fcl", config=config,
                              init_kwargs={"wandb": {"name": output.name, "dir": str(output)}})


def previous_run(args, output: Path) -> tuple[Optional[Path], dict]:
    """The run folder a resume continues (--resume's, else --output when it holds states) and what its flags resolved
    to; (None, {}) on a fresh start."""
    source = Path(args.resume) if args.resume else output
    folder = source.parent.parent if source.parent.name == run_folder.STATES else source
    if not list_states(folder):
        return None, {}
    return folder, run_folder.read_resolved(folder)


def setting_changes(saved: dict, now: dict) -> list[str]:
    """'name old -> new' for each setting of ``now`` that differs from ``saved`` (names both know: a run saved by an
    older version lacks some); derived values (as section.name) only when no flag differs, as a flag explains them."""
    def diff(old: dict, new: dict, prefix: str) -> list[str]:
        return [f"{prefix}{k} {old[k]} -> {new[k]}" for k in old if k in new and old[k] != new[k]]

    flags = diff(saved.get("settings", {}), now.get("settings", {}), "")
    if flags or saved.get("world_size", now.get("world_size")) != now.get("world_size"):
        return flags  # another world size: load_training_state refuses it, saying why (each rank's own streams)
    changes = []
    for key, value in saved.items():
        if key in ("settings", "epochs") or key not in now:
            continue
        changes += diff(value, now[key], f"{key}.") if isinstance(value, dict) and isinstance(now[key], dict) \
            else diff({key: value}, {key: now[key]}, "")
    if now.get("epochs", 0) < saved.get("epochs", 0):
        changes.append(f"epochs {saved['epochs']} -> {now['epochs']} (a run's epochs may only grow)")
    return changes


def record_settings(args, run: Training) -> None:
    """args.yaml and resolved.yaml of this start, written with each of its saves (main process): they describe what
    the saved states and exports were made with, and a start that saves nothing changes nothing."""
    atomic_write_text(run.output / run_folder.ARGS, yaml.safe_dump(vars(args), sort_keys=False))
    atomic_write_text(run.output / run_folder.RESOLVED, yaml.safe_dump(run.settings, sort_keys=False))


def resume_or_start(args, accelerator, run: Training, data: Data, previous: tuple[Optional[Path], dict] = (None, {})):
    """Load the newest state of --resume (or of the run folder) if it was made with the same settings; keep the
    resolved settings for the saves (record_settings); start the trackers."""
    world = accelerator.num_processes
    resolved = run.resolved(args, data, world)
    changes = setting_changes(previous[1], resolved) if previous[0] is not None else []
    if changes:
        raise ConfigError(f"resume with other settings than the run in {previous[0]}: {', '.join(changes)}")
    resume = load_training_state(accelerator, run.state_parts(accelerator), output=run.output, resume=args.resume)
    if args.resume and resume is None:
        raise ConfigError(f"--resume {args.resume}: no saved state there")
    if resume is not None:
        if accelerator.is_main_process:
            p = run.progress
            _logger.info(f"resumed from {resume}: epoch {p.epoch}, batch {p.batch}, step {p.step}")
    run.settings = resolved
    if accelerator.is_main_process:
        _logger.info(f"{args.model}: {data.num_classes} classes, {world} process(es), {len(data.train)} batches of "
                     f"{args.batch_size} per process and epoch, {run.num_epochs} epochs, method {args.method}, "
                     f"output {run.output}")
        if run.progress.epoch >= run.num_epochs:
            _logger.info(f"all {run.num_epochs} epochs are done in {run.output}; raise --epochs to train on")
    start_trackers(args, accelerator, run.output, resolved)


# ------------------------------------------------------------------------------------------------- train and eval
def _check_labels(y: torch.Tensor, num_classes: int, split: str) -> None:
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(f"label {int(y[bad][0])} in split '{split}' is outside [0, {num_classes}); "
                        f"check --num-classes or the data")


class LossMeter:
    """Means of loss / ce / fcl, summed on the device and read back only when asked (no host sync per step); the FCL
    term's mean is taken over the steps that carried it (with --fcl-every n, one step in n)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, device=device)
        self.steps, self.carried, self.images, self.start = 0, 0, 0, time.time()

    def update(self, out: FCLOutput, images: int) -> None:
        self.sums += torch.stack([out.loss.detach(), out.ce.detach(), out.fcl.detach()]).float()
        self.steps += 1
        self.carried += out.weight > 0
        self.images += images

    def means(self) -> dict:
        loss, ce, fcl = (self.sums / max(self.steps, 1)).tolist()
        return {"loss": loss, "ce": ce, "fcl": fcl * max(self.steps, 1) / max(self.carried, 1)}

    def images_per_second(self, processes: int) -> float:
        return self.images * processes / max(time.time() - self.start, 1e-9)


def stop_if_diverged(accelerator, run: Training) -> None:
    """Raise if any rank's loss was ever non-finite or the weights are: every rank calls this at the same step (it is
    a collective), before each save and export, so a diverged run saves nothing after its last finite state."""
    weights = torch.stack([q.isfinite().all() for q in run.bare.parameters()]).all()
    bad = accelerator.reduce((~(run.finite & weights)).float().reshape(1), reduction="sum")
    if bad.item():
        p = run.progress
        raise DivergedError(f"the loss or the weights became NaN or infinite by step {p.step} (epoch {p.epoch}); "
                            f"stopped without saving anything after that (lower --lr, or set --clip-grad)")


def _log_interval(args, accelerator, run: Training, window: LossMeter, out: FCLOutput, n_batches: int) -> None:
    lr = run.optimizer.param_groups[0]["lr"]
    rate = window.images_per_second(accelerator.num_processes)
    m = window.means()
    # lambda of the schedule (out.weight is lambda x n on the steps --fcl-every keeps, 0 on the others)
    weight = out.scheduled_weight
    p = run.progress
    if accelerator.is_main_process:
        _logger.info(f"epoch {p.epoch} step {p.step} batch {p.batch}/{n_batches} lr {lr:.4g} loss {m['loss']:.4f} "
                     f"ce {m['ce']:.4f} fcl {m['fcl']:.4f} weight {weight:.3g} img/s {rate:.1f}")
    accelerator.log({"train/loss": m["loss"], "train/ce": m["ce"], "train/fcl": m["fcl"], "train/weight": weight,
                     "train/lr": lr, "train/img_per_s": rate}, step=p.step)


def training_batch(args, accelerator, run: Training, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as the regularizer takes it, on the device: AugMix views stacked [clean; augmented; ...] with the
    labels repeated (timm's layout, which JsdCrossEntropy splits), or mixed by mixup / cutmix into soft targets."""
    if isinstance(x, (list, tuple)):
        x, y = torch.cat(x), y.repeat(len(x))
    x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if run.mixup is not None:
        p = run.progress
        run.mixup.mixup_enabled = not (args.mixup_off_epoch and p.epoch >= args.mixup_off_epoch)
        if len(y) % 2:  # timm's Mixup pairs the samples of a batch: an odd (last) batch gives up one
            x, y = x[:-1], y[:-1]
        # drawn from the batch's place, so a resumed run mixes exactly as the uninterrupted one did
        with seeded(hash((args.seed, p.epoch, p.batch, accelerator.process_index)) & 0x7FFFFFFF):
            x, y = run.mixup(x, y)
    return x, y


def clip_gradients(args, accelerator, reg) -> None:
    """timm's --clip-grad in --clip-mode on the step's gradients (unscaled first under fp16)."""
    if args.clip_mode == "norm":
        accelerator.clip_grad_norm_(reg.parameters(), args.clip_grad)
        return
    from timm.utils import dispatch_clip_grad

    accelerator.unscale_gradients()
    dispatch_clip_grad(reg.parameters(), args.clip_grad, mode=args.clip_mode)


def train_one_epoch(args, accelerator, run: Training, data: Data, on_step: Optional[Callable[[], None]] = None) -> dict:
    """Train from progress.batch to the end of the epoch; returns this rank's mean loss, ce and fcl."""
    from tqdm.auto import tqdm

    p, reg, optimizer = run.progress, run.reg, run.optimizer
    data.train.set_epoch(p.epoch, skip_batches=p.batch)
    run.scheduler.step(p.epoch)
    run.scheduler.step_update(num_updates=p.step)
    reg.train()
    n_batches, accum = len(data.train), args.grad_accum_steps
    epoch, window = LossMeter(accelerator.device), LossMeter(accelerator.device)
    bar = tqdm(total=n_batches, initial=p.batch, desc=f"epoch {p.epoch}", leave=False,
               disable=args.no_progress or not accelerator.is_main_process, dynamic_ncols=True)
    # FCL's input requires grad (for the utility): without inputs= the backward would also compute the first layer's
    # input gradient, which nothing uses
    params = [q for q in reg.parameters() if q.requires_grad]
    for x, y in data.train_loader:
        _check_labels(y, data.num_classes, args.train_split)
        x, y = training_batch(args, accelerator, run, x, y)
        group_start = p.batch - p.batch % accum
        group_size = min(accum, n_batches - group_start)
        sync = p.batch + 1 == group_start + group_size
        with accelerator.no_sync(reg) if not sync else contextlib.nullcontext():
            out = reg(x, y, step=p.step, group_size=group_size)
            accelerator.backward(out.loss / group_size, inputs=params)
        if sync:
            if args.clip_grad:
                clip_gradients(args, accelerator, reg)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        p.batch += 1
        run.finite &= out.loss.detach().isfinite()  # no host sync here; stop_if_diverged reads it
        epoch.update(out, len(y))
        window.update(out, len(y))
        bar.update(1)
        if not sync:
            continue
        p.step += 1
        run.scheduler.step_update(num_updates=p.step)
        if run.ema is not None:
            run.ema.update(run.bare, step=p.step)
        if p.step % args.log_interval == 0 or p.batch == n_batches:
            stop_if_diverged(accelerator, run)
            _log_interval(args, accelerator, run, window, out, n_batches)
            window = LossMeter(accelerator.device)
        if on_step is not None:
            on_step()
    bar.close()
    if p.batch < n_batches:  # the loader ended early: the ranks would fall out of step
        raise DataError(f"epoch {p.epoch}: the training loader gave {p.batch} of {n_batches} batches")
    stop_if_diverged(accelerator, run)
    return epoch.means()


@torch.no_grad()
def evaluate(model, loader, accelerator, *, num_classes: int, split: str, channels_last: bool = False) -> dict:
    """Top-1, top-5 and mean cross-entropy over the validation split, every sample counted once across ranks.

    Each rank reads its own exact share of the split (timm_fcl.data), so summing per-rank totals once at the
    end counts every sample once; no per-batch gather, so ranks may hold different numbers of batches.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # loss sum, top1, top5, count
    for x, y in loader:
        _check_labels(y, num_classes, split)
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(x)
        logits = logits.float()
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
        totals += torch.cat([loss[None], topk_hits(logits, y, ks=(1, 5)).double(),
                             torch.tensor([len(y)], dtype=torch.float64, device=y.device)])
    totals = accelerator.reduce(totals, reduction="sum")
    n = max(totals[3].item(), 1.0)
    return {"loss": totals[0].item() / n, "top1": 100.0 * totals[1].item() / n, "top5": 100.0 * totals[2].item() / n,
            "samples": int(totals[3].item())}


def read_summary(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def update_summary(path: Path, row: dict) -> None:
    """The CSV summary, one row per epoch; a re-run epoch (after a resume) replaces its row."""
    rows = [r for r in read_summary(path) if r.get("epoch") != str(row["epoch"])]
    rows.append({k: str(v) for k, v in row.items()})
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _rounded(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{k}": round(v, 6) if isinstance(v, float) else v for k, v in values.items()}


def keep_best(args, output: Path, row: dict, export: Callable[[Path], object]) -> None:
    """The best epoch so far by --eval-metric (lower is better for the loss; the earliest of equals): exported to
    model_best/ when it is this one, recorded in this row and in best.json. Earlier epochs come from summary.csv, so
    a resumed run keeps its best, and epochs a resume re-runs are judged again."""
    key = f"eval_{args.eval_metric}"
    sign = -1.0 if args.eval_metric == "loss" else 1.0
    earlier = [(int(r["epoch"]), int(r["step"]), float(r[key])) for r in read_summary(output / run_folder.SUMMARY)
               if r.get(key) and int(r["epoch"]) < row["epoch"]]
    epoch, step, value = max(sorted(earlier) + [(row["epoch"], row["step"], row[key])], key=lambda e: sign * e[2])
    if epoch == row["epoch"]:
        export(output / run_folder.MODEL_BEST)
    row.update({"best_epoch": epoch, f"best_{key}": value})
    best = {"eval_metric": args.eval_metric, "value": value, "epoch": epoch, "step": step}
    atomic_write_text(output / run_folder.BEST, json.dumps(best, indent=2) + "\n")


def end_of_epoch(args, accelerator, run: Training, data: Data, train: dict, skipped_before: tuple) -> dict:
    """Validate (and the EMA), step the scheduler on the metric, log, write the summary row, export the model(s), and
    save the state of the finished epoch."""
    p = run.progress
    evaluate_on_val = functools.partial(evaluate, loader=data.val_loader, accelerator=accelerator,
                                        num_classes=data.num_classes, split=args.val_split,
                                        channels_last=args.channels_last)
    val = evaluate_on_val(run.bare)
    # the next epoch's lr, from the validation metric (the plateau scheduler needs it; the others ignore it)
    run.scheduler.step(p.epoch + 1, metric=val[args.eval_metric])
    skipped = accelerator.reduce(torch.tensor([a - b for a, b in zip(data.train.skipped(), skipped_before)],
                                              device=accelerator.device), reduction="sum").tolist()
    row = {"epoch": p.epoch, "step": p.step, "lr": run.optimizer.param_groups[0]["lr"], **_rounded("train", train),
           **_rounded("eval", val), "bad_shards": skipped[0], "repeated_samples": skipped[1]}
    if run.ema is not None:
        row.update(_rounded("ema", evaluate_on_val(run.ema.module)))
    if skipped[0] or skipped[1]:
        _logger.warning(f"epoch {p.epoch}: {skipped[0]} unreadable shard(s) skipped, {skipped[1]} sample(s) "
                        f"repeated to keep the ranks in step")
    if accelerator.is_main_process:
        _logger.info(f"epoch {p.epoch} validation: top1 {val['top1']:.2f} top5 {val['top5']:.2f} "
                     f"loss {val['loss']:.4f} on {val['samples']} samples")
        record_settings(args, run)
        export = functools.partial(export_model, data_config=data.data_config, label_names=data.class_names,
                                   tag=run_tag(args.method, args.dataset))
        keep_best(args, run.output, row, functools.partial(export, run.bare))
        update_summary(run.output / run_folder.SUMMARY, row)
        export(run.bare, run.output / run_folder.MODEL)
        if run.ema is not None:
            export(run.ema.module, run.output / run_folder.MODEL_EMA)
    accelerator.log({f"eval/{k}": v for k, v in val.items()}, step=p.step)
    p.epoch, p.batch = p.epoch + 1, 0
    save_state_atomic(accelerator, run.output, p.step, args.checkpoint_hist, run.state_parts(accelerator))
    return row


# ---------------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict:
    validate_args(args)
    accelerator, output = setup(args)
    with lock_output(accelerator, output):
        previous = previous_run(args, output)
        data = build_data(args, accelerator, streams=previous[1].get("loader_streams"))
        run = build_training(args, accelerator, data, output)
        resume_or_start(args, accelerator, run, data, previous)

        def save_on_interval():
            if args.checkpoint_interval and run.progress.step % args.checkpoint_interval == 0 \
                    and run.progress.batch < len(data.train):
                stop_if_diverged(accelerator, run)
                if accelerator.is_main_process:
                    record_settings(args, run)
                save_state_atomic(accelerator, run.output, run.progress.step, args.checkpoint_hist,
                                  run.state_parts(accelerator))

        metrics: dict = {}
        while run.progress.epoch < run.num_epochs:
            skipped_before = data.train.skipped()
            train = train_one_epoch(args, accelerator, run, data, on_step=save_on_interval)
            metrics = end_of_epoch(args, accelerator, run, data, train, skipped_before)
        accelerator.end_training()
    return metrics


def cli(argv: Optional[list[str]] = None) -> int:
    """Run main; a bad input ends with one line on stderr (exit 2), never a traceback."""
    return run_cli("train_fcl.py", lambda a: main(parse_args(a)), argv, errors=(DataError, DivergedError))


if __name__ == "__main__":
    sys.exit(cli())
