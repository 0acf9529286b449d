"""What a train_fcl.py run is built from: the Accelerator and the run folder, the model, the data streams and their
transforms, the loss, mixup, the regularizer with its optimizer, scheduler and EMA (``Training``)."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .. import FCLConfig, FeatureContrastiveRegularizer, PatchGaussian
from ..data import AugMixViews, DataError, EpochStream, MissingSplit, create_source, make_loader
from ..run import folder as run_folder
from ..run.model_io import HUB_PREFIXES, classifier_fate, create_model, default_in_chans
from .checks import accelerator_type, check_mixed_precision, resolve_mixed_precision
from .flags import ConfigError, fcl_config, in_chans, mixup_active, output_folder, resolve_lr
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


def lock_output(accelerator: Accelerator, output: Path, args: argparse.Namespace) -> RunLock:
    """The main process locks the run folder for the whole run and makes sure it is a run's: a new or empty folder is
    claimed (run.json, written before anything else), a folder holding run.json is this run's (a resume, or the
    same run after its states were removed), anything else is refused in one line, nothing in it touched. Every
    rank of a refused run stops with the same line. ``lock.claimed``: run.json was written by this start."""
    from accelerate.utils import broadcast_object_list

    lock, refusal = RunLock(output / run_folder.LOCK), [None]
    lock.claimed = False
    if accelerator.is_main_process:
        try:
            lock.acquire()
            foreign = run_folder.foreign_entries(output)
            if foreign:
                lock.release()
                shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
                raise LockedError(f"--output {output} holds files that no train_fcl.py run wrote ({shown}): give a "
                                  f"new or empty folder (nothing in it was changed)")
            lock.claimed = run_folder.claim(output, {"run_id": lock.run_id, "model": args.model,
                                                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
        except LockedError as exn:
            refusal[0] = str(exn)
    if accelerator.num_processes > 1:
        broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise ConfigError(refusal[0])
    return lock


# ------------------------------------------------------------------------------------------------------ model, data

def init_head(model: torch.nn.Module, *, scale: Optional[float], bias: Optional[float]) -> None:
    """timm's --head-init-scale (the classifier's weight and bias scaled) and --head-init-bias (its bias set)."""
    if scale is None and bias is None:
        return
    head = model.get_classifier()
    if not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ConfigError("--head-init-scale / --head-init-bias need a classifier with a weight and a bias")
    with torch.no_grad():
        if scale is not None:
            head.weight.mul_(scale)
            if head.bias is not None:
                head.bias.mul_(scale)
        if bias is not None and head.bias is not None:
            head.bias.fill_(bias)


def build_model(args: argparse.Namespace, num_classes_from_data: Optional[int]) -> torch.nn.Module:
    """The run's timm model: its class count is --num-classes, else the data's, else that of its weights. Pretrained
    weights keep their classifier when their class count is the model's and lose it (re-initialized) otherwise; which
    one happened is logged. Weights from an export also bring its input config (``resolve_run_data_config``)."""
    if args.initial_checkpoint and not os.path.isfile(args.initial_checkpoint):
        raise ConfigError(f"--initial-checkpoint {args.initial_checkpoint} does not exist")
    if args.num_classes is None and num_classes_from_data is None and not args.initial_checkpoint:
        raise ConfigError("--num-classes is needed: neither the data nor a checkpoint gives the class count")
    model = create_model(args.model, num_classes=args.num_classes, default_num_classes=num_classes_from_data,
                         in_chans=in_chans(args), pretrained=args.pretrained, pretrained_path=args.pretrained_path,
                         checkpoint=args.initial_checkpoint or None, checkpoint_flag="--initial-checkpoint",
                         drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
                         global_pool=args.gp, bn_momentum=args.bn_momentum, bn_eps=args.bn_eps, **args.model_kwargs)
    init_head(model, scale=args.head_init_scale, bias=args.head_init_bias)
    pretrained = args.pretrained or args.pretrained_path or str(args.model).startswith(HUB_PREFIXES) or \
        os.path.isdir(args.model)
    fate = classifier_fate(model) if pretrained and not args.initial_checkpoint else None
    if fate:
        _logger.info(fate)
    return model


def resolve_run_data_config(args: argparse.Namespace, model: torch.nn.Module, verbose: bool = False) -> dict:
    """timm's data config of the run: the flags (--input-size, --img-size, --mean, --std, --interpolation,
    --crop-pct, ...) where given, else the model's pretrained_cfg (an export's own when its weights are the
    pretrained source), else timm's defaults."""
    from timm.data import resolve_data_config

    return resolve_data_config({**vars(args), "in_chans": in_chans(args)}, model=model, verbose=verbose)


def pad_crop_transform(data_config: dict, *, pad: int, hflip: float):
    """CIFAR's "random cropping and flipping" (He et al. 2016; the paper's section 4.2): zero-pad by ``pad``, crop
    the input size at a random place, flip horizontally with probability ``hflip``, normalize. timm's
    create_transform only has the random-resized crop, which rescales as well as shifts."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomCrop(data_config["input_size"][-2:], padding=pad), transforms.RandomHorizontalFlip(hflip),
        transforms.ToTensor(), transforms.Normalize(data_config["mean"], data_config["std"])])


def train_transform_kwargs(args: argparse.Namespace, data_config: dict) -> dict:
    """create_transform's arguments for the training transform, as timm's train.py hands its flags to create_loader
    (which builds the transform from them): the training interpolation falls back to the model's under --no-aug or
    when empty, --resplit spares the first split (or half) from random erasing."""
    interpolation = args.train_interpolation
    if args.no_aug or not interpolation:
        interpolation = data_config["interpolation"]
    return dict(input_size=data_config["input_size"], is_training=True, no_aug=args.no_aug,
                train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
                vflip=args.vflip, color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob,
                grayscale_prob=args.grayscale_prob, gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa,
                interpolation=interpolation, mean=data_config["mean"], std=data_config["std"], re_prob=args.reprob,
                re_mode=args.remode, re_count=args.recount,
                re_num_splits=(args.aug_splits or 2) if args.resplit else 0, separate=args.aug_splits > 0)


def build_transforms(args: argparse.Namespace, data_config: dict) -> tuple[Callable, Callable]:
    """The training transform (timm's train.py's for the same flags, or --crop-pad's; Patch Gaussian and the AugMix
    views added) and the evaluation transform."""
    from timm.data import create_transform

    if args.crop_pad and not args.no_aug:
        train_tf = pad_crop_transform(data_config, pad=args.crop_pad, hflip=args.hflip)
    else:
        # with --aug-splits, timm's (primary, secondary, final) stages, which AugMixViews turns into the views
        train_tf = create_transform(**train_transform_kwargs(args, data_config))
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


SMALL_INPUT = 64  # px: at or below it, timm's ImageNet random-resized crop and colour jitter hurt (CIFAR, MNIST)


def small_image_augmentation_warning(args: argparse.Namespace, data_config: dict) -> Optional[str]:
    """One line when the training transform is timm's default, a random-resized crop (--scale 0.08 1, --ratio
    3/4 4/3, colour jitter), on inputs of ``SMALL_INPUT`` px or less: it crops a 32 px image down to a few pixels
    (fine-tuning a CIFAR model took validation from ~89% to 74% in 30 steps); else None. Not when --no-aug,
    --crop-pad, --aug-splits or a --train-crop-mode chose the transform, or --scale / --ratio were set away from
    timm's defaults."""
    from .timm_parity import timm_default

    size = min(data_config["input_size"][-2:])
    if size > SMALL_INPUT or args.no_aug or args.crop_pad or args.aug_splits or \
            args.train_crop_mode not in (None, "", "rrc"):
        return None
    if any(not math.isclose(a, b) for k in ("scale", "ratio") for a, b in zip(getattr(args, k), timm_default(k))):
        return None
    return (f"the training transform is timm's ImageNet default, a random-resized crop (--scale "
            f"{' '.join(f'{v:g}' for v in args.scale)}) with --color-jitter {args.color_jitter:g}, on {size} px "
            f"inputs, where it crops most of each image away (a CIFAR fine-tune fell from ~89% to 74% in 30 steps); "
            f"for small images use --crop-pad 4 (pad, random crop, flip: the CIFAR augmentation) and --color-jitter "
            f"0, or set --scale to keep the crop knowingly")


@dataclasses.dataclass
class Sources:
    """The run's training and validation sources (counted and checked, nothing decoded)."""
    train: object   # data.sources.WdsSource or MapSource
    val: object
    val_split: str  # the split that chooses the best epoch, as the run folder names it


@dataclasses.dataclass
class Data:
    """The per-rank training and validation streams, their loaders, and what the model's input needs."""
    train: EpochStream
    val: EpochStream
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    num_classes: int  # labels lie in [0, num_classes): the model's outputs
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


def check_size(source, expected: Optional[int], flag: str):
    """``source``, when it holds the ``expected`` number of samples (timm's flag gives the size of a stream it cannot
    count; here every split is counted, so the flag is a check)."""
    if expected is not None and len(source) != expected:
        raise DataError(f"{flag} {expected}: the split holds {len(source)} samples")
    return source


def open_sources(args: argparse.Namespace, accelerator: Accelerator, output: Optional[Path] = None) -> Sources:
    """The training and validation sources of the flags (or of --val-holdout's carve in ``output``), their sizes
    checked. A validation split missing from the shards is an error that says how to choose one, never a quiet switch
    to the test split. An image folder's validation classes are numbered as its training classes (timm numbers each
    folder's own: a validation/ lacking one class would shift every later label), and a class with no validation
    image is named in a warning."""
    channels = in_chans(args) or default_in_chans(args.model)
    data_dir, train_split, val_split = holdout_data(args, accelerator, output)
    source = functools.partial(create_source, args.dataset or "", data_dir, in_chans=channels, download=args.dataset_download,
                               class_map=args.class_map)
    train_src = check_size(source(train_split), args.train_num_samples, "--train-num-samples")
    if getattr(train_src, "class_to_idx", None):
        source = functools.partial(source, class_map=train_src.class_to_idx)
    try:
        val_src = check_size(source(val_split), args.val_num_samples, "--val-num-samples")
    except MissingSplit as exn:
        if "test" not in exn.listed:
            raise
        raise DataError(f"{exn}: the best epoch is never chosen on the test split unasked; say --val-split test to "
                        "do so knowingly, or --val-holdout N to hold N training images out as validation") from None
    empty = getattr(val_src, "empty_classes", [])
    if empty and accelerator.is_main_process:
        _logger.warning(f"the validation split '{val_split}' has no image of {len(empty)} class(es) of the training "
                        f"split: {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} (the labels follow the "
                        f"training split's numbering)")
    return Sources(train=train_src, val=val_src, val_split=f"{val_split} (held out of {args.train_split})"
                   if args.val_holdout else val_split)


def build_run_model(args: argparse.Namespace, sources: Sources, verbose: bool = False) -> tuple[torch.nn.Module, dict]:
    """The run's model (its class count may come from the data) and its input config, which decides the transforms."""
    model = build_model(args, sources.train.num_classes)
    if sources.train.num_classes and sources.train.num_classes > model.num_classes:
        raise DataError(f"the data has {sources.train.num_classes} classes but the model has {model.num_classes} "
                        f"outputs")
    return model, resolve_run_data_config(args, model, verbose=verbose)


def build_data(args: argparse.Namespace, accelerator: Accelerator, sources: Sources, data_config: dict,
               num_classes: int, streams: Optional[int] = None) -> Data:
    """The per-rank streams over ``sources`` with the transforms of ``data_config``; each rank reads its own share, so
    the loaders are not prepared by accelerate (timm's rule). ``num_classes``: the model's outputs (the labels' range).
    ``streams``: the parts of each rank's training share (a resumed run's own; default one per loader worker)."""
    train_tf, eval_tf = build_transforms(args, data_config)
    warning = small_image_augmentation_warning(args, data_config)
    if warning and accelerator.is_main_process:
        _logger.warning(warning)
    common = dict(seed=args.seed, batch_size=args.batch_size, num_workers=args.workers,
                  rank=accelerator.process_index, world_size=accelerator.num_processes)
    train = EpochStream(sources.train, transform=train_tf, is_training=True, subset=args.train_subset,
                        shuffle_buffer=args.shuffle_buffer, streams=streams, **common)
    val = EpochStream(sources.val, transform=eval_tf, is_training=False, subset=args.val_subset,
                      **{**common, "batch_size": args.validation_batch_size or args.batch_size})
    return Data(train=train, val=val, num_classes=num_classes, class_names=sources.train.class_names,
                data_config=data_config, val_split=sources.val_split,
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
    log_every: int = 50  # steps between log lines: --log-interval, or derived from the epoch's length (log_every)
    epoch_meter: Optional[object] = None  # this process's loss means of the epoch so far (steps.LossMeter)

    def new_epoch_meter(self) -> None:
        """Start the epoch's loss means afresh (at batch 0; a run resumed mid-epoch keeps the restored ones)."""
        from .steps import LossMeter
        self.epoch_meter = LossMeter(self.finite.device)

    def resolved(self, args: argparse.Namespace, settings: dict, data: Data, world: int,
                 mixed_precision: str = "no") -> dict:
        """What the run computes (resolved.yaml); ``settings``: the flags that shape it; ``mixed_precision``: the
        accelerator's, from the flags or from the launch config."""
        epochs = {"start": self.fcl.start_step / self.updates_per_epoch,
                  "ramp": self.fcl.ramp_steps / self.updates_per_epoch}
        return run_folder.Resolved(
            settings=settings, fcl=dataclasses.asdict(self.fcl), fcl_schedule_epochs=epochs, lr=self.lr,
            num_classes=data.num_classes, data_config=dict(data.data_config), world_size=world,
            global_batch=args.batch_size * world * args.grad_accum_steps, updates_per_epoch=self.updates_per_epoch,
            epochs=self.num_epochs, loader_streams=data.train.streams, train_samples=len(data.train.source),
            val_samples=len(data.val.source), mixed_precision=str(mixed_precision)).as_yaml()

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
    mixup / cutmix (the smoothing is in the targets), label-smoothing CE, or plain CE (--smoothing 0); --bce-loss
    turns the smoothed or mixed CE into timm's BinaryCrossEntropy."""
    from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if args.jsd_loss:
        jsd = JsdCrossEntropy(num_splits=args.aug_splits, smoothing=args.smoothing)
        return jsd, jsd.cross_entropy_loss
    if args.bce_loss and (mixup_active(args) or args.smoothing):  # timm's train.py: BCE where it would smooth or mix
        bce = BinaryCrossEntropy(smoothing=0.0 if mixup_active(args) else args.smoothing,
                                 target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum,
                                 pos_weight=args.bce_pos_weight)
        return bce, bce
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


class NoSchedule:
    """--sched none: the lr stays --lr (timm's train.py runs without a scheduler)."""

    def step(self, epoch: int, metric: Optional[float] = None) -> None:
        pass

    def step_update(self, num_updates: int, metric: Optional[float] = None) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def prepare_model(args: argparse.Namespace, model: torch.nn.Module, world_size: int,
                  device_type: str) -> torch.nn.Module:
    """The model as the flags ask before it is wrapped: gradient checkpointing, synchronized batch norm (several
    processes only, as timm's train.py; torch has it for GPUs only), channels-last."""
    if args.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"--grad-checkpointing: {args.model} does not support gradient checkpointing")
        model.set_grad_checkpointing(True)
    if args.sync_bn and world_size > 1:
        if device_type == "cpu":
            raise ConfigError("--sync-bn needs GPUs (torch synchronizes batch norm on GPUs only); drop it on the CPU")
        from timm.layers import convert_sync_batchnorm
        model = convert_sync_batchnorm(model)
    return model.to(memory_format=torch.channels_last) if args.channels_last else model


LOG_INTERVAL = 50  # timm's --log-interval default


def log_every(args: argparse.Namespace, updates_per_epoch: int) -> int:
    """Steps between log lines: --log-interval when given, else timm's 50, fewer for an epoch of under 500 steps, so
    that a short epoch shows about 10 lines (a 20-step run would show none before its end). How a run goes, not what
    it computes: a resume may change it (--log-interval is ``may_change_on_resume``)."""
    if args.log_interval is not None:
        return args.log_interval
    return min(LOG_INTERVAL, max(1, updates_per_epoch // 10))


def warmup_warning(args: argparse.Namespace, num_epochs: int, lr: float) -> Optional[str]:
    """One line when the run never leaves its warm-up (--warmup-epochs >= the epochs it trains, e.g. timm's default 5
    in a short run or a fine-tune): every step then trains below ``lr``, the lr it logged; else None."""
    if args.sched == "none" or not args.warmup_epochs or args.warmup_epochs < num_epochs:
        return None
    return (f"--warmup-epochs {args.warmup_epochs} (timm's default 5) >= the run's {num_epochs} epoch(s): the run "
            f"never leaves warm-up, every step trains at an lr climbing from --warmup-lr {args.warmup_lr:g} that "
            f"never reaches {lr:g}; set --warmup-epochs 0 (or fewer than --epochs: timm counts warm-up in whole "
            f"epochs, --sched-on-updates ramps it per step), or --warmup-prefix to train the warm-up before the "
            f"--epochs")


def build_training(args: argparse.Namespace, accelerator: Accelerator, data: Data, model: torch.nn.Module,
                   output: Path, settings: Optional[dict] = None) -> Training:
    """The regularizer around ``model``, optimizer, scheduler (per update), EMA, prepared for the processes; and what
    the run computes (``Training.settings``, resolved.yaml's content) from ``settings``, the flags that shape it
    (flags.result_settings)."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    world = accelerator.num_processes
    updates_per_epoch = math.ceil(len(data.train) / args.grad_accum_steps)
    model = prepare_model(args, model, world, accelerator.device.type)
    fcl = fcl_config(args, data.data_config, updates_per_epoch)
    try:  # before the first step, even when the term starts epochs later
        fcl.check_input(data.data_config["input_size"], args.batch_size)
    except ValueError as exn:
        raise ConfigError(f"FCL settings do not fit the model's input: {exn}") from None
    loss_fn, label_loss_fn = build_loss(args)
    reg = FeatureContrastiveRegularizer(model, fcl, loss_fn=loss_fn, compile_backend=args.torchcompile,
                                        num_splits=max(args.aug_splits, 1), label_loss_fn=label_loss_fn,
                                        world_size=world)
    lr, lr_source = resolve_lr(args, world)
    if accelerator.is_main_process:
        _logger.info(f"learning rate {lr:g}, from {lr_source}")
    resolved_args = argparse.Namespace(**{**vars(args), "lr": lr})
    try:
        optimizer = create_optimizer_v2(model, **optimizer_kwargs(resolved_args), **args.opt_kwargs)
    except (TypeError, ValueError) as exn:
        raise ConfigError(f"--opt {args.opt} with these optimizer settings: {exn}") from None
    try:  # e.g. --sched wsd with --decay-epochs (default 90) longer than --epochs
        scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(resolved_args),
                                                    updates_per_epoch=updates_per_epoch)
    except ValueError as exn:
        raise ConfigError(f"--sched {args.sched} with these schedule settings: {exn}") from None
    scheduler = scheduler or NoSchedule()
    warning = warmup_warning(args, num_epochs, lr)
    if warning and accelerator.is_main_process:
        _logger.warning(warning)
    reg, optimizer = accelerator.prepare(reg, optimizer)
    ema = None
    if args.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(accelerator.unwrap_model(reg).model, decay=args.model_ema_decay,
                         use_warmup=args.model_ema_warmup)
    run = Training(reg=reg, optimizer=optimizer, scheduler=scheduler, ema=ema, progress=Progress(), fcl=fcl, lr=lr,
                   num_epochs=num_epochs, updates_per_epoch=updates_per_epoch, output=output,
                   bare=accelerator.unwrap_model(reg).model, mixup=build_mixup(args, data.num_classes),
                   finite=torch.ones((), dtype=torch.bool, device=accelerator.device),
                   log_every=log_every(args, updates_per_epoch))
    run.new_epoch_meter()
    run.settings = run.resolved(args, settings or {}, data, world, accelerator.mixed_precision)
    return run
