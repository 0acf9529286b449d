#!/usr/bin/env python3
"""Train a timm model with Feature Contrastive Learning (FCL) under Accelerate.

    accelerate launch train_fcl.py --config configs/cifar10_resnet56_fcl.yaml --data-dir SHARDS

The paper (Feature Contrastive Learning, section 4 and Appendix B) trains with SGD or Adam, a step or
exponential learning-rate schedule, and turns the FCL term on after a number of epochs with a linear ramp;
every one of those is a flag here, and configs/ holds the paper's recipes. Flag names follow timm's train.py.

The FCL regularizer (one nn.Module around the timm model) is what accelerate prepares, so DDP and autocast see
one forward and one backward per step. Runs resume exactly (mid-epoch, any number of processes) from the
latest state in --output, and every epoch exports the bare timm model as model.safetensors + config.json.

This file is the story of a run, read top-down: ``main``, ``train_one_epoch``, ``evaluate`` and ``end_of_epoch``; the
flags are in ``timm_fcl/training/parser.py`` and the plumbing the run calls in the rest of ``timm_fcl/training/``.
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
from timm_fcl.run.cli import run_cli, this_process_only
from timm_fcl.run.export import export_model, run_tag
from timm_fcl.run.metrics import topk_hits
from timm_fcl.run.progress import progress_bar
from timm_fcl.training import flags
from timm_fcl.training.best_history import keep_best_epochs
from timm_fcl.training.build import (Data, Training, build_data, build_run_model, build_training, lock_output,
                                     open_sources, setup)
from timm_fcl.training.checks import validate_args
from timm_fcl.training.parser import get_args_parser, parse_args
from timm_fcl.training.resume import previous_run, record_settings, resume_or_start
from timm_fcl.training.signals import StopRequests, Stopped
from timm_fcl.training.states import list_states, save_state_atomic
from timm_fcl.training.steps import (DivergedError, LossMeter, check_labels, clip_gradients, log_interval,
                                     stop_if_diverged, training_batch)
from timm_fcl.training.summary import epoch_row, keep_best, update_summary

if TYPE_CHECKING:
    from accelerate import Accelerator

_logger = logging.getLogger("train_fcl")


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
    with lock_output(accelerator, output, args) as lock, stops:
        fresh = not list_states(output) and not (output / "tb").exists()
        try:
            return train_to_the_end(args, parser, accelerator, output, stops)
        except Stopped:
            raise
        except BaseException:
            if fresh and not list_states(output):  # a failed start leaves nothing behind (the lock removes the folder)
                accelerator.end_training()
                shutil.rmtree(output / "tb", ignore_errors=True)
                if lock.claimed and {p.name for p in output.iterdir()} <= {run_folder.MARKER, run_folder.LOCK}:
                    (output / run_folder.MARKER).unlink()
            raise


def train_to_the_end(args: argparse.Namespace, parser: argparse.ArgumentParser, accelerator: Accelerator,
                     output: Path, stops: StopRequests) -> dict:
    """Build, resume and train every epoch left; on a stop request (a signal), save the step in flight and raise
    :class:`Stopped`."""
    previous = previous_run(args, output)
    sources = open_sources(args, accelerator, output)
    model, data_config = build_run_model(args, sources, verbose=accelerator.is_main_process)
    data = build_data(args, accelerator, sources, data_config, model.num_classes,
                      streams=previous[1].get("loader_streams"))
    run = build_training(args, accelerator, data, model, output, flags.result_settings(parser, args))
    resume_or_start(args, accelerator, run, data, previous)

    def save_now() -> None:
        stop_if_diverged(accelerator, run)
        if accelerator.is_main_process:
            record_settings(args, run)
        save_state_atomic(accelerator, run.output, run.progress.step, args.state_hist,
                          run.state_parts(accelerator), run.rank_parts(),
                          files={run_folder.RESOLVED: run_folder.resolved_text(run.settings)})
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
    if p.batch == 0:  # else: the means so far of an epoch resumed midway
        run.new_epoch_meter()
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
    if totals[3].item() == 0:  # never a metric: a loss of 0 would become the best epoch
        raise DataError(f"the validation split '{split}' gave no readable sample (can its shards or images be "
                        f"read?): there is nothing to judge the epoch by")
    n = totals[3].item()
    return {"loss": totals[0].item() / n, "top1": 100.0 * totals[1].item() / n, "top5": 100.0 * totals[2].item() / n,
            "samples": int(totals[3].item())}


def end_of_epoch(args: argparse.Namespace, accelerator: Accelerator, run: Training, data: Data, train: dict,
                 skipped_before: tuple[int, int, int]) -> dict:
    """Validate (and the EMA, whose metrics then are the eval metrics, as in timm), step the scheduler on the
    --eval-metric, log, write the summary row, export the model(s) and the best epochs, and save the state of the
    finished epoch."""
    p = run.progress
    evaluate_on_val = functools.partial(evaluate, loader=data.val_loader, accelerator=accelerator,
                                        num_classes=data.num_classes, split=args.val_split,
                                        channels_last=args.channels_last,
                                        progress=not args.no_progress and accelerator.is_main_process)
    val_undecodable_before = data.val.skipped()[2]
    val = evaluate_on_val(run.bare)
    val_undecodable = data.val.skipped()[2] - val_undecodable_before  # counted once, not again for the EMA
    ema = evaluate_on_val(run.ema.module) if run.ema is not None else None
    judged = ema if ema is not None else val  # timm: under --model-ema the EMA's metrics are the eval metrics
    lrs = [group["lr"] for group in run.optimizer.param_groups]
    lr = sum(lrs) / len(lrs)  # the epoch's own lr, as timm's summary has it (the mean over parameter groups)
    # the next epoch's lr, from the validation metric (the plateau scheduler needs it; the others ignore it)
    run.scheduler.step(p.epoch + 1, metric=judged[args.eval_metric])
    counts = [a - b for a, b in zip(data.train.skipped(), skipped_before)] + [val_undecodable]
    skipped = accelerator.reduce(torch.tensor(counts, device=accelerator.device), reduction="sum").tolist()
    row = epoch_row(p, lr, train, val, skipped, ema)
    if skipped[0] or skipped[1]:
        _logger.warning(f"epoch {p.epoch}: {skipped[0]} unreadable shard(s) skipped, {skipped[1]} sample(s) "
                        f"repeated to keep the ranks in step")
    if skipped[2]:
        _logger.warning(f"epoch {p.epoch}: {skipped[2]} undecodable training image(s) replaced by a neighbour in "
                        f"their batch")
    if skipped[3]:
        _logger.warning(f"epoch {p.epoch}: {skipped[3]} undecodable validation image(s) left out, validated on "
                        f"{val['samples']}")
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
