"""The plumbing of a training step: the batch as the regularizer takes it (AugMix views, mixup / cutmix), gradient
clipping, loss means kept on the device, the divergence guard and the interval log line."""
from __future__ import annotations

import argparse
import logging
import time
from typing import TYPE_CHECKING

import torch

from ..data import DataError, seeded
from ..regularizer import FCLOutput
from ..run.cli import this_process_only
from .build import Training

if TYPE_CHECKING:
    from accelerate import Accelerator

_logger = logging.getLogger("train_fcl")


class DivergedError(RuntimeError):
    """The loss or the weights became NaN or infinite: reported as one line, nothing of it saved."""


def check_labels(y: torch.Tensor, num_classes: int, split: str) -> None:
    """Refuse a label outside [0, num_classes): this process's own batch, so the error names the process that found
    it under a multi-process launch (the main one may never see it)."""
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise this_process_only(DataError(f"label {int(y[bad][0])} in split '{split}' is outside [0, {num_classes}); "
                                          f"check --num-classes or the data"))


class LossMeter:
    """Means of loss / ce / fcl, summed on the device and read back only when asked (no host sync per step); the FCL
    term's mean is taken over the steps that carried it (with --fcl-every n, one step in n). ``pull``, the mean of the
    pull ratios measured (``FCLOutput.pull``, once per log window), is among the means when any was measured."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, device=device)
        self.pull_sum = torch.zeros((), device=device)
        self.steps, self.carried, self.pulled, self.images, self.start = 0, 0, 0, 0, time.time()

    def update(self, out: FCLOutput, images: int) -> None:
        self.sums += torch.stack([out.loss.detach(), out.ce.detach(), out.fcl.detach()]).float()
        self.steps += 1
        self.carried += out.weight > 0
        self.images += images
        if out.pull is not None:
            self.pull_sum += out.pull.float()
            self.pulled += 1

    def state_dict(self) -> dict:
        return {"sums": self.sums, "steps": int(self.steps), "carried": int(self.carried), "images": int(self.images),
                "pull_sum": self.pull_sum, "pulled": int(self.pulled)}

    def load_state_dict(self, state: dict) -> None:
        sums = state["sums"]
        if not isinstance(sums, torch.Tensor) or sums.shape != self.sums.shape:
            raise ValueError("the loss sums are not 3 numbers")
        self.sums = sums.to(self.sums.device, self.sums.dtype)
        self.steps, self.carried, self.images = int(state["steps"]), int(state["carried"]), int(state["images"])
        # states saved before the pull ratio was measured hold none
        pull_sum = state.get("pull_sum", torch.zeros(()))
        if not isinstance(pull_sum, torch.Tensor) or pull_sum.numel() != 1:
            raise ValueError("the pull ratio sum is not one number")
        self.pull_sum = pull_sum.reshape(()).to(self.pull_sum.device, self.pull_sum.dtype)
        self.pulled = int(state.get("pulled", 0))

    def means(self) -> dict:
        loss, ce, fcl = (self.sums / max(self.steps, 1)).tolist()
        means = {"loss": loss, "ce": ce, "fcl": fcl * max(self.steps, 1) / max(self.carried, 1)}
        if self.pulled:
            means["pull"] = self.pull_sum.item() / self.pulled
        return means

    def images_per_second(self, processes: int) -> float:
        return self.images * processes / max(time.time() - self.start, 1e-9)


def stop_if_diverged(accelerator: Accelerator, run: Training) -> None:
    """Raise if any rank's loss was ever non-finite or the weights are: every rank calls this at the same step (it is
    a collective), before each save and export, so a diverged run saves nothing after its last finite state."""
    weights = torch.stack([q.isfinite().all() for q in run.bare.parameters()]).all()
    bad = accelerator.reduce((~(run.finite & weights)).float().reshape(1), reduction="sum")
    if bad.item():
        p = run.progress
        raise DivergedError(f"the loss or the weights became NaN or infinite by step {p.step} (epoch {p.epoch}); "
                            f"stopped without saving anything after that (lower --lr, or set --clip-grad)")


def log_interval(args: argparse.Namespace, accelerator: Accelerator, run: Training, window: LossMeter, out: FCLOutput,
                 n_batches: int) -> None:
    lr = run.optimizer.param_groups[0]["lr"]
    rate = window.images_per_second(accelerator.num_processes)
    m = window.means()
    # lambda of the schedule (out.weight is lambda x n on the steps --fcl-every keeps, 0 on the others)
    weight = out.scheduled_weight
    p = run.progress
    if accelerator.is_main_process:
        pull = f" pull {m['pull']:.3g}" if "pull" in m else ""
        _logger.info(f"epoch {p.epoch} step {p.step} batch {p.batch}/{n_batches} lr {lr:.4g} loss {m['loss']:.4f} "
                     f"ce {m['ce']:.4f} fcl {m['fcl']:.4f} weight {weight:.3g}{pull} img/s {rate:.1f}")
    accelerator.log({"train/loss": m["loss"], "train/ce": m["ce"], "train/fcl": m["fcl"], "train/weight": weight,
                     "train/lr": lr, "train/img_per_s": rate, **({"train/pull": m["pull"]} if "pull" in m else {})},
                    step=p.step)


def training_batch(args: argparse.Namespace, accelerator: Accelerator, run: Training, x: torch.Tensor | list,
                   y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def clip_gradients(args: argparse.Namespace, accelerator: Accelerator, reg: torch.nn.Module) -> None:
    """timm's --clip-grad in --clip-mode on the step's gradients (unscaled first under fp16)."""
    if args.clip_mode == "norm":
        accelerator.clip_grad_norm_(reg.parameters(), args.clip_grad)
        return
    from timm.utils import dispatch_clip_grad

    accelerator.unscale_gradients()
    dispatch_clip_grad(reg.parameters(), args.clip_grad, mode=args.clip_mode)
