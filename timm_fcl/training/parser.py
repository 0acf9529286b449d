"""train_fcl.py's command line: its flag groups (data, model, augmentation, optimization, FCL, timm's others, run),
each flag with timm's train.py's name, default and bounds, and the parsing with --config's YAML as defaults (how a
flag is declared and read is in ``flags``)."""
from __future__ import annotations

import argparse
from typing import Optional

from ..run.cli import OneLineParser
from . import flags
from .flags import flag_group


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Every flag with its default, bounds and help; ``may_change_on_resume`` marks those a resume may change."""
    parser = OneLineParser(description="Train a timm model with Feature Contrastive Learning", add_help=add_help)
    add = flag_group(parser, "config file")
    add("-c", "--config", default=None, may_change_on_resume=True, help="YAML file setting any flag (by its long name); "
        "flags given on the command line override it")
    add_data_flags(parser)
    add_model_flags(parser)
    add_augmentation_flags(parser)
    add_optimization_flags(parser)
    flags.add_fcl_flags(parser)
    flags.add_timm_flags(parser)
    add_run_flags(parser)
    return parser


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """Where the data is, its splits, sizes and loaders."""
    add = flag_group(parser, "data")
    add("--data-dir", default=None, may_change_on_resume=True,  # as long as it holds the same splits and sizes
        help="shard folder (with _info.json), image folder or torchvision root")
    add("--dataset", default=None, help="wds/NAME (WebDataset shards), torch/NAME (torchvision), "
        "or '' (image folder with train/ and validation/ subfolders); default: wds/NAME for a --data-dir holding "
        "_info.json (NAME its name), else ''")
    add("--train-split", default="train")
    add("--val-split", default="validation", help="the split that chooses the best epoch, --eval-metric's and a "
        "plateau schedule's; never replaced by 'test' when missing (name it to validate on test data knowingly)")
    add("--val-holdout", type=int, default=0, at_least=0,
        help="hold N training images out as the validation split instead (a seeded pick, the same every run, written "
             "once as shards to OUTPUT/holdout/; WebDataset data only)")
    add("--dataset-download", action="store_true", may_change_on_resume=True,
        help="let torchvision download torch/ sets")
    add("--train-subset", type=int, default=None, at_least=1,
        help="train on the first N samples of each epoch's shuffled order")
    add("--val-subset", type=int, default=None, at_least=1, help="validate on an evenly spaced subset of N")
    add("--train-num-samples", type=int, default=None, at_least=1,
        help="the training split's size, checked against what the data holds (the shards are counted)")
    add("--val-num-samples", type=int, default=None, at_least=1, help="the same for the validation split")
    add("--class-map", default="", help="class name to index file for an image folder (timm's format)")
    add("--shuffle-buffer", type=int, default=2048, at_least=0, help="WebDataset in-worker shuffle buffer")
    add("-j", "--workers", type=int, default=2, at_least=0, may_change_on_resume=True,
        help="loader workers per process")
    add("--pin-mem", action="store_true", may_change_on_resume=True)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The timm model, its weights, input config and the options of its creation."""
    add = flag_group(parser, "model")
    add("--model", default="resnet50")
    add("--pretrained", action="store_true", help="start from pretrained weights (timm's, an hf-hub:/local-dir: "
        "model's, or --pretrained-path); a different --num-classes resets the classifier")
    add("--pretrained-path", default=None, help="load this file (safetensors preferred), export or run folder as "
        "the pretrained weights; an export's config.json gives the input config (flags override it) and its "
        "classifier is kept unless the class count differs")
    add("--initial-checkpoint", default="", help="load these weights before training")
    add("--num-classes", type=int, default=None, at_least=1, help="default: from the checkpoint or the data")
    add("--in-chans", type=int, default=None, at_least=1)
    add("--img-size", type=int, default=None, at_least=1)
    add("--input-size", type=int, nargs=3, default=None, at_least=1, metavar=("C", "H", "W"))
    add("--crop-pct", type=float, default=None, above=0, at_most=1, help="validation center crop fraction")
    add("--mean", type=float, nargs="+", default=None)
    add("--std", type=float, nargs="+", default=None, above=0)
    add("--interpolation", default="")
    add("--gp", default=None, help="global pool type (fast, avg, max, avgmax, avgmaxc; default: the model's)")
    add("--drop-block", type=float, default=None, at_least=0, at_most=1, help="drop block rate of the model")
    add("--bn-momentum", type=float, default=None, at_least=0, at_most=1, help="batch norm momentum override")
    add("--bn-eps", type=float, default=None, above=0, help="batch norm epsilon override")
    add("--head-init-scale", type=float, default=None, help="scale the new classifier's weights and bias by this")
    add("--head-init-bias", type=float, default=None, help="set the new classifier's bias to this")
    add("--channels-last", action="store_true")
    add("--grad-checkpointing", action="store_true", help="recompute activations in the backward (timm models that "
        "support it); the same result, less memory")
    add("--sync-bn", action="store_true", help="synchronized batch norm across processes (several processes only)")
    add("--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
        help="torch.compile the model's forward_features and forward_head, the calls the FCL step makes (default "
             "backend inductor; compiling takes minutes on a CPU)")
    add("--model-ema", action="store_true", help="keep and export an EMA of the weights; as in timm, the EMA's "
        "validation is then the eval metrics (model_best/, the best epochs, a plateau schedule, summary.csv's eval_)")
    add("--model-ema-decay", type=float, default=0.9998, at_least=0, at_most=1)
    add("--model-ema-warmup", action="store_true")


def add_augmentation_flags(parser: argparse.ArgumentParser) -> None:
    """The training transform, timm's train.py's for the same flags (or --crop-pad's)."""
    add = flag_group(parser, "augmentation (timm's create_transform)")
    add("--no-aug", action="store_true")
    add("--scale", type=float, nargs=2, default=[0.08, 1.0], above=0, at_most=1)
    add("--ratio", type=float, nargs=2, default=[3.0 / 4.0, 4.0 / 3.0], above=0)
    add("--hflip", type=float, default=0.5, at_least=0, at_most=1)
    add("--color-jitter", type=float, default=0.4, at_least=0)
    add("--vflip", type=float, default=0.0, at_least=0, at_most=1)
    add("--color-jitter-prob", type=float, default=None, at_least=0, at_most=1,
        help="probability of applying the color jitter at all")
    add("--grayscale-prob", type=float, default=None, at_least=0, at_most=1)
    add("--gaussian-blur-prob", type=float, default=None, at_least=0, at_most=1)
    add("--train-crop-mode", default=None, help="timm's training crop mode (e.g. rrc, rkrc, rkrr)")
    add("--train-interpolation", default="random",
        help="resize interpolation of the training crop (random, bilinear, bicubic; '' for the model's)")
    add("--aa", default=None, help="auto-augment policy, e.g. rand-m9-mstd0.5")
    add("--reprob", type=float, default=0.0, at_least=0, at_most=1, help="random erasing probability")
    add("--remode", default="pixel", choices=("const", "rand", "pixel"), help="random erasing fill")
    add("--recount", type=int, default=1, at_least=1, help="random erasing count")
    add("--resplit", action="store_true", help="no random erasing of the first (clean) augmentation split")
    add("--crop-pad", type=int, default=0, at_least=0, metavar="PAD", help="the standard CIFAR augmentation instead "
        "of timm's: zero-pad by PAD, random crop of the input size, flip with --hflip (--scale, --ratio, "
        "--color-jitter, --aa, --reprob unused)")


def add_optimization_flags(parser: argparse.ArgumentParser) -> None:
    """Batch, optimizer, learning rate and its schedule."""
    add = flag_group(parser, "optimization")
    add("-b", "--batch-size", type=int, default=128, at_least=1, help="per process")
    add("-vb", "--validation-batch-size", type=int, default=None, at_least=1, may_change_on_resume=True,
        help="validation batch per process (default: --batch-size)")
    add("--grad-accum-steps", type=int, default=1, at_least=1)
    add("--epochs", type=int, default=300, at_least=1, may_change_on_resume=True)  # it may only grow
    add("--opt", default="sgd", help="timm optimizer name (sgd is Nesterov; momentum is plain)")
    add("--opt-eps", type=float, default=None, above=0)
    add("--opt-betas", type=float, nargs="+", default=None, at_least=0, at_most=1)
    add("--opt-kwargs", nargs="*", default={}, action=flags.ParseKwargs, metavar="KEY=VALUE",
        help="more arguments of the optimizer")
    add("--layer-decay", type=float, default=None, above=0, help="layer-wise lr decay (timm's param groups)")
    add("--layer-decay-min-scale", type=float, default=0.0, at_least=0, help="the smallest layer-wise lr scale")
    add("--layer-decay-no-opt-scale", type=float, default=None, at_least=0,
        help="layers whose lr scale falls below this are not optimized")
    add("--momentum", type=float, default=0.9, at_least=0)
    add("--weight-decay", type=float, default=2e-5, at_least=0)
    add("--clip-grad", type=float, default=None, above=0)
    add("--lr", type=float, default=None, at_least=0,  # 0 trains nothing on purpose (e.g. checking what a run loads)
        help="default: --lr-base scaled by global batch / --lr-base-size (see --lr-base-scale)")
    add("--lr-base", type=float, default=0.1, above=0)
    add("--lr-base-size", type=int, default=256, at_least=1)
    add("--lr-base-scale", default="", choices=("", "linear", "sqrt"),
        help="how --lr-base scales with the global batch (default: sqrt for ada* and lamb optimizers, else linear)")
    add("--sched", default="cosine", help="timm scheduler: cosine, step, multistep, plateau, wsd, ...; none "
        "keeps --lr")
    add("--sched-on-updates", action="store_true")
    add("--warmup-epochs", type=int, default=5, at_least=0)
    add("--warmup-lr", type=float, default=1e-5, at_least=0)
    add("--warmup-prefix", action="store_true")
    add("--min-lr", type=float, default=0.0, at_least=0)
    add("--decay-epochs", type=float, default=90, above=0)
    add("--decay-milestones", type=int, nargs="+", default=[90, 180, 270], at_least=0)
    add("--decay-rate", "--dr", type=float, default=0.1, above=0)
    add("--cooldown-epochs", type=int, default=0, at_least=0)
    add("--patience-epochs", type=int, default=10, at_least=0, help="plateau scheduler patience")
    add("--lr-noise", type=float, nargs="+", default=None, at_least=0, metavar="PCT",
        help="lr noise on (and off) at these fractions of the epochs")
    add("--lr-noise-pct", type=float, default=0.67, at_least=0, help="lr noise limit")
    add("--lr-noise-std", type=float, default=1.0, at_least=0, help="lr noise std-dev")
    add("--lr-cycle-mul", type=float, default=1.0, above=0, help="lr cycle length multiplier")
    add("--lr-cycle-decay", type=float, default=0.5, at_least=0, help="lr decay of each cycle")
    add("--lr-cycle-limit", type=int, default=1, at_least=1, help="lr cycles (on when > 1)")
    add("--lr-k-decay", type=float, default=1.0, above=0, help="lr k-decay of cosine / poly")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Seed, run folder, resume, saves, precision and logging."""
    add = flag_group(parser, "run")
    add("--seed", type=int, default=42, at_least=0)
    add("--output", default=None, may_change_on_resume=True, help="run folder (default: a new "
        "output/train/DATE-TIME-MODEL-SIZE); a run finds its latest state there and resumes from it")
    add("--resume", default="", may_change_on_resume=True,
        help="resume from this state folder (or run folder's latest)")
    add("--no-resume-opt", action="store_true", may_change_on_resume=True,
        help="resume the weights and progress but start the optimizer afresh (its state, and the scheduler's)")
    add("--checkpoint-interval", type=int, default=0, at_least=0, may_change_on_resume=True,
        help="also save the state every N steps")
    add("--checkpoint-minutes", type=float, default=30.0, at_least=0, may_change_on_resume=True,
        help="also save the state when this many minutes have passed since the last save (0: never), so a hard kill "
             "costs at most that much training")
    add("--save-on-signal", nargs="+", default=[], metavar="SIGNAL", may_change_on_resume=True,
        help="signals that save the state and stop, besides SIGTERM and SIGINT (e.g. SIGUSR1, which SLURM's "
             "--signal sends ahead of the end of a job)")
    add("--checkpoint-hist", type=int, default=10, at_least=0, may_change_on_resume=True,
        help="the N best epochs by --eval-metric kept as exports in OUTPUT/best/epoch_E/ (timm's checkpoint "
             "history; 0: none), beside model_best/")
    add("--state-hist", type=int, default=2, at_least=1, may_change_on_resume=True,
        help="training states kept (the newest, in OUTPUT/checkpoints/, to resume from)")
    add("--log-interval", type=int, default=None, at_least=1, may_change_on_resume=True,
        help="a log line every N steps (default: timm's 50, fewer for an epoch of under 500 steps: about 10 lines "
             "an epoch)")
    add("--amp-dtype", default=None, choices=("float16", "bfloat16"),
        help="--amp's dtype (default: the launch config's, else float16 on a GPU as timm, bfloat16 on a CPU)")
    add("--mixed-precision", default=None, choices=("no", "bf16", "fp16"),
        help="default: accelerate's launch config, else no")
    add("--no-progress", action="store_true", may_change_on_resume=True, help="no tqdm bar")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The flags, with --config's YAML as defaults (the command line wins)."""
    return flags.parse_with_config(get_args_parser(), argv)
