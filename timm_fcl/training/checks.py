"""The checks train_fcl.py makes before any work or any write: every bad flag, flag combination or output folder is
refused with one line (ConfigError) while nothing exists yet."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

import torch

from ..run.model_io import check_model_spec, default_in_chans
from .flags import ConfigError, check_bounds, fcl_config, in_chans, mixup_active, output_folder, values_of

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "rsqrt", "constant", "wsd", "none")  # timm's


def validate_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every check that needs no model and no data, so a bad flag stops the run before any work or any write."""
    if not args.data_dir:
        raise ConfigError("--data-dir is needed")
    check_timm_flags(args)
    check_bounds(parser, args)
    _check_names(args)
    _check_channels(args)
    fcl_config(args, {"std": (1.0,)}, updates_per_epoch=1)  # FCLConfig's own checks
    _check_output(output_folder(args))


def _check_names(args: argparse.Namespace) -> None:
    from timm.optim import list_optimizers

    check_model_spec(args.model)  # an unknown --model before any shard is opened or counted
    if args.sched not in SCHEDULERS:
        raise ConfigError(f"argument --sched: unknown scheduler {args.sched!r} (choose from {', '.join(SCHEDULERS)})")
    *prefix, name = args.opt.lower().split("_")  # timm reads 'lookahead_NAME' as NAME wrapped in Lookahead
    if prefix not in ([], ["lookahead"]) or name not in list_optimizers():
        raise ConfigError(f"argument --opt: unknown optimizer {args.opt!r} (timm.optim.list_optimizers() lists "
                          f"them, optionally prefixed lookahead_)")


def _check_channels(args: argparse.Namespace) -> None:
    channels = in_chans(args) or default_in_chans(args.model)
    for dest in ("mean", "std", "fcl_input_std"):
        values = values_of(args, dest)
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


def check_timm_flags(args: argparse.Namespace) -> None:
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
    if args.wandb_resume_id and not args.log_wandb:
        raise ConfigError("--wandb-resume-id needs --log-wandb")
    if args.bce_loss and args.jsd_loss:
        raise ConfigError("--bce-loss and --jsd-loss are two different losses: choose one")
    if args.class_map and str(args.dataset or "").startswith(("wds/", "torch/")):
        raise ConfigError(f"--class-map maps an image folder's class names; {args.dataset} gives its own labels")
    if args.class_map and not args.class_map.endswith(".txt"):
        raise ConfigError(f"--class-map {args.class_map}: give a .txt file, one class name per line (a pickled map "
                          "is never read: unpickling runs code)")
    if args.amp and args.amp_dtype and args.mixed_precision and args.mixed_precision != {"float16": "fp16"}.get(
            args.amp_dtype, "bf16"):
        raise ConfigError(f"--amp-dtype {args.amp_dtype} contradicts --mixed-precision {args.mixed_precision}")
    if args.log_wandb:
        from accelerate.utils import is_wandb_available
        if not is_wandb_available():
            raise ConfigError("--log-wandb needs wandb (pip install wandb)")


def accelerator_type() -> str:
    """The accelerator this machine has (cuda, mps, xpu, ...), or cpu."""
    if hasattr(torch, "accelerator"):
        found = torch.accelerator.current_accelerator(check_available=True)
        return found.type if found is not None else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_mixed_precision(mixed_precision: str, device_type: str) -> None:
    """fp16 autocast needs a GPU loss scaler; on the CPU only bf16 (or no) autocast exists."""
    if mixed_precision == "fp16" and device_type == "cpu":
        raise ConfigError("--mixed-precision fp16 needs a GPU; on the CPU use bf16 or no")


def resolve_mixed_precision(args: argparse.Namespace, device_type: str) -> Optional[str]:
    """--amp as timm users type it: the launch config's mixed precision (accelerate launch --mixed_precision or
    accelerate config) when it names one, else bf16 on a CPU (its only autocast) and fp16 on a GPU (timm's --amp
    dtype); --amp-dtype, when given, names the dtype; an explicit --mixed-precision wins."""
    if args.mixed_precision or not args.amp:
        return args.mixed_precision
    if args.amp_dtype:
        return "fp16" if args.amp_dtype == "float16" else "bf16"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched != "no":
        return launched
    return "bf16" if device_type == "cpu" else "fp16"
