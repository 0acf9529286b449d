"""train_fcl.py's flags: each declared once with its default, bounds and help (``flag_group``), the FCL and timm
groups, YAML configs read as argparse reads the command line, and the adapters from flags to library arguments.

Flag names, defaults and meanings follow timm's train.py wherever timm has the flag."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import types
import typing
from pathlib import Path
from typing import Callable, Optional

import yaml

from timm.utils import ParseKwargs

from ..config import METHODS, FCLConfig
from ..run.cli import UsageError, first_line, is_main_process


_logger = logging.getLogger("train_fcl")


class ConfigError(UsageError):
    """A bad flag, config file or model choice: reported as one line."""


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range of a numeric flag's every value (each item, for a list): ``>= at_least``, ``> above``, ``<= at_most``."""
    at_least: Optional[float] = None
    above: Optional[float] = None
    at_most: Optional[float] = None

    def admits(self, v: float) -> bool:
        return not ((self.at_least is not None and v < self.at_least) or (self.above is not None and v <= self.above)
                    or (self.at_most is not None and v > self.at_most))

    def __str__(self) -> str:
        parts = [f">= {self.at_least}" if self.at_least is not None else "",
                 f"> {self.above}" if self.above is not None else "",
                 f"<= {self.at_most}" if self.at_most is not None else ""]
        return " and ".join(p for p in parts if p)


def flag_group(parser: argparse.ArgumentParser, title: str) -> Callable[..., argparse.Action]:
    """``add(*names, at_least=, above=, at_most=, may_change_on_resume=, **add_argument's arguments)`` for a new group
    of flags. The bounds are kept on the flag's action, where ``check_bounds`` finds them; ``may_change_on_resume``
    marks a flag that changes how a run goes, not what it computes, so a resume may change it
    (docs/resume-and-preemption.md)."""
    group = parser.add_argument_group(title)

    def add(*names: str, at_least: Optional[float] = None, above: Optional[float] = None,
            at_most: Optional[float] = None, may_change_on_resume: bool = False, **kwargs) -> argparse.Action:
        action = group.add_argument(*names, **kwargs)
        action.bounds = Bounds(at_least, above, at_most)
        action.may_change_on_resume = may_change_on_resume
        return action
    return add


def result_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The flags that shape what a run computes (all but the ``may_change_on_resume`` ones), as given."""
    free = {a.dest for a in parser._actions if getattr(a, "may_change_on_resume", False)}
    return {k: v for k, v in vars(args).items() if k not in free}


def add_fcl_flags(parser: argparse.ArgumentParser) -> None:
    """An --fcl-* flag for every FCLConfig field (--method for the method), typed from the dataclass; FCLConfig
    checks their values."""
    add = flag_group(parser, "FCL (paper section 3; defaults of section 4.1)")
    add("--method", default="fcl", choices=METHODS, help="training objective (paper section 4.2)")
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
                add(flag, type=float, nargs="+", default=field.default, dest="fcl_" + field.name,
                    help=f"FCLConfig.{field.name} (default: {default})")
                continue
            kind = inner
        add(flag, type=kind, default=field.default, dest="fcl_" + field.name,
            help=f"FCLConfig.{field.name} (default {field.default})")
    add("--fcl-start-epochs", type=float, default=None, at_least=0,
        help="turn FCL on after this many epochs (sets --fcl-start-step from the steps per epoch)")
    add("--fcl-ramp-epochs", type=float, default=None, at_least=0,
        help="linear ramp of the FCL weight over this many epochs (sets --fcl-ramp-steps)")
    add("--patch-gaussian", action="store_true", help="Patch Gaussian augmentation (Lopes et al.)")
    add("--patch-gaussian-size", type=int, default=25, at_least=1)
    add("--patch-gaussian-sigma", type=float, default=0.1, at_least=0)


def add_timm_flags(parser: argparse.ArgumentParser) -> None:
    """The regularization, naming, metric, tracker and precision flags of timm's train.py, with its names, defaults and
    meanings (--amp: see checks.resolve_mixed_precision; --output keeps this script's meaning, the run folder itself)."""
    add = flag_group(parser, "regularization (timm's train.py)")
    add("--smoothing", type=float, default=0.1, at_least=0, at_most=1, help="label smoothing (timm's default 0.1; the "
        "paper trains with plain cross-entropy: 0)")
    add("--mixup", type=float, default=0.0, at_least=0, help="mixup alpha, mixup on if > 0")
    add("--cutmix", type=float, default=0.0, at_least=0, help="cutmix alpha, cutmix on if > 0")
    add("--cutmix-minmax", type=float, nargs="+", default=None, at_least=0, at_most=1,
        help="cutmix min/max area ratio; overrides the alpha and turns cutmix on")
    add("--mixup-prob", type=float, default=1.0, at_least=0, at_most=1,
        help="probability of mixup or cutmix per batch")
    add("--mixup-switch-prob", type=float, default=0.5, at_least=0, at_most=1,
        help="probability of cutmix instead of mixup when both are on")
    add("--mixup-mode", default="batch", choices=("batch", "pair", "elem"),
        help="mixup / cutmix parameters drawn per batch, pair or element")
    add("--mixup-off-epoch", type=int, default=0, at_least=0, help="no mixup / cutmix from this epoch on (0: never)")
    add("--drop", type=float, default=0.0, at_least=0, at_most=1, help="dropout rate of the model")
    add("--drop-path", type=float, default=None, at_least=0, at_most=1,
        help="drop path (stochastic depth) rate of the model")
    add("--model-kwargs", nargs="*", default={}, action=ParseKwargs, metavar="KEY=VALUE",
        help="more timm.create_model arguments")
    add("--aug-splits", type=int, default=0, help="AugMix views per image (0: off, else >= 2: a clean view and "
        "augmented ones, e.g. with --aa augmix-m3-w3); the FCL term is taken on the clean view")
    add("--jsd-loss", action="store_true", help="Jensen-Shannon consistency + CE over the --aug-splits")
    add("--bce-loss", action="store_true", help="binary cross-entropy (timm's BinaryCrossEntropy) instead of softmax "
        "cross-entropy, with --smoothing, mixup or cutmix")
    add("--bce-sum", action="store_true", help="sum the BCE over the classes")
    add("--bce-target-thresh", type=float, default=None, at_least=0, at_most=1,
        help="binarize the soft BCE targets at this threshold")
    add("--bce-pos-weight", type=float, default=None, above=0, help="weight of the positive class in the BCE")
    add("--clip-mode", default="norm", choices=("norm", "value", "agc"), help="how --clip-grad clips")

    add = flag_group(parser, "run naming, metrics, trackers (timm's train.py)")
    add("--experiment", default="", may_change_on_resume=True,
        help="run name: the run folder is output/train/NAME (OUTPUT/NAME with --output)")
    add("--eval-metric", default="top1", choices=("top1", "top5", "loss"),
        help="validation metric choosing model_best/ and the --checkpoint-hist best epochs (the EMA's with "
             "--model-ema, as in timm; lower is better for loss)")
    add("--log-wandb", action="store_true", may_change_on_resume=True,
        help="also log to Weights & Biases (needs wandb)")
    add("--wandb-project", default=None, may_change_on_resume=True, help="W&B project (default: the run's name)")
    add("--wandb-tags", nargs="+", default=[], may_change_on_resume=True, help="W&B tags")
    add("--wandb-resume-id", default="", may_change_on_resume=True, help="W&B run id to continue (with a resume)")
    add("--amp", action="store_true", help="mixed precision: the launch config's, else bf16 on a CPU and fp16 on a "
        "GPU (--mixed-precision, when given, wins)")


# ------------------------------------------------------------------------------------------------------ YAML
def read_config(path: str) -> dict:
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


def config_value(action: argparse.Action, path: str, key: str, value):
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
    if isinstance(value, list) and isinstance(action.default, (list, tuple)) and value == list(action.default):
        return action.default  # e.g. an empty list where the flag's default is one (timm's args.yaml: wandb_tags: [])
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


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[list[str]] = None) -> argparse.Namespace:
    """``parser``'s flags, with --config's YAML as defaults (command line wins), checked as argparse checks the
    command line."""
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("-c", "--config", default=None)
    pre, _ = config_parser.parse_known_args(argv)
    if pre.config:
        from .timm_parity import sort_config_keys

        dests = {a.dest: a for a in parser._actions}
        values, ignored, refused = sort_config_keys(read_config(pre.config), set(dests) - {"help"})
        if refused:
            raise ConfigError(f"{pre.config}: cannot apply {'; '.join(refused)}")
        if ignored and is_main_process():
            _logger.warning(f"{pre.config}: {len(ignored)} setting(s) of timm's train.py that train_fcl.py does not "
                            f"have, all at timm's default, ignored: {', '.join(ignored)}")
        parser.set_defaults(**{k: config_value(dests[k], pre.config, k, v) for k, v in values.items()})
    args = parser.parse_args(argv)
    for action in parser._actions:  # a YAML value bypasses argparse's choices check
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            raise ConfigError(f"argument {action.option_strings[-1]}: invalid choice: {value!r} "
                              f"(choose from {', '.join(map(str, action.choices))})")
    return args


def values_of(args: argparse.Namespace, dest: str) -> list:
    value = getattr(args, dest, None)
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def check_bounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every value of every numeric flag finite and within the bounds its declaration gives."""
    for action in parser._actions:
        flag = f"argument {max(action.option_strings, key=len)}" if action.option_strings else action.dest
        bounds = getattr(action, "bounds", Bounds())
        for v in values_of(args, action.dest):
            if action.type is float and not math.isfinite(v):
                raise ConfigError(f"{flag}: must be a finite number, got {v}")
            if not bounds.admits(v):
                raise ConfigError(f"{flag}: must be {bounds}, got {v}")


# ------------------------------------------------------------------------------------------------------ adapters
def in_chans(args: argparse.Namespace) -> Optional[int]:
    return args.in_chans or (args.input_size[0] if args.input_size else None)


def mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def output_folder(args: argparse.Namespace) -> Path:
    """The run folder --experiment / --output name, or for an unnamed run the folder its new run folder is made in."""
    base = Path(args.output or os.path.join("output", "train"))
    return base / args.experiment if args.experiment else base


def resolve_lr(args: argparse.Namespace, world_size: int) -> tuple[float, str]:
    """(lr, how it was found), timm's rule: --lr when given, else --lr-base times global batch / --lr-base-size, the
    ratio square-rooted under --lr-base-scale sqrt (the default for ada* and lamb optimizers)."""
    if args.lr is not None:
        return args.lr, "--lr"
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    scale = args.lr_base_scale or ("sqrt" if any(o in args.opt.lower() for o in ("ada", "lamb")) else "linear")
    ratio = global_batch / args.lr_base_size
    lr = args.lr_base * (math.sqrt(ratio) if scale == "sqrt" else ratio)
    return lr, (f"--lr-base {args.lr_base} x ({global_batch} / {args.lr_base_size})"
                f"{' ** 0.5' if scale == 'sqrt' else ''} ({scale} scaling of the global batch)")


def fcl_config(args: argparse.Namespace, data_config: dict, updates_per_epoch: int) -> FCLConfig:
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
