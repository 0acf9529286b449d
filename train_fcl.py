#!/usr/bin/env python3
"""Train a timm model with Feature Contrastive Learning (FCL) under Accelerate.

    accelerate launch train_fcl.py --config configs/cifar10_resnet56_fcl.yaml --data-dir SHARDS

The paper (Feature Contrastive Learning, section 4 and Appendix B) trains with SGD or Adam, a step or
exponential learning-rate schedule, and turns the FCL term on after a number of epochs with a linear ramp;
every one of those is a flag here, and configs/ holds the paper's recipes. Flag names follow timm's train.py.

The FCL regularizer (one nn.Module around the timm model) is what accelerate prepares, so DDP and autocast see
one forward and one backward per step. Runs resume exactly (mid-epoch, any number of processes) from the
latest state in --output, and every epoch exports the bare timm model as model.safetensors + config.json.

This file is the story of a run, read top-down: the flags, ``main``, ``train_one_epoch``, ``evaluate`` and
``end_of_epoch``; the plumbing it calls is in ``timm_fcl/training/``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch

import timm_fcl  # noqa: F401  (registers timm_fcl's models, e.g. lenet_mnist, in timm)
from timm_fcl.data import DataError, shard_dataset
from timm_fcl.run import folder as run_folder
from timm_fcl.run.atomic import WriteError
from timm_fcl.run.cli import OneLineParser, run_cli, this_process_only
from timm_fcl.run.export import export_model, run_tag
from timm_fcl.run.metrics import topk_hits
from timm_fcl.run.progress import progress_bar
from timm_fcl.training import flags
from timm_fcl.training.best_history import keep_best_epochs
from timm_fcl.training.build import Data, Training, build_data, build_training, lock_output, setup
from timm_fcl.training.checks import validate_args
from timm_fcl.training.flags import flag_group
from timm_fcl.training.resume import previous_run, record_settings, resume_or_start
from timm_fcl.training.signals import StopRequests, Stopped
from timm_fcl.training.states import list_states, save_state_atomic
from timm_fcl.training.steps import (DivergedError, LossMeter, check_labels, clip_gradients, log_interval,
                                     stop_if_diverged, training_batch)
from timm_fcl.training.summary import epoch_row, keep_best, update_summary

if TYPE_CHECKING:
    from accelerate import Accelerator

_logger = logging.getLogger("train_fcl")


# ------------------------------------------------------------------------------------------------------ the flags
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


# ---------------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict:
    parser = get_args_parser()
    # --dataset unset: wds/NAME for a shard folder (as an image folder it would hold 0 images), else ''
    args.dataset, dataset_note = shard_dataset(args.dataset, args.data_dir)
    validate_args(args, parser)
    stops = StopRequests(args.save_on_signal, minutes=args.checkpoint_minutes)
    accelerator, output = setup(args)
    if dataset_note and accelerator.is_main_process:
        _logger.info(dataset_note)
    with lock_output(accelerator, output), stops:
        fresh = not list_states(output) and not (output / "tb").exists()
        try:
            return train_to_the_end(args, parser, accelerator, output, stops)
        except Stopped:
            raise
        except BaseException:
            if fresh and not list_states(output):  # a failed start leaves nothing behind (the lock removes the folder)
                accelerator.end_training()
                shutil.rmtree(output / "tb", ignore_errors=True)
            raise


def train_to_the_end(args: argparse.Namespace, parser: argparse.ArgumentParser, accelerator: Accelerator,
                     output: Path, stops: StopRequests) -> dict:
    """Build, resume and train every epoch left; on a stop request (a signal), save the step in flight and raise
    :class:`Stopped`."""
    previous = previous_run(args, output)
    data = build_data(args, accelerator, streams=previous[1].get("loader_streams"), output=output)
    run = build_training(args, accelerator, data, output)
    run.epoch_meter = LossMeter(accelerator.device)
    resume_or_start(args, accelerator, run, data, flags.result_settings(parser, args), previous)

    def save_now() -> None:
        stop_if_diverged(accelerator, run)
        if accelerator.is_main_process:
            record_settings(args, run)
        save_state_atomic(accelerator, run.output, run.progress.step, args.state_hist,
                          run.state_parts(accelerator), run.rank_parts())
        stops.saved()

    def stop(signum: int) -> Stopped:
        import signal

        p = run.progress
        return Stopped(f"stopped by {signal.Signals(signum).name} at epoch {p.epoch} batch {p.batch} (step {p.step}), "
                       f"the state saved in {run.output}: run the same command to resume", signum,
                       quiet=not accelerator.is_main_process)

    def after_step() -> None:
        """The interval and time-based saves, and a stop request, at the end of an optimizer step (the epoch's last
        step saves with the epoch)."""
        signum, due = stops.poll(accelerator)
        interval = args.checkpoint_interval and run.progress.step % args.checkpoint_interval == 0
        if (interval or due or signum) and run.progress.batch < len(data.train):
            save_now()
            if signum:
                raise stop(signum)

    metrics: dict = {}
    try:
        while run.progress.epoch < run.num_epochs:
            skipped_before = data.train.skipped()
            train = train_one_epoch(args, accelerator, run, data, on_step=after_step)
            metrics = end_of_epoch(args, accelerator, run, data, train, skipped_before)
            stops.saved()
            signum, _ = stops.poll(accelerator)
            if signum and run.progress.epoch < run.num_epochs:  # the epoch's state is saved: stop here
                raise stop(signum)
    finally:
        accelerator.end_training()
    return metrics


# ------------------------------------------------------------------------------------------------- train and eval
def train_one_epoch(args: argparse.Namespace, accelerator: Accelerator, run: Training, data: Data,
                    on_step: Optional[Callable[[], None]] = None) -> dict:
    """Train from progress.batch to the end of the epoch; returns this rank's mean loss, ce and fcl."""
    p, reg, optimizer = run.progress, run.reg, run.optimizer
    data.train.set_epoch(p.epoch, skip_batches=p.batch)
    if p.epoch > 0:  # the epoch's lr (timm steps only a resumed start: a plateau schedule would take its warmup lr)
        run.scheduler.step(p.epoch)
    run.scheduler.step_update(num_updates=p.step)
    reg.train()
    n_batches, accum = len(data.train), args.grad_accum_steps
    if p.batch == 0 or run.epoch_meter is None:  # else: the means so far of an epoch resumed midway
        run.epoch_meter = LossMeter(accelerator.device)
    epoch, window = run.epoch_meter, LossMeter(accelerator.device)
    bar = progress_bar(total=n_batches, initial=p.batch, desc=f"epoch {p.epoch}", leave=False, dynamic_ncols=True,
                       enabled=not args.no_progress and accelerator.is_main_process)  # a terminal only
    # FCL's input requires grad (for the utility): without inputs= the backward would also compute the first layer's
    # input gradient, which nothing uses
    params = [q for q in reg.parameters() if q.requires_grad]
    pull_pending = True  # the pull ratio is measured on the first step of each log window that carries the term
    for x, y in data.train_loader:
        check_labels(y, data.num_classes, args.train_split)
        x, y = training_batch(args, accelerator, run, x, y)
        group_start = p.batch - p.batch % accum
        group_size = min(accum, n_batches - group_start)
        sync = p.batch + 1 == group_start + group_size
        with accelerator.no_sync(reg) if not sync else contextlib.nullcontext():
            out = reg(x, y, step=p.step, group_size=group_size, measure_pull=pull_pending and sync)
            pull_pending &= out.pull is None
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
        if p.step % run.log_every == 0 or p.batch == n_batches:
            stop_if_diverged(accelerator, run)
            log_interval(args, accelerator, run, window, out, n_batches)
            window, pull_pending = LossMeter(accelerator.device), True
        if on_step is not None:
            on_step()
    bar.close()
    if p.batch < n_batches:  # the loader ended early: the ranks would fall out of step
        raise this_process_only(DataError(f"epoch {p.epoch}: the training loader gave {p.batch} of {n_batches} "
                                          f"batches"))
    stop_if_diverged(accelerator, run)
    return epoch.means()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader, accelerator: Accelerator, *, num_classes: int,
             split: str, channels_last: bool = False, progress: bool = False) -> dict:
    """Top-1, top-5 and mean cross-entropy over the validation split, every sample counted once across ranks;
    ``progress``: a bar of this rank's batches, drawn on a terminal only.

    Each rank reads its own exact share of the split (timm_fcl.data.streams), so summing per-rank totals once at the
    end counts every sample once; no per-batch gather, so ranks may hold different numbers of batches.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # loss sum, top1, top5, count
    for x, y in progress_bar(loader, desc=f"validating on {split}", leave=False, dynamic_ncols=True, enabled=progress):
        check_labels(y, num_classes, split)
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


def end_of_epoch(args: argparse.Namespace, accelerator: Accelerator, run: Training, data: Data, train: dict,
                 skipped_before: tuple[int, int]) -> dict:
    """Validate (and the EMA, whose metrics then are the eval metrics, as in timm), step the scheduler on the
    --eval-metric, log, write the summary row, export the model(s) and the best epochs, and save the state of the
    finished epoch."""
    p = run.progress
    evaluate_on_val = functools.partial(evaluate, loader=data.val_loader, accelerator=accelerator,
                                        num_classes=data.num_classes, split=args.val_split,
                                        channels_last=args.channels_last,
                                        progress=not args.no_progress and accelerator.is_main_process)
    val = evaluate_on_val(run.bare)
    ema = evaluate_on_val(run.ema.module) if run.ema is not None else None
    judged = ema if ema is not None else val  # timm: under --model-ema the EMA's metrics are the eval metrics
    lrs = [group["lr"] for group in run.optimizer.param_groups]
    lr = sum(lrs) / len(lrs)  # the epoch's own lr, as timm's summary has it (the mean over parameter groups)
    # the next epoch's lr, from the validation metric (the plateau scheduler needs it; the others ignore it)
    run.scheduler.step(p.epoch + 1, metric=judged[args.eval_metric])
    skipped = accelerator.reduce(torch.tensor([a - b for a, b in zip(data.train.skipped(), skipped_before)],
                                              device=accelerator.device), reduction="sum").tolist()
    row = epoch_row(p, lr, train, val, skipped, ema)
    if skipped[0] or skipped[1]:
        _logger.warning(f"epoch {p.epoch}: {skipped[0]} unreadable shard(s) skipped, {skipped[1]} sample(s) "
                        f"repeated to keep the ranks in step")
    if accelerator.is_main_process:
        for name, metrics in (("", val), (" (EMA)", ema)) if ema is not None else (("", val),):
            _logger.info(f"epoch {p.epoch} validation{name}: top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f} "
                         f"loss {metrics['loss']:.4f} on {metrics['samples']} samples")
        record_settings(args, run)
        export_epoch(args, run, data, row)
    raw = {f"raw_eval/{k}": v for k, v in val.items()} if ema is not None else {}
    accelerator.log({**{f"eval/{k}": v for k, v in judged.items()}, **raw}, step=p.step)
    p.epoch, p.batch = p.epoch + 1, 0
    save_state_atomic(accelerator, run.output, p.step, args.state_hist, run.state_parts(accelerator))
    return row


def export_epoch(args: argparse.Namespace, run: Training, data: Data, row: dict) -> None:
    """On the main process: model_best/ when the epoch is the best so far, best.json, the summary row, the
    --checkpoint-hist best epochs (best/epoch_E/), model/ and model_ema/. The weights judged by the row's eval_
    metrics, the EMA under --model-ema as in timm, are the ones model_best/ and best/ hold."""
    export = functools.partial(export_model, data_config=data.data_config, label_names=data.class_names,
                               tag=run_tag(args.method, args.dataset))
    judged, weights = (run.ema.module, "ema") if run.ema is not None else (run.bare, "model")
    keep_best(args.eval_metric, run.output, row, functools.partial(export, judged), split=data.val_split,
              weights=weights)
    update_summary(run.output / run_folder.SUMMARY, row)
    keep_best_epochs(args.eval_metric, run.output, row, functools.partial(export, judged), args.checkpoint_hist)
    export(run.bare, run.output / run_folder.MODEL)
    if run.ema is not None:
        export(run.ema.module, run.output / run_folder.MODEL_EMA)


def cli(argv: Optional[list[str]] = None) -> int:
    """Run main; a bad input ends with one line on stderr (exit 2), never a traceback."""
    try:
        return run_cli("train_fcl.py", lambda a: main(parse_args(a)), argv, errors=(DataError, DivergedError, WriteError))
    except Stopped as exn:
        if not exn.quiet:
            print(f"train_fcl.py: {exn}", file=sys.stderr)
        return exn.code


if __name__ == "__main__":
    sys.exit(cli())
