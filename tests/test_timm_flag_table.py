"""docs/timm-compat.md's table of timm train.py's flags is this package's, and every flag it marks supported (or
differing) reaches what it names: a run is built in-process with the flag set away from its default, and the value is
found where timm's train.py hands it (timm.create_model, the data config, create_transform, the optimizer and scheduler
factories, Mixup, the loss, the streams, the model), or a named test passes the flag (in its own source, or a
constant or fixture of its module that it names) and checks its effect on a run."""
from __future__ import annotations

import ast
import functools
import math
from pathlib import Path

import pytest
import torch

import timm_fcl  # noqa: F401
from train_helpers import ROOT, build_in_process

TESTS = Path(__file__).parent

# flags whose effect shows in a run, not in what one build hands the libraries: the test that checks each
BY_TEST = {
    "config": "test_timm_flag_table.py::test_timms_args_yaml_is_a_config",
    "data_dir": "test_validation_split.py::test_val_holdout_carves_a_fixed_validation_split_disjoint_from_training",
    "val_split": "test_validation_split.py::test_the_test_split_named_is_used_and_the_run_folder_says_so",
    "pretrained": "test_finetune.py::test_matching_classes_keep_the_exports_classifier_and_logits",
    "pretrained_path": "test_finetune.py::test_the_exports_data_config_is_the_runs_unless_flags_override_it",
    "initial_checkpoint": "test_train_fcl.py::test_bad_inputs_give_one_error_line_and_keep_what_was_saved",
    "resume": "test_run_ownership.py::test_resuming_another_runs_state_into_an_existing_run_is_refused",
    "torchcompile": "test_train_fcl.py::test_cheaper_mode_and_compile_flags_reach_the_regularizer",
    "amp": "test_timm_flags.py::test_amp_is_bf16_autocast_on_cpu_and_clip_modes_clip",
    "clip_grad": "test_timm_flags.py::test_amp_is_bf16_autocast_on_cpu_and_clip_modes_clip",
    "clip_mode": "test_timm_flags.py::test_amp_is_bf16_autocast_on_cpu_and_clip_modes_clip",
    "log_interval": "test_timm_flags.py::test_augmix_jsd_and_fcl_train_20_steps_with_finite_decreasing_loss",
    "checkpoint_hist": "test_timm_flags.py::test_checkpoint_hist_keeps_the_best_epochs_across_a_resume",
    "output": "test_timm_flags.py::test_experiment_names_the_run_folder_as_timm_does",
    "experiment": "test_timm_flags.py::test_experiment_names_the_run_folder_as_timm_does",
    "eval_metric": "test_timm_flags.py::test_eval_metric_keeps_the_best_epoch_in_model_best",
    "log_wandb": "test_timm_flags.py::test_log_wandb_without_wandb_is_one_line",
    "dataset_download": "test_timm_flag_table.py::test_dataset_download_reaches_torchvision",
    "train_num_samples": "test_recipe_flags.py::test_num_samples_flags_check_the_split_sizes",
    "val_num_samples": "test_recipe_flags.py::test_num_samples_flags_check_the_split_sizes",
    "class_map": "test_recipe_flags.py::test_class_map_numbers_an_image_folders_classes",
    "no_resume_opt": "test_recipe_flags.py::test_no_resume_opt_resumes_the_weights_but_not_the_optimizer",
    "amp_dtype": "test_recipe_flags.py::test_amp_dtype_names_the_mixed_precision",
    "sync_bn": "test_recipe_flags.py::test_sync_bn_converts_batch_norm_for_several_gpu_processes_only",
    "wandb_project": "test_recipe_flags.py::test_wandb_flags_reach_init_trackers",
    "wandb_tags": "test_recipe_flags.py::test_wandb_flags_reach_init_trackers",
    "wandb_resume_id": "test_recipe_flags.py::test_wandb_flags_reach_init_trackers",
}


@functools.lru_cache(maxsize=None)
def _test_source(path: Path, name: str) -> str:
    """The source of test ``name`` in ``path`` and of the module-level functions, fixtures and constants it names
    (its flags often sit in a shared argv list or a fixture); empty when there is no such test."""
    if not path.exists():
        return ""
    text = path.read_text()
    top = {}
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    top[target.id] = node
        elif isinstance(node, ast.ImportFrom) and node.module and (path.parent / f"{node.module}.py").exists():
            helper = (path.parent / f"{node.module}.py").read_text()
            for sub in ast.parse(helper).body:  # constants and helpers of the tests' own modules (train_helpers)
                names = [sub.name] if isinstance(sub, (ast.FunctionDef, ast.ClassDef)) else [
                    t.id for t in getattr(sub, "targets", []) if isinstance(t, ast.Name)]
                for key in names:
                    if key in {a.asname or a.name for a in node.names}:
                        top[key] = ast.get_source_segment(helper, sub)
    test = top.get(name)
    if not isinstance(test, ast.FunctionDef) or not name.startswith("test_"):
        return ""
    used = {n.id for n in ast.walk(test) if isinstance(n, ast.Name)} | {a.arg for a in test.args.args}
    return "\n".join(node if isinstance(node, str) else ast.get_source_segment(text, node)
                     for key, node in top.items() if key == name or key in used)


class Spies:
    """What the libraries were handed while a run was built: each factory's keyword arguments, by name."""

    def __init__(self, monkeypatch, drop_from_model: tuple = ()):
        import timm
        import timm.data
        import timm.optim
        import timm.scheduler
        from timm_fcl.training import build

        self.calls: dict[str, list] = {}  # name: [(positional arguments, keyword arguments, result), ...]

        def spy(name, fn, drop=()):
            def wrapped(*args, **kwargs):
                result = fn(*args, **{k: v for k, v in kwargs.items() if k not in drop})
                self.calls.setdefault(name, []).append((args, dict(kwargs), result))
                if hasattr(result, "get_classifier"):  # the classifier as timm made it
                    self.head = result.get_classifier().weight.detach().clone()
                return result
            return wrapped

        monkeypatch.setattr(timm, "create_model", spy("create_model", timm.create_model, drop_from_model))
        monkeypatch.setattr(timm.data, "create_transform", spy("transform", timm.data.create_transform))
        monkeypatch.setattr(timm.data, "Mixup", spy("mixup", timm.data.Mixup))
        monkeypatch.setattr(timm.optim, "create_optimizer_v2", spy("optimizer", timm.optim.create_optimizer_v2))
        monkeypatch.setattr(timm.scheduler, "create_scheduler_v2", spy("scheduler", timm.scheduler.create_scheduler_v2))
        monkeypatch.setattr(build, "make_loader", spy("loader", build.make_loader))
        streams, stream = [], build.EpochStream
        monkeypatch.setattr(build, "EpochStream", lambda *a, **kw: streams.append(kw) or stream(*a, **kw))
        self.streams = streams

    def kwargs(self, name: str, call: int = -1) -> dict:
        return self.calls[name][call][1]


def _build(toy: Path, tmp_path: Path, monkeypatch, argv: list[str], drop_from_model: tuple = ()):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from timm_fcl.training.checks import validate_args
    from train_fcl import get_args_parser, parse_args

    AcceleratorState._reset_state(True)
    spies = Spies(monkeypatch, drop_from_model)
    out = tmp_path / "run"
    args = parse_args(["--dataset", "wds/toy", "--data-dir", str(toy), "--output", str(out), "--no-progress",
                       "--method", "xe", *argv])
    validate_args(args, get_args_parser())
    accelerator = Accelerator(cpu=True)
    data, _, run = build_in_process(args, accelerator, out)
    AcceleratorState._reset_state(True)
    return args, data, run, spies


def _first_conv(model: torch.nn.Module) -> torch.Tensor:
    return next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def _group_sgd(toy, tmp_path, monkeypatch) -> dict:
    """Most flags at once, each away from its default: model, data config, transform, optimizer, scheduler, loss."""
    argv = ["--model", "resnet18", "--num-classes", "10", "--in-chans", "3", "--img-size", "20", "--crop-pct", "0.9",
            "--mean", "0.4", "0.5", "0.6", "--std", "0.2", "0.3", "0.4", "--interpolation", "bilinear",
            "--gp", "max", "--drop", "0.1", "--drop-path", "0.05", "--drop-block", "0.1", "--bn-momentum", "0.2",
            "--bn-eps", "0.001", "--model-kwargs", "zero_init_last=False", "--head-init-scale", "0.5",
            "--head-init-bias", "0.25", "--channels-last", "--grad-checkpointing",
            "--model-ema", "--model-ema-decay", "0.99", "--model-ema-warmup",
            "-b", "8", "-vb", "12", "--workers", "0", "--pin-mem", "--seed", "7", "--grad-accum-steps", "2",
            "--opt", "sgd", "--lr", "0.02", "--momentum", "0.8", "--weight-decay", "0.001", "--layer-decay", "0.7",
            "--layer-decay-min-scale", "0.01", "--layer-decay-no-opt-scale", "0.001", "--opt-kwargs", "dampening=0.0",
            "--sched", "step", "--epochs", "9", "--decay-epochs", "7", "--decay-rate", "0.3", "--decay-milestones",
            "3", "6", "--warmup-epochs", "2", "--warmup-lr", "0.0001", "--warmup-prefix", "--min-lr", "0.000001",
            "--cooldown-epochs", "1", "--patience-epochs", "4", "--lr-noise", "0.5", "--lr-noise-pct", "0.5",
            "--lr-noise-std", "0.9", "--lr-cycle-mul", "1.5", "--lr-cycle-decay", "0.4", "--lr-cycle-limit", "2",
            "--lr-k-decay", "1.2", "--sched-on-updates",
            "--scale", "0.3", "1.0", "--ratio", "0.6", "1.6", "--hflip", "0.3", "--vflip", "0.1", "--color-jitter",
            "0.2", "--color-jitter-prob", "0.7", "--grayscale-prob", "0.1", "--gaussian-blur-prob", "0.05",
            "--aa", "rand-m5", "--reprob", "0.2", "--remode", "const", "--recount", "2", "--resplit",
            "--train-interpolation", "bilinear", "--train-crop-mode", "rrc",
            "--smoothing", "0.2", "--bce-loss", "--bce-sum", "--bce-target-thresh", "0.3", "--bce-pos-weight", "1.5"]
    args, data, run, s = _build(toy, tmp_path, monkeypatch, argv, drop_from_model=("bn_momentum", "bn_eps"))
    m, t, o, sc = s.kwargs("create_model"), s.kwargs("transform", 0), s.kwargs("optimizer"), s.kwargs("scheduler")
    dc, loss, bare = data.data_config, run.reg.loss_fn, run.bare
    created, head_before = s.calls["create_model"][-1][2], s.head
    train, val = s.streams[0], s.streams[1]
    return {
        "model": s.calls["create_model"][-1][0][0] == "resnet18", "num_classes": m["num_classes"] == 10,
        "in_chans": m["in_chans"] == 3, "gp": m["global_pool"] == "max", "drop": m["drop_rate"] == 0.1,
        "drop_path": m["drop_path_rate"] == 0.05, "drop_block": m["drop_block_rate"] == 0.1,
        "bn_momentum": m["bn_momentum"] == 0.2, "bn_eps": m["bn_eps"] == 0.001,
        "model_kwargs": m["zero_init_last"] is False,
        "img_size": tuple(dc["input_size"]) == (3, 20, 20), "crop_pct": dc["crop_pct"] == 0.9,
        "mean": tuple(dc["mean"]) == (0.4, 0.5, 0.6), "std": tuple(dc["std"]) == (0.2, 0.3, 0.4),
        "interpolation": dc["interpolation"] == "bilinear",
        "head_init_scale": created is bare and torch.equal(bare.get_classifier().weight, head_before * 0.5),
        "head_init_bias": bool((bare.get_classifier().bias == 0.25).all()),
        "channels_last": _first_conv(bare).is_contiguous(memory_format=torch.channels_last),
        "grad_checkpointing": bare.grad_checkpointing is True,
        "model_ema": run.ema is not None, "model_ema_decay": run.ema.decay == 0.99,
        "model_ema_warmup": run.ema.use_warmup is True,
        "batch_size": train["batch_size"] == 8, "validation_batch_size": val["batch_size"] == 12,
        "workers": train["num_workers"] == 0 and s.kwargs("loader")["num_workers"] == 0,
        "pin_mem": s.kwargs("loader")["pin_memory"] is True, "seed": train["seed"] == 7,
        "grad_accum_steps": run.updates_per_epoch == math.ceil(len(data.train) / 2),
        "opt": o["opt"] == "sgd", "lr": o["lr"] == 0.02, "momentum": o["momentum"] == 0.8,
        "weight_decay": o["weight_decay"] == 0.001, "layer_decay": o["layer_decay"] == 0.7,
        "layer_decay_min_scale": o["layer_decay_min_scale"] == 0.01,
        "layer_decay_no_opt_scale": o["layer_decay_no_opt_scale"] == 0.001, "opt_kwargs": o["dampening"] == 0.0,
        "sched": sc["sched"] == "step", "epochs": sc["num_epochs"] == 9, "decay_epochs": sc["decay_epochs"] == 7,
        "decay_rate": sc["decay_rate"] == 0.3, "decay_milestones": list(sc["decay_milestones"]) == [3, 6],
        "warmup_epochs": sc["warmup_epochs"] == 2, "warmup_lr": sc["warmup_lr"] == 0.0001,
        "warmup_prefix": sc["warmup_prefix"] is True, "min_lr": sc["min_lr"] == 0.000001,
        "cooldown_epochs": sc["cooldown_epochs"] == 1, "patience_epochs": sc["patience_epochs"] == 4,
        "lr_noise": list(sc["noise"]) == [0.5], "lr_noise_pct": sc["noise_pct"] == 0.5,
        "lr_noise_std": sc["noise_std"] == 0.9, "lr_cycle_mul": sc["cycle_mul"] == 1.5,
        "lr_cycle_decay": sc["cycle_decay"] == 0.4, "lr_cycle_limit": sc["cycle_limit"] == 2,
        "lr_k_decay": sc["k_decay"] == 1.2, "sched_on_updates": sc["step_on_epochs"] is False,
        "scale": list(t["scale"]) == [0.3, 1.0], "ratio": list(t["ratio"]) == [0.6, 1.6], "hflip": t["hflip"] == 0.3,
        "vflip": t["vflip"] == 0.1, "color_jitter": t["color_jitter"] == 0.2,
        "color_jitter_prob": t["color_jitter_prob"] == 0.7, "grayscale_prob": t["grayscale_prob"] == 0.1,
        "gaussian_blur_prob": t["gaussian_blur_prob"] == 0.05, "aa": t["auto_augment"] == "rand-m5",
        "reprob": t["re_prob"] == 0.2, "remode": t["re_mode"] == "const", "recount": t["re_count"] == 2,
        "resplit": t["re_num_splits"] == 2, "train_interpolation": t["interpolation"] == "bilinear",
        "train_crop_mode": t["train_crop_mode"] == "rrc",
        "smoothing": loss.smoothing == 0.2, "bce_loss": type(loss).__name__ == "BinaryCrossEntropy",
        "bce_sum": loss.sum_classes is True, "bce_target_thresh": loss.target_threshold == 0.3,
        "bce_pos_weight": float(loss.pos_weight) == 1.5,
    }


def _group_adamw(toy, tmp_path, monkeypatch) -> dict:
    """The optimizer's own settings and the lr from --lr-base; --input-size and --no-aug."""
    argv = ["--model", "resnet18", "--input-size", "3", "24", "24", "--opt", "adamw", "--opt-eps", "1e-6",
            "--opt-betas", "0.8", "0.95", "--lr-base", "0.2", "--lr-base-size", "512", "--lr-base-scale", "linear",
            "-b", "16", "--no-aug", "--workers", "0", "--train-split", "validation"]
    _, data, _, s = _build(toy, tmp_path, monkeypatch, argv)
    o, t = s.kwargs("optimizer"), s.kwargs("transform", 0)
    return {"opt_eps": o["eps"] == 1e-6, "opt_betas": list(o["betas"]) == [0.8, 0.95],
            "lr_base": o["lr"] == pytest.approx(0.2 * 16 / 512), "lr_base_size": o["lr"] == pytest.approx(0.00625),
            "lr_base_scale": o["lr"] != pytest.approx(0.2 * math.sqrt(16 / 512)),
            "input_size": tuple(data.data_config["input_size"]) == (3, 24, 24), "no_aug": t["no_aug"] is True,
            "train_split": len(data.train.source) == 64 == len(data.val.source),  # the toy's 64 validation images
            "dataset": type(data.train.source).__name__ == "WdsSource"}  # _build's --dataset wds/toy: the shards


def _group_mixup(toy, tmp_path, monkeypatch) -> dict:
    """Mixup / cutmix settings reach timm's Mixup; --mixup-off-epoch turns it off from that epoch."""
    from accelerate import Accelerator
    from timm_fcl.training.steps import training_batch

    argv = ["--model", "resnet18", "--mixup", "0.3", "--cutmix", "0.4", "--cutmix-minmax", "0.2", "0.8",
            "--mixup-prob", "0.9", "--mixup-switch-prob", "0.4", "--mixup-mode", "pair", "--mixup-off-epoch", "2",
            "--workers", "0"]
    args, _, run, s = _build(toy, tmp_path, monkeypatch, argv)
    mx = s.kwargs("mixup")
    x, y = torch.rand(4, 3, 16, 16), torch.arange(4)
    run.progress.epoch = 2
    x2, y2 = training_batch(args, Accelerator(cpu=True), run, x, y)
    return {"mixup": mx["mixup_alpha"] == 0.3, "cutmix": mx["cutmix_alpha"] == 0.4,
            "cutmix_minmax": list(mx["cutmix_minmax"]) == [0.2, 0.8], "mixup_prob": mx["prob"] == 0.9,
            "mixup_switch_prob": mx["switch_prob"] == 0.4, "mixup_mode": mx["mode"] == "pair",
            "mixup_off_epoch": run.mixup.mixup_enabled is False and torch.equal(x2, x)}


def _group_augmix(toy, tmp_path, monkeypatch) -> dict:
    from timm.loss import JsdCrossEntropy

    argv = ["--model", "resnet18", "--aug-splits", "3", "--jsd-loss", "--aa", "augmix-m3-w3", "--workers", "0"]
    _, _, run, s = _build(toy, tmp_path, monkeypatch, argv)
    loss = run.reg.loss_fn
    return {"aug_splits": s.kwargs("transform", 0)["separate"] is True and run.reg.num_splits == 3,
            "jsd_loss": isinstance(loss, JsdCrossEntropy) and loss.num_splits == 3}


@pytest.fixture(scope="module")
def reached(toy, tmp_path_factory) -> dict:
    found = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for group in (_group_sgd, _group_adamw, _group_mixup, _group_augmix):
            found.update(group(toy, tmp_path_factory.mktemp(group.__name__), monkeypatch))
            monkeypatch.undo()
    return found


def test_the_docs_hold_this_packages_flag_table():
    from timm_fcl.training.timm_parity import markdown_table
    assert markdown_table() in (ROOT / "docs" / "timm-compat.md").read_text()


def test_every_flag_marked_supported_is_a_flag_here_and_the_others_are_not():
    from timm_fcl.training.timm_parity import TIMM_TRAIN_FLAGS, status
    from train_fcl import get_args_parser

    ours = {opt for a in get_args_parser()._actions for opt in a.option_strings}
    for options, dest, _ in TIMM_TRAIN_FLAGS:
        here = [o for o in options if o in ours]
        if status(dest) == "not supported":
            assert not here, f"{options} is marked not supported but train_fcl.py has it"
        else:
            assert here == options, f"{options}: train_fcl.py has {here}"


def test_every_supported_flag_reaches_what_it_names(reached):
    from timm_fcl.training.timm_parity import TIMM_TRAIN_FLAGS, status

    by_test = BY_TEST
    missing, failed = [], []
    for options, dest, _ in TIMM_TRAIN_FLAGS:
        if status(dest) == "not supported":
            continue
        if dest in reached:
            if not reached[dest]:
                failed.append(dest)
        elif dest in by_test:
            file, name = by_test[dest].split("::")
            source = _test_source(TESTS / file, name)
            if not source:
                missing.append(f"{dest} (its test {by_test[dest]} does not exist)")
            elif not any(f'"{option}"' in source for option in options):
                missing.append(f"{dest} (its test {by_test[dest]} never passes {' / '.join(options)})")
        else:
            missing.append(dest)
    assert not failed, f"these flags did not reach what they name: {failed}"
    assert not missing, f"no check for: {missing}"


def test_timms_args_yaml_is_a_config(tmp_path, caplog):
    """timm's own args.yaml (written by its train.py: every one of its flags) runs as --config: train_fcl.py's keys
    applied, the others at timm's default ignored with one warning, one asking for something refused in one line."""
    import yaml
    from timm_fcl.training.flags import ConfigError
    from timm_fcl.training.timm_parity import TIMM_TRAIN_FLAGS
    from train_fcl import parse_args

    values = {dest: (list(d) if isinstance(d, tuple) else d) for _, dest, d in TIMM_TRAIN_FLAGS}
    values.update(model="resnet18", epochs=3, aa="rand-m7-mstd0.5-inc1", reprob=0.25, data_dir="x", workers=4)
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(values))
    args = parse_args(["-c", str(path)])
    assert (args.model, args.epochs, args.aa, args.reprob, args.remode, args.workers) == \
        ("resnet18", 3, "rand-m7-mstd0.5-inc1", 0.25, "pixel", 4)
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warnings) == 1 and "kd_model_name" in warnings[0] and "naflex_loader" in warnings[0]
    assert parse_args(["-c", str(path), "--epochs", "5"]).epochs == 5  # the command line wins
    for key, value, said in (("kd_model_name", "resnet50", "knowledge distillation"),
                             ("naflex_loader", True, "NaFlex"), ("not_a_flag", 1, "unknown")):
        path.write_text(yaml.safe_dump({**values, key: value}))
        with pytest.raises(ConfigError, match=f"{key}.*{said}"):
            parse_args(["--config", str(path)])


def test_dataset_download_reaches_torchvision(tmp_path, monkeypatch):
    """--dataset-download lets timm's create_dataset download a torch/ set (nothing is downloaded here): the flag, read
    by train_fcl.py's parser, reaches the sources it opens; without it a missing folder is refused before torchvision
    is asked."""
    import timm.data
    from accelerate import Accelerator
    from timm_fcl.training.build import open_sources
    from train_fcl import parse_args

    seen = []

    def refuse_download(*args, **kwargs):
        seen.append(kwargs["download"])
        raise RuntimeError("no network in tests")

    monkeypatch.setattr(timm.data, "create_dataset", refuse_download)
    for flags in (["--dataset-download"], []):
        args = parse_args(["--model", "resnet18", "--dataset", "torch/cifar10", "--data-dir",
                           str(tmp_path / "absent"), "--output", str(tmp_path / "run"), *flags])
        with pytest.raises(Exception):
            open_sources(args, Accelerator(cpu=True))
    assert seen == [True]
