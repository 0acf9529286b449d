"""timm's train.py flags (timm 1.0.31) and what train_fcl.py does with each: the same meaning (supported), the same
name with another behaviour (``DIFFERS``, with why), or nothing (``NOT_SUPPORTED``, with why). The flag table of
docs/timm-compat.md is written from this module (``markdown_table``), and a timm ``args.yaml`` given as --config is read
with it: a key train_fcl.py lacks is ignored when it holds timm's default and refused when it asks for what is not
built."""
from __future__ import annotations

from typing import Any

# (option strings, dest, timm's default), in the order of timm's train.py --help
TIMM_TRAIN_FLAGS: tuple[tuple[list[str], str, Any], ...] = (
    (["-c", "--config"], "config", ""),
    (["data"], "data", None),
    (["--data-dir"], "data_dir", None),
    (["--dataset"], "dataset", ""),
    (["--train-split"], "train_split", "train"),
    (["--val-split"], "val_split", "validation"),
    (["--train-num-samples"], "train_num_samples", None),
    (["--val-num-samples"], "val_num_samples", None),
    (["--dataset-download"], "dataset_download", False),
    (["--class-map"], "class_map", ""),
    (["--input-img-mode"], "input_img_mode", None),
    (["--input-key"], "input_key", None),
    (["--target-key"], "target_key", None),
    (["--dataset-trust-remote-code"], "dataset_trust_remote_code", False),
    (["--model"], "model", "resnet50"),
    (["--pretrained"], "pretrained", False),
    (["--pretrained-path"], "pretrained_path", None),
    (["--initial-checkpoint"], "initial_checkpoint", ""),
    (["--resume"], "resume", ""),
    (["--no-resume-opt"], "no_resume_opt", False),
    (["--num-classes"], "num_classes", None),
    (["--gp"], "gp", None),
    (["--img-size"], "img_size", None),
    (["--in-chans"], "in_chans", None),
    (["--input-size"], "input_size", None),
    (["--crop-pct"], "crop_pct", None),
    (["--mean"], "mean", None),
    (["--std"], "std", None),
    (["--interpolation"], "interpolation", ""),
    (["-b", "--batch-size"], "batch_size", 128),
    (["-vb", "--validation-batch-size"], "validation_batch_size", None),
    (["--channels-last"], "channels_last", False),
    (["--fuser"], "fuser", ""),
    (["--grad-accum-steps"], "grad_accum_steps", 1),
    (["--grad-checkpointing"], "grad_checkpointing", False),
    (["--fast-norm"], "fast_norm", False),
    (["--model-kwargs"], "model_kwargs", {}),
    (["--head-init-scale"], "head_init_scale", None),
    (["--head-init-bias"], "head_init_bias", None),
    (["--torchcompile-mode"], "torchcompile_mode", None),
    (["--torchscript"], "torchscript", False),
    (["--torchcompile"], "torchcompile", None),
    (["--device"], "device", "cuda"),
    (["--amp"], "amp", False),
    (["--amp-dtype"], "amp_dtype", "float16"),
    (["--model-dtype"], "model_dtype", None),
    (["--no-ddp-bb"], "no_ddp_bb", False),
    (["--synchronize-step"], "synchronize_step", False),
    (["--local_rank"], "local_rank", 0),
    (["--device-modules"], "device_modules", None),
    (["--opt"], "opt", "sgd"),
    (["--opt-eps"], "opt_eps", None),
    (["--opt-betas"], "opt_betas", None),
    (["--momentum"], "momentum", 0.9),
    (["--weight-decay"], "weight_decay", 2e-05),
    (["--clip-grad"], "clip_grad", None),
    (["--clip-mode"], "clip_mode", "norm"),
    (["--layer-decay"], "layer_decay", None),
    (["--layer-decay-min-scale"], "layer_decay_min_scale", 0),
    (["--layer-decay-no-opt-scale"], "layer_decay_no_opt_scale", None),
    (["--opt-kwargs"], "opt_kwargs", {}),
    (["--sched"], "sched", "cosine"),
    (["--sched-on-updates"], "sched_on_updates", False),
    (["--lr"], "lr", None),
    (["--lr-base"], "lr_base", 0.1),
    (["--lr-base-size"], "lr_base_size", 256),
    (["--lr-base-scale"], "lr_base_scale", ""),
    (["--lr-noise"], "lr_noise", None),
    (["--lr-noise-pct"], "lr_noise_pct", 0.67),
    (["--lr-noise-std"], "lr_noise_std", 1.0),
    (["--lr-cycle-mul"], "lr_cycle_mul", 1.0),
    (["--lr-cycle-decay"], "lr_cycle_decay", 0.5),
    (["--lr-cycle-limit"], "lr_cycle_limit", 1),
    (["--lr-k-decay"], "lr_k_decay", 1.0),
    (["--warmup-lr"], "warmup_lr", 1e-05),
    (["--min-lr"], "min_lr", 0),
    (["--epochs"], "epochs", 300),
    (["--epoch-repeats"], "epoch_repeats", 0.0),
    (["--start-epoch"], "start_epoch", None),
    (["--decay-milestones"], "decay_milestones", [90, 180, 270]),
    (["--decay-epochs"], "decay_epochs", 90),
    (["--warmup-epochs"], "warmup_epochs", 5),
    (["--warmup-prefix"], "warmup_prefix", False),
    (["--cooldown-epochs"], "cooldown_epochs", 0),
    (["--patience-epochs"], "patience_epochs", 10),
    (["--decay-rate", "--dr"], "decay_rate", 0.1),
    (["--no-aug"], "no_aug", False),
    (["--train-crop-mode"], "train_crop_mode", None),
    (["--scale"], "scale", [0.08, 1.0]),
    (["--ratio"], "ratio", [0.75, 1.3333333333333333]),
    (["--hflip"], "hflip", 0.5),
    (["--vflip"], "vflip", 0.0),
    (["--color-jitter"], "color_jitter", 0.4),
    (["--color-jitter-prob"], "color_jitter_prob", None),
    (["--grayscale-prob"], "grayscale_prob", None),
    (["--gaussian-blur-prob"], "gaussian_blur_prob", None),
    (["--aa"], "aa", None),
    (["--aug-repeats"], "aug_repeats", 0),
    (["--aug-splits"], "aug_splits", 0),
    (["--jsd-loss"], "jsd_loss", False),
    (["--bce-loss"], "bce_loss", False),
    (["--bce-sum"], "bce_sum", False),
    (["--bce-target-thresh"], "bce_target_thresh", None),
    (["--bce-pos-weight"], "bce_pos_weight", None),
    (["--reprob"], "reprob", 0.0),
    (["--remode"], "remode", "pixel"),
    (["--recount"], "recount", 1),
    (["--resplit"], "resplit", False),
    (["--mixup"], "mixup", 0.0),
    (["--cutmix"], "cutmix", 0.0),
    (["--cutmix-minmax"], "cutmix_minmax", None),
    (["--mixup-prob"], "mixup_prob", 1.0),
    (["--mixup-switch-prob"], "mixup_switch_prob", 0.5),
    (["--mixup-mode"], "mixup_mode", "batch"),
    (["--mixup-off-epoch"], "mixup_off_epoch", 0),
    (["--smoothing"], "smoothing", 0.1),
    (["--train-interpolation"], "train_interpolation", "random"),
    (["--drop"], "drop", 0.0),
    (["--drop-connect"], "drop_connect", None),
    (["--drop-path"], "drop_path", None),
    (["--drop-block"], "drop_block", None),
    (["--bn-momentum"], "bn_momentum", None),
    (["--bn-eps"], "bn_eps", None),
    (["--sync-bn"], "sync_bn", False),
    (["--dist-bn"], "dist_bn", "reduce"),
    (["--split-bn"], "split_bn", False),
    (["--model-ema"], "model_ema", False),
    (["--model-ema-force-cpu"], "model_ema_force_cpu", False),
    (["--model-ema-decay"], "model_ema_decay", 0.9998),
    (["--model-ema-warmup"], "model_ema_warmup", False),
    (["--seed"], "seed", 42),
    (["--worker-seeding"], "worker_seeding", "all"),
    (["--log-interval"], "log_interval", 50),
    (["--val-interval"], "val_interval", 1),
    (["--recovery-interval"], "recovery_interval", 0),
    (["--checkpoint-hist"], "checkpoint_hist", 10),
    (["-j", "--workers"], "workers", 4),
    (["--save-images"], "save_images", False),
    (["--pin-mem"], "pin_mem", False),
    (["--no-prefetcher"], "no_prefetcher", False),
    (["--output"], "output", ""),
    (["--experiment"], "experiment", ""),
    (["--eval-metric"], "eval_metric", "top1"),
    (["--tta"], "tta", 0),
    (["--use-multi-epochs-loader"], "use_multi_epochs_loader", False),
    (["--log-wandb"], "log_wandb", False),
    (["--wandb-project"], "wandb_project", None),
    (["--wandb-tags"], "wandb_tags", []),
    (["--wandb-resume-id"], "wandb_resume_id", ""),
    (["--train-img-sizes"], "train_img_sizes", None),
    (["--train-batch-sizes"], "train_batch_sizes", None),
    (["--train-size-probs"], "train_size_probs", None),
    (["--train-size-schedule"], "train_size_schedule", "constant"),
    (["--train-size-schedule-spread"], "train_size_schedule_spread", 0.65),
    (["--train-size-random-mix"], "train_size_random_mix", 0.1),
    (["--train-batches-per-epoch", "--train-steps-per-epoch"], "train_batches_per_epoch", None),
    (["--variable-batch-loss-scale"], "variable_batch_loss_scale", "none"),
    (["--naflex-loader"], "naflex_loader", False),
    (["--naflex-train-seq-lens"], "naflex_train_seq_lens", [128, 256, 576, 784, 1024]),
    (["--naflex-max-seq-len"], "naflex_max_seq_len", 576),
    (["--naflex-patch-sizes"], "naflex_patch_sizes", None),
    (["--naflex-patch-size-probs"], "naflex_patch_size_probs", None),
    (["--naflex-loss-scale"], "naflex_loss_scale", "linear"),
    (["--naflex-patchify-channels-first"], "naflex_patchify_channels_first", False),
    (["--kd-model-name"], "kd_model_name", None),
    (["--kd-distill-type"], "kd_distill_type", "logit"),
    (["--kd-loss-type"], "kd_loss_type", "kl"),
    (["--distill-loss-weight"], "distill_loss_weight", None),
    (["--task-loss-weight"], "task_loss_weight", None),
    (["--kd-temperature"], "kd_temperature", 4.0),
    (["--kd-student-feature-dim"], "kd_student_feature_dim", None),
    (["--kd-teacher-feature-dim"], "kd_teacher_feature_dim", None),
    (["--kd-token-distill-type"], "kd_token_distill_type", "soft"),
)

_READERS = "timm's Hugging Face / TFDS readers; here WebDataset shards, image folders and torchvision sets"
_LAUNCH = "Accelerate places and launches the processes (accelerate launch, accelerate config)"
_EXACT = "a run resumes exactly from its saved state (epoch, batch, step, data order)"
_SCHEDULED = "timm's scheduled-resolution loader (map-style sets); not built for the streams here"
_NAFLEX = "timm's NaFlex variable-resolution loader; not built"
_KD = "knowledge distillation (timm's distillation tasks); not built"

NOT_SUPPORTED: dict[str, str] = {
    "data": "the positional data folder, deprecated in timm; use --data-dir",
    "input_img_mode": _READERS, "input_key": _READERS, "target_key": _READERS, "dataset_trust_remote_code": _READERS,
    "fuser": "TorchScript; use --torchcompile", "torchscript": "TorchScript; use --torchcompile",
    "fast_norm": "timm's experimental fused norm layers; not wired",
    "torchcompile_mode": "--torchcompile takes the backend; the mode is torch.compile's default",
    "device": _LAUNCH, "device_modules": _LAUNCH, "local_rank": _LAUNCH, "no_ddp_bb": _LAUNCH,
    "synchronize_step": _LAUNCH,
    "model_dtype": "the weights stay float32; lower precision is autocast (--amp, --mixed-precision)",
    "epoch_repeats": _EXACT, "start_epoch": _EXACT,
    "aug_repeats": "the repeated-augmentation sampler of map-style sets; each process streams its own share here",
    "drop_connect": "deprecated in timm and passed nowhere by its train.py; use --drop-path",
    "dist_bn": "batch norm statistics are not reduced across processes after an epoch; not built",
    "split_bn": "split batch norm (one per augmentation split); not built",
    "model_ema_force_cpu": "the EMA lives on the training device",
    "worker_seeding": "each loader worker is seeded from --seed, the epoch and its share (exact resume)",
    "val_interval": "validation runs every epoch (it chooses the best epoch and drives the plateau scheduler)",
    "recovery_interval": "--checkpoint-interval (steps) and --checkpoint-minutes save resumable states",
    "save_images": "a debugging switch; not built",
    "no_prefetcher": "there is no GPU prefetcher: the loader workers run the whole transform, as timm's "
                     "--no-prefetcher does (the transform parity tests compare against that path)",
    "tta": "test-time augmentation at validation; not built",
    "use_multi_epochs_loader": "the epoch streams are built per epoch; not built",
    **{k: _SCHEDULED for k in ("train_img_sizes", "train_batch_sizes", "train_size_probs", "train_size_schedule",
                               "train_size_schedule_spread", "train_size_random_mix", "train_batches_per_epoch",
                               "variable_batch_loss_scale")},
    **{k: _NAFLEX for k in ("naflex_loader", "naflex_train_seq_lens", "naflex_max_seq_len", "naflex_patch_sizes",
                            "naflex_patch_size_probs", "naflex_loss_scale", "naflex_patchify_channels_first")},
    **{k: _KD for k in ("kd_model_name", "kd_distill_type", "kd_loss_type", "distill_loss_weight", "task_loss_weight",
                        "kd_temperature", "kd_student_feature_dim", "kd_teacher_feature_dim",
                        "kd_token_distill_type")},
}

DIFFERS: dict[str, str] = {
    "config": "a timm args.yaml is read too: keys train_fcl.py lacks are ignored (one warning) when they hold timm's "
              "default, refused when they ask for what is not built",
    "dataset": "wds/NAME reads local shards with their _info.json (counted, exact per-process shares); torch/NAME "
               "and image folders as timm; hfds/ and tfds/ are not read",
    "val_split": "never replaced by the test split when missing; --val-holdout N carves a validation split instead",
    "train_num_samples": "a check: the splits are counted, so the flag must equal the count",
    "val_num_samples": "a check: the splits are counted, so the flag must equal the count",
    "class_map": "image folders only, and a .txt file only (a pickled map is never read)",
    "resume": "a saved state folder, or a run folder (its newest state); the same command with the same --output "
              "resumes by itself",
    "initial_checkpoint": "weights loaded without running pickled code (safetensors; a pickle is refused)",
    "torchcompile": "compiles forward_features and forward_head, the two calls the FCL step makes",
    "amp": "bf16 autocast on a CPU; the launch config's precision when it names one; --mixed-precision wins",
    "amp_dtype": "default: the launch config's, else float16 on a GPU (timm's), bfloat16 on a CPU",
    "sync_bn": "several processes on GPUs; refused on CPUs, where torch has no synchronized batch norm",
    "seed": "the same seed on every process (each one's data share derives from it); timm adds the rank",
    "checkpoint_hist": "the N best epochs kept as exports (safetensors + config.json), not pickled checkpoints; the "
                       "resume states have --state-hist",
    "workers": "default 2",
    "output": "--output alone is the run folder itself; with --experiment, the folder it is made in (timm's)",
    "log_wandb": "a one-line error when wandb is missing (timm warns and trains on)",
}


def status(dest: str) -> str:
    return "not supported" if dest in NOT_SUPPORTED else "differs" if dest in DIFFERS else "supported"


def timm_default(dest: str) -> Any:
    return next(default for _, d, default in TIMM_TRAIN_FLAGS if d == dest)


def timm_dests() -> set[str]:
    return {dest for _, dest, _ in TIMM_TRAIN_FLAGS}


def markdown_table() -> str:
    """docs/timm-compat.md's table: every flag of timm's train.py, its status here, and why where it is not plainly
    supported."""
    lines = ["| timm train.py flag | here | why |", "| --- | --- | --- |"]
    for options, dest, _ in TIMM_TRAIN_FLAGS:
        lines.append(f"| `{' / '.join(options)}` | {status(dest)} | {NOT_SUPPORTED.get(dest) or DIFFERS.get(dest, '')} |")
    return "\n".join(lines)


def _holds_default(value: Any, default: Any) -> bool:
    """YAML's value is timm's default (a tuple default reads back as a list)."""
    if isinstance(default, tuple):
        default = list(default)
    return value == default


def sort_config_keys(values: dict, known: set[str]) -> tuple[dict, list[str], list[str]]:
    """A config's keys (dests) as (applied, ignored, refused): the keys train_fcl.py has are applied; the other keys of
    timm's train.py are ignored when they hold timm's default and refused ('KEY: VALUE (why)') when they ask for
    something; keys neither knows are refused ('KEY (unknown)')."""
    timm = {dest: default for _, dest, default in TIMM_TRAIN_FLAGS}
    applied, ignored, refused = {}, [], []
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest in known:
            applied[dest] = value
        elif dest in timm and _holds_default(value, timm[dest]):
            ignored.append(dest)
        elif dest in timm:
            refused.append(f"{key}: {value!r} ({NOT_SUPPORTED.get(dest, 'not built')})")
        else:
            refused.append(f"{key} (unknown)")
    return applied, ignored, refused
