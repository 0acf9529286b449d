"""What a train_fcl.py run is built from: the Accelerator and the run folder, the model, the data streams and their
transforms, the loss, mixup, the regularizer with its optimizer, scheduler and EMA (``Training``)."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .. import FCLConfig, FeatureContrastiveRegularizer, PatchGaussian
from ..data import AugMixViews, DataError, EpochStream, create_source, make_loader
from ..data.streams import MissingSplit
from ..run import folder as run_folder
from ..run.model_io import create_model, default_in_chans
from .checks import accelerator_type, check_mixed_precision, resolve_mixed_precision
from .flags import ConfigError, fcl_config, in_chans, mixup_active, output_folder
from .lock import LockedError, RunLock

if TYPE_CHECKING:
    from accelerate import Accelerator, PartialState

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ accelerator, folder

def _timestamped_name(args: argparse.Namespace) -> str:
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


def run_output(args: argparse.Namespace, state: PartialState) -> Path:
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


def trackers(args: argparse.Namespace, output: Path) -> list:
    """Accelerate's trackers: TensorBoard in OUTPUT/tb, and Weights & Biases with --log-wandb."""
    from accelerate.tracking import TensorBoardTracker

    return [TensorBoardTracker("tb", str(output))] + (["wandb"] if args.log_wandb else [])


def setup(args: argparse.Namespace) -> tuple[Accelerator, Path]:
    """The Accelerator (cpu=True where no accelerator exists, so `accelerate launch --multi_gpu` there runs as MULTI_CPU
    over gloo instead of N unrelated single processes), logging, the seed, and the run folder's path."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed

    device_type = accelerator_type()
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


def lock_output(accelerator: Accelerator, output: Path) -> RunLock:
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


# ------------------------------------------------------------------------------------------------------ model, data

def build_model(args: argparse.Namespace, num_classes_from_data: Optional[int]) -> torch.nn.Module:
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        raise ConfigError(f"--initial-checkpoint {args.initial_checkpoint} does not exist")
    if args.num_classes is None and num_classes_from_data is None and not args.initial_checkpoint:
        raise ConfigError("--num-classes is needed: neither the data nor a checkpoint gives the class count")
    return create_model(args.model, num_classes=args.num_classes, default_num_classes=num_classes_from_data,
                        in_chans=in_chans(args), pretrained=args.pretrained, pretrained_path=args.pretrained_path,
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


def build_transforms(args: argparse.Namespace, data_config: dict) -> tuple[Callable, Callable]:
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
    val_split: str = "validation"  # the split that chooses the best epoch, as the run folder names it


def holdout_data(args: argparse.Namespace, accelerator: Accelerator, output: Path) -> tuple[str, str, str]:
    """(data dir, train split, validation split) of the run: the flags' own, or with --val-holdout N a carve of the
    training shards into OUTPUT/holdout/ (N seeded picks as 'validation', the rest as 'train'; written once by the
    main process, found again on resume)."""
    if not args.val_holdout:
        return args.data_dir, args.train_split, args.val_split
    from ..data.holdout import carve_validation

    if not str(args.dataset).startswith("wds/"):
        raise DataError(f"--val-holdout needs WebDataset shards (--dataset wds/NAME), not '{args.dataset}'")
    folder = Path(output) / run_folder.HOLDOUT
    if accelerator.is_main_process:
        info = carve_validation(args.data_dir, folder, val_size=args.val_holdout, split=args.train_split)
        sizes = {k: v.get("num_samples") for k, v in info.get("splits", {}).items()}
        _logger.info(f"--val-holdout {args.val_holdout}: {folder} holds train {sizes.get('train')} and validation "
                     f"{sizes.get('validation')} images carved from {args.data_dir} ({args.train_split})")
    accelerator.wait_for_everyone()
    return str(folder), args.train_split, "validation"


def build_data(args: argparse.Namespace, accelerator: Accelerator, streams: Optional[int] = None,
               output: Optional[Path] = None) -> Data:
    """The model (its class count may come from the data, its input config decides the transforms) and the streams;
    each rank reads its own share, so the loaders are not prepared by accelerate (timm's rule). ``streams``: the
    parts of each rank's training share (a resumed run's own; default one per loader worker). A validation split
    missing from the shards is an error that says how to choose one, never a quiet switch to the test split."""
    from timm.data import resolve_data_config

    channels = in_chans(args) or default_in_chans(args.model)
    data_dir, train_split, val_split = holdout_data(args, accelerator, output)
    train_src = create_source(args.dataset, data_dir, train_split, in_chans=channels, download=args.dataset_download)
    try:
        val_src = create_source(args.dataset, data_dir, val_split, in_chans=channels, download=args.dataset_download)
    except MissingSplit as exn:
        if "test" not in exn.listed:
            raise
        raise DataError(f"{exn}: the best epoch is never chosen on the test split unasked; say --val-split test to "
                        "do so knowingly, or --val-holdout N to hold N training images out as validation") from None
    model = build_model(args, train_src.num_classes)
    if train_src.num_classes and train_src.num_classes > model.num_classes:
        raise DataError(f"the data has {train_src.num_classes} classes but the model has {model.num_classes} outputs")
    data_config = resolve_data_config({**vars(args), "in_chans": in_chans(args)}, model=model,
                                      verbose=accelerator.is_main_process)
    train_tf, eval_tf = build_transforms(args, data_config)
    common = dict(seed=args.seed, batch_size=args.batch_size, num_workers=args.workers,
                  rank=accelerator.process_index, world_size=accelerator.num_processes)
    train = EpochStream(train_src, transform=train_tf, is_training=True, subset=args.train_subset,
                        shuffle_buffer=args.shuffle_buffer, streams=streams, **common)
    val = EpochStream(val_src, transform=eval_tf, is_training=False, subset=args.val_subset, **common)
    return Data(train=train, val=val, model=model, num_classes=model.num_classes, class_names=train_src.class_names,
                data_config=data_config, val_split=f"{val_split} (held out of {args.train_split})"
                if args.val_holdout else val_split,
                train_loader=make_loader(train, num_workers=args.workers, pin_memory=args.pin_mem),
                val_loader=make_loader(val, num_workers=args.workers, pin_memory=args.pin_mem))


# ------------------------------------------------------------------------------------------------------ training

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
    epoch_meter: Optional[object] = None  # this process's loss means of the epoch so far (steps.LossMeter)

    def resolved(self, args: argparse.Namespace, settings: dict, data: Data, world: int) -> dict:
        """What the run computes (resolved.yaml); ``settings``: the flags that shape it."""
        epochs = {"start": self.fcl.start_step / self.updates_per_epoch,
                  "ramp": self.fcl.ramp_steps / self.updates_per_epoch}
        return run_folder.Resolved(
            settings=settings, fcl=dataclasses.asdict(self.fcl), fcl_schedule_epochs=epochs, lr=self.lr,
            num_classes=data.num_classes, data_config=dict(data.data_config), world_size=world,
            global_batch=args.batch_size * world * args.grad_accum_steps, updates_per_epoch=self.updates_per_epoch,
            epochs=self.num_epochs, loader_streams=data.train.streams, train_samples=len(data.train.source),
            val_samples=len(data.val.source)).as_yaml()

    def state_parts(self, accelerator: Accelerator) -> dict:
        """What a saved training state holds, by name (timm_fcl.training.states saves and loads it without pickles)."""
        return {"model": accelerator.unwrap_model(self.reg), "optimizer": self.optimizer, "scheduler": self.scheduler,
                "ema": self.ema, "progress": self.progress, "scaler": accelerator.scaler}

    def rank_parts(self) -> dict:
        """What a saved state holds for each process apart: the epoch's loss means so far, so that a run resumed
        mid-epoch reports the same training loss for that epoch as an uninterrupted one."""
        return {"epoch_loss": self.epoch_meter}


def build_loss(args: argparse.Namespace) -> tuple[Callable, Callable]:
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


def build_mixup(args: argparse.Namespace, num_classes: int) -> Optional[Callable]:
    """timm's Mixup for --mixup / --cutmix (its targets carry the label smoothing), None when both are off."""
    if not mixup_active(args):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def build_training(args: argparse.Namespace, accelerator: Accelerator, data: Data, output: Path) -> Training:
    """The regularizer around the model, optimizer, scheduler (per update), EMA, prepared for the processes."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    world = accelerator.num_processes
    updates_per_epoch = math.ceil(len(data.train) / args.grad_accum_steps)
    model = data.model.to(memory_format=torch.channels_last) if args.channels_last else data.model
    fcl = fcl_config(args, data.data_config, updates_per_epoch)
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
