"""timm train.py's recipe flags in train_fcl.py, each checked by what it does to the run: the lr --lr-base resolves
to, the optimizer's layer-wise lr scales and extra arguments, --sched none / wsd, gradient checkpointing and synchronized
batch norm, timm's BCE loss, --amp-dtype, --class-map on an image folder, the split size checks, -vb, --no-resume-opt,
-c and the Weights & Biases settings handed to the trackers."""
from __future__ import annotations

import functools
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

import timm_fcl  # noqa: F401  (registers resnet20_cifar, lenet5_mnist)
from train_helpers import build_in_process, parse_train, TOY_RUN, run, train_cmd

# the flags every test here starts from
_args = functools.partial(parse_train, "--model", "resnet18", "--num-classes", "10")

TOY = [*TOY_RUN, "--workers", "0"]
_at = TOY_RUN.index("--lr")
TOY_NO_LR = [*TOY_RUN[:_at], *TOY_RUN[_at + 2:], "--workers", "0"]  # --lr-base decides


@pytest.fixture
def build(toy, tmp_path, fresh_accelerate):
    """build(*flags, base=TOY, output=None) -> (args, accelerator, data, run): train_fcl's data and training built in
    this process on the toy shards, as a run starts."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from train_fcl import parse_args

    def _build(*argv: str, base=TOY, output=None):
        AcceleratorState._reset_state(True)
        out = Path(output or tmp_path / "run")
        args = parse_args([*base, "--data-dir", str(toy), "--output", str(out), *argv])
        accelerator = Accelerator(cpu=True)
        data, _, run = build_in_process(args, accelerator, out)
        return args, accelerator, data, run
    return _build


def _group_of(optimizer, param: torch.nn.Parameter) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


# ------------------------------------------------------------------------------------------------ --lr-base scaling
# timm's train.py: lr = lr_base * global_batch / lr_base_size, the ratio square-rooted for --lr-base-scale sqrt (by
# default for optimizers whose name holds 'ada' or 'lamb'); the global batch is -b x processes x --grad-accum-steps.
# The expected values are worked out by hand here.
@pytest.mark.parametrize("flags, expected", [
    (["--opt", "sgd", "--lr-base", "0.1", "-b", "32"], 0.1 * 32 / 256),                     # linear: 0.0125
    (["--opt", "adamw", "--lr-base", "0.004", "-b", "64"], 0.004 * 0.5),                   # sqrt(64/256) = 0.5
    (["--opt", "lamb", "--lr-base", "0.004", "-b", "64"], 0.004 * 0.5),                    # sqrt
    (["--opt", "adamw", "--lr-base", "0.004", "-b", "64", "--lr-base-scale", "linear"], 0.004 * 0.25),
    (["--opt", "sgd", "--lr-base", "0.004", "-b", "64", "--lr-base-scale", "sqrt"], 0.004 * 0.5),
    (["--opt", "sgd", "--lr-base", "0.1", "-b", "32", "--grad-accum-steps", "2"], 0.1 * 64 / 256),  # 0.025
    (["--opt", "adamw", "--lr-base", "0.004", "-b", "16", "--lr-base-size", "64"], 0.004 * 0.5),
    (["--opt", "sgd", "--lr-base", "0.1", "-b", "32", "--lr", "0.3"], 0.3),                 # --lr wins
])
def test_lr_base_scales_with_the_global_batch_as_timm_and_reaches_the_optimizer(build, flags, expected):
    args, _, _, run = build(*flags, base=TOY_NO_LR)
    assert run.lr == pytest.approx(expected, rel=1e-12)
    run.scheduler.step(0)  # --sched step --warmup-epochs 0: epoch 0 trains at the run's lr
    assert [g["lr"] for g in run.optimizer.param_groups] == pytest.approx([expected] * len(run.optimizer.param_groups))
    assert run.optimizer.defaults["lr"] == pytest.approx(expected)


def test_lr_base_counts_every_process_in_the_global_batch():
    from timm_fcl.training.flags import resolve_lr
    assert resolve_lr(_args("--lr-base", "0.1", "-b", "32"), world_size=4)[0] == pytest.approx(0.1 * 128 / 256)
    assert resolve_lr(_args("--opt", "adamw", "--lr-base", "0.004", "-b", "16"), world_size=4)[0] == \
        pytest.approx(0.004 * 0.5)
    lr, how = resolve_lr(_args("--lr-base", "0.1", "-b", "32", "--grad-accum-steps", "3"), world_size=2)
    assert lr == pytest.approx(0.1 * 192 / 256) and "192" in how and "linear" in how


def test_a_run_without_lr_logs_and_records_the_scaled_lr(toy, tmp_path):
    out = tmp_path / "adamw"
    proc = run(train_cmd(*TOY_NO_LR, "--data-dir", str(toy), "--output", str(out), "--opt", "adamw",
                         "--lr-base", "0.004", "-b", "16", "--train-subset", "16", "--val-subset", "16",
                         "--epochs", "1", "--method", "xe"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learning rate 0.001," in proc.stderr, proc.stderr[-3000:]  # 0.004 x sqrt(16 / 256)
    resolved = yaml.safe_load((out / "resolved.yaml").read_text())
    assert resolved["lr"] == pytest.approx(0.001, rel=1e-12) and resolved["global_batch"] == 16


# --------------------------------------------------------------------------------------- optimizer: layer decay, kwargs
def test_layer_decay_scales_the_lr_from_the_classifier_down_to_the_stem(build):
    _, _, _, run = build("--layer-decay", "0.5")
    opt, model = run.optimizer, run.bare
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[0] < 0.01
    run.scheduler.step(0)
    stem, head = _group_of(opt, model.conv1.weight), _group_of(opt, model.fc.weight)
    assert head["lr"] == pytest.approx(run.lr) and head["lr_scale"] == 1.0
    assert stem["lr"] < head["lr"] and stem["lr"] == pytest.approx(run.lr * stem["lr_scale"])
    assert stem["lr_scale"] == scales[0]
    later = _group_of(opt, model.layer4[0].conv1.weight)  # deeper layers decay less
    assert stem["lr"] < later["lr"] < head["lr"]
    _, _, _, plain = build()
    assert {g.get("lr_scale", 1.0) for g in plain.optimizer.param_groups} == {1.0}


def test_opt_kwargs_reach_the_optimizer(build):
    for flags, amsgrad in ((["--opt-kwargs", "amsgrad=True"], True), ([], False)):
        _, _, _, run = build("--opt", "adamw", *flags)
        assert isinstance(run.optimizer.optimizer, torch.optim.AdamW)
        assert [g["amsgrad"] for g in run.optimizer.param_groups] == [amsgrad] * len(run.optimizer.param_groups)
        p = run.bare.fc.weight
        for q in run.bare.parameters():
            q.grad = torch.ones_like(q)
        run.optimizer.step()
        assert ("max_exp_avg_sq" in run.optimizer.state[p]) == amsgrad  # AdamW's amsgrad state, only when asked


# ---------------------------------------------------------------------------------------------------- schedulers
def test_sched_none_keeps_the_lr_at_lr(build):
    from timm_fcl.training.build import NoSchedule
    _, _, _, run = build("--sched", "none", "--epochs", "3", "--warmup-epochs", "2", "--min-lr", "0.001")
    assert isinstance(run.scheduler, NoSchedule) and run.num_epochs == 3
    for epoch in range(4):
        run.scheduler.step(epoch, metric=1.0)
        run.scheduler.step_update(num_updates=epoch * 12)
        assert [g["lr"] for g in run.optimizer.param_groups] == [0.05] * len(run.optimizer.param_groups)


def test_sched_wsd_is_timms_warmup_stable_decay_schedule(build):
    from timm.scheduler import WSDLRScheduler
    from timm_fcl.training.flags import ConfigError
    _, _, _, run = build("--sched", "wsd", "--epochs", "10", "--decay-epochs", "0.5")
    assert isinstance(run.scheduler, WSDLRScheduler) and run.num_epochs == 10
    lrs = []
    for epoch in range(11):
        run.scheduler.step(epoch)
        lrs.append(run.optimizer.param_groups[0]["lr"])
    assert lrs[:6] == pytest.approx([0.05] * 6)  # stable over the first half
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:])) and 0 < lrs[9] < 0.05 and lrs[10] == 0.0  # then decays
    with pytest.raises(ConfigError, match="--sched wsd"):  # timm's --decay-epochs 90 does not fit 10 epochs
        build("--sched", "wsd", "--epochs", "10")


# ------------------------------------------------------------------------------------------ checkpointing, sync-bn
def _fcl_step_grads(checkpointing: bool, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, int]:
    """The gradients of one FCL training step of a seeded resnet18 (and how often its first block ran)."""
    import timm
    from timm_fcl import FCLConfig, FeatureContrastiveRegularizer
    from timm_fcl.training.build import build_loss, prepare_model

    args = _args(*(["--grad-checkpointing"] if checkpointing else []), "--smoothing", "0")
    torch.manual_seed(0)
    model = prepare_model(args, timm.create_model("resnet18", num_classes=10), world_size=1, device_type="cpu")
    assert getattr(model, "grad_checkpointing", False) is checkpointing
    calls = []
    model.layer1[0].register_forward_pre_hook(lambda *_: calls.append(1))
    loss_fn, label_loss_fn = build_loss(args)
    reg = FeatureContrastiveRegularizer(model, FCLConfig(method="fcl", k=64, sigma=0.5, weight=0.5), loss_fn=loss_fn,
                                        label_loss_fn=label_loss_fn).train()
    out = reg(x, y, generator=torch.Generator().manual_seed(3))
    assert out.fcl.abs() > 0  # the FCL term is part of the loss
    params = [p for p in reg.parameters() if p.requires_grad]
    out.loss.backward(inputs=params)
    return {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)


def test_grad_checkpointing_recomputes_and_gives_the_same_gradients():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.arange(8) % 10
    plain, plain_calls = _fcl_step_grads(False, x, y)
    ckpt, ckpt_calls = _fcl_step_grads(True, x, y)
    assert ckpt_calls > plain_calls  # the backward ran the blocks' forward again
    assert plain.keys() == ckpt.keys()
    assert all(torch.allclose(plain[k], ckpt[k], rtol=1e-4, atol=1e-7) for k in plain), \
        max((plain[k] - ckpt[k]).abs().max().item() for k in plain)
    assert any(plain[k].abs().max() > 0 for k in plain)


def test_grad_checkpointing_is_refused_for_a_model_without_it():
    import timm
    from timm_fcl.training.build import prepare_model
    from timm_fcl.training.flags import ConfigError
    args = _args("--model", "resnet20_cifar", "--grad-checkpointing")
    with pytest.raises(ConfigError, match="resnet20_cifar does not support gradient checkpointing"):
        prepare_model(args, timm.create_model("resnet20_cifar", num_classes=10), world_size=1, device_type="cpu")


def test_sync_bn_converts_batch_norm_for_several_gpu_processes_only():
    import timm
    from timm_fcl.training.build import prepare_model
    from timm_fcl.training.flags import ConfigError
    args = _args("--sync-bn")
    model = timm.create_model("resnet18", num_classes=10)
    n_bn = sum(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    weight = model.bn1.weight.detach().clone()
    synced = prepare_model(args, model, world_size=2, device_type="cuda")
    assert sum(type(m) is torch.nn.SyncBatchNorm for m in synced.modules()) == n_bn > 0
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert torch.equal(synced.bn1.weight, weight)  # the same parameters, now synchronized
    alone = prepare_model(args, timm.create_model("resnet18", num_classes=10), world_size=1, device_type="cuda")
    assert sum(type(m) is torch.nn.BatchNorm2d for m in alone.modules()) == n_bn
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in alone.modules())
    with pytest.raises(ConfigError, match="--sync-bn needs GPUs"):
        prepare_model(args, timm.create_model("resnet18", num_classes=10), world_size=2, device_type="cpu")


# ---------------------------------------------------------------------------------------------------- BCE loss
def _bce_by_hand(logits: torch.Tensor, y: torch.Tensor, *, smoothing: float, thresh=None, pos_weight: float = 1.0,
                 sum_classes: bool = False) -> torch.Tensor:
    """timm's BinaryCrossEntropy written out: one-hot targets smoothed to (1 - s + s/C, s/C), binarized above the
    threshold, then -(w t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))), averaged (or summed over classes)."""
    n, c = logits.shape
    target = torch.full((n, c), smoothing / c, dtype=logits.dtype)
    target[torch.arange(n), y] = 1 - smoothing + smoothing / c
    if thresh is not None:
        target = (target > thresh).to(logits.dtype)
    per = -(pos_weight * target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits))
    return per.sum(1).mean() if sum_classes else per.mean()


def test_bce_loss_is_timms_bce_with_smoothing_threshold_and_pos_weight():
    from timm_fcl.training.build import build_loss
    from timm_fcl.training.checks import check_timm_flags
    from timm_fcl.training.flags import ConfigError
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3, torch.arange(8) % 10
    cases = [
        (["--smoothing", "0.1", "--bce-target-thresh", "0.2", "--bce-pos-weight", "2"],
         dict(smoothing=0.1, thresh=0.2, pos_weight=2.0)),
        (["--smoothing", "0.1", "--bce-pos-weight", "2"], dict(smoothing=0.1, pos_weight=2.0)),
        (["--smoothing", "0.3"], dict(smoothing=0.3)),
        (["--smoothing", "0.1", "--bce-sum", "--bce-pos-weight", "0.5"],
         dict(smoothing=0.1, pos_weight=0.5, sum_classes=True)),
    ]
    values = []
    for flags, hand in cases:
        loss, label_loss = build_loss(_args("--bce-loss", *flags))
        expected = _bce_by_hand(logits, y, **hand)
        for fn in (loss, label_loss):
            assert torch.allclose(fn(logits, y), expected, rtol=1e-12), flags
        values.append(expected.item())
    assert len(set(values)) == len(values)  # the threshold, the pos weight and the smoothing each change the loss
    with pytest.raises(ConfigError, match="--bce-loss and --jsd-loss"):
        check_timm_flags(_args("--bce-loss", "--jsd-loss", "--aug-splits", "2"))


# ------------------------------------------------------------------------------------------------------- --amp-dtype
def test_amp_dtype_names_the_mixed_precision(tmp_path, monkeypatch, fresh_accelerate):
    from timm_fcl.training.build import setup
    from timm_fcl.training.checks import check_timm_flags, resolve_mixed_precision
    from timm_fcl.training.flags import ConfigError
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision(_args("--amp", "--amp-dtype", "bfloat16"), "cuda") == "bf16"
    assert resolve_mixed_precision(_args("--amp", "--amp-dtype", "float16"), "cuda") == "fp16"
    assert resolve_mixed_precision(_args("--amp", "--amp-dtype", "float16", "--mixed-precision", "fp16"),
                                   "cuda") == "fp16"
    assert resolve_mixed_precision(_args("--amp-dtype", "bfloat16"), "cuda") is None  # without --amp: no autocast
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_mixed_precision(_args("--amp", "--amp-dtype", "bfloat16"), "cuda") == "bf16"  # the flag names it
    with pytest.raises(ConfigError, match="--amp-dtype bfloat16 contradicts --mixed-precision fp16"):
        check_timm_flags(_args("--amp", "--amp-dtype", "bfloat16", "--mixed-precision", "fp16"))
    check_timm_flags(_args("--amp", "--amp-dtype", "float16", "--mixed-precision", "fp16"))

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    accelerator, _ = setup(_args("--amp", "--amp-dtype", "bfloat16", "--data-dir", str(tmp_path),
                                 "--output", str(tmp_path / "amp")))
    assert accelerator.mixed_precision == "bf16"
    with accelerator.autocast():
        assert torch.nn.Linear(4, 4)(torch.rand(2, 4)).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):  # float16 autocast on the CPU: refused
        setup(_args("--amp", "--amp-dtype", "float16", "--data-dir", str(tmp_path), "--output", str(tmp_path / "h")))


# ------------------------------------------------------------------------------------------------------- --class-map
def _image_folder(root: Path) -> Path:
    """train/ and validation/ with classes a, b, c: two 16 px PNGs each, coloured by class."""
    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    for split in ("train", "validation"):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), colour).save(root / split / name / f"{i}.png")
    return root


def _labels_by_class(source) -> dict:
    seen = {}
    for i in range(len(source)):
        _, label = source.load(i)
        seen.setdefault(Path(source.dataset.filename(i)).parent.name, set()).add(label)
    return seen


def test_class_map_numbers_an_image_folders_classes(tmp_path, fresh_accelerate):
    from accelerate import Accelerator
    from train_fcl import parse_args
    from timm_fcl.data import DataError, create_source
    from timm_fcl.training.build import build_data, build_run_model, open_sources
    from timm_fcl.training.checks import check_timm_flags
    from timm_fcl.training.flags import ConfigError
    root = _image_folder(tmp_path / "images")
    class_map = tmp_path / "classes.txt"
    class_map.write_text("c\na\nb\n")
    assert _labels_by_class(create_source("", str(root), "train")) == {"a": {0}, "b": {1}, "c": {2}}
    for split in ("train", "validation"):
        assert _labels_by_class(create_source("", str(root), split, class_map=str(class_map))) == \
            {"c": {0}, "a": {1}, "b": {2}}

    args = parse_args(["--model", "resnet18", "--img-size", "16", "--workers", "0", "-b", "2", "--data-dir", str(root),
                       "--output", str(tmp_path / "run"), "--class-map", str(class_map)])
    check_timm_flags(args)
    accelerator = Accelerator(cpu=True)
    sources = open_sources(args, accelerator, tmp_path / "run")
    model, data_config = build_run_model(args, sources)
    data = build_data(args, accelerator, sources, data_config, model.num_classes)
    assert data.class_names == ["c", "a", "b"] and data.num_classes == 3 and model.num_classes == 3
    assert _labels_by_class(data.train.source) == {"c": {0}, "a": {1}, "b": {2}}
    blue = next(i for i in range(len(data.val.source)) if data.val.source.load(i)[1] == 0)
    assert np.array(data.val.source.load(blue)[0])[0, 0].tolist() == [0, 0, 255]  # class 0 is c's blue images

    with pytest.raises(ConfigError, match="pickled map is never read"):
        check_timm_flags(_args("--class-map", str(tmp_path / "classes.pkl")))
    with pytest.raises(ConfigError, match="wds/toy gives its own labels"):
        check_timm_flags(_args("--dataset", "wds/toy", "--class-map", str(class_map)))
    with pytest.raises(DataError, match="--class-map .*missing.txt"):  # one line, not timm's AssertionError
        create_source("", str(root), "train", class_map=str(tmp_path / "missing.txt"))


# ----------------------------------------------------------------------------------------- split sizes, -vb
def test_num_samples_flags_check_the_split_sizes(build):
    from timm_fcl.data import DataError
    build("--train-num-samples", "192", "--val-num-samples", "64")
    with pytest.raises(DataError, match=r"--train-num-samples 191: the split holds 192 samples"):
        build("--train-num-samples", "191")
    with pytest.raises(DataError, match=r"--val-num-samples 65: the split holds 64 samples"):
        build("--val-num-samples", "65")


def test_validation_batch_size_sets_the_validation_batches_only(build):
    _, _, data, _ = build("-b", "16", "-vb", "32")
    assert len(data.val) == 2 and [len(y) for _, y in data.val_loader] == [32, 32]
    x, y = next(iter(data.train_loader))
    assert x.shape[0] == len(y) == 16 and len(data.train) == 12
    _, _, data, _ = build("-b", "16")
    assert len(data.val) == 4  # without -vb, validation batches are -b


# ------------------------------------------------------------------------------------------------------ --no-resume-opt
def test_no_resume_opt_resumes_the_weights_but_not_the_optimizer(build, tmp_path):
    import train_fcl
    from timm_fcl.training.resume import previous_run, resume_or_start
    out = tmp_path / "resume"
    out.mkdir()  # main's lock_output makes it
    common = ["--opt", "momentum", "--momentum", "0.9", "-b", "16", "--train-subset", "32", "--val-subset", "16",
              "--method", "xe", "--checkpoint-hist", "0"]

    def start(*argv):
        args, accelerator, data, run = build(*common, *argv, output=out)
        resume_or_start(args, accelerator, run, data, previous_run(args, out))
        return args, accelerator, data, run

    args, accelerator, data, run = start("--epochs", "1")
    train = train_fcl.train_one_epoch(args, accelerator, run, data)
    train_fcl.end_of_epoch(args, accelerator, run, data, train, data.train.skipped())
    weights = {k: v.clone() for k, v in run.bare.state_dict().items()}
    buffers = [run.optimizer.state[p]["momentum_buffer"].clone() for p in run.bare.parameters()]
    assert run.progress.step == 2 and all(b.abs().sum() > 0 for b in buffers[-2:])

    for argv, restored in ((["--no-resume-opt"], False), ([], True)):
        _, _, _, again = start("--epochs", "2", *argv)
        assert again.progress.epoch == 1 and again.progress.step == 2, argv
        state = again.bare.state_dict()
        assert all(torch.equal(state[k], weights[k]) for k in weights), argv  # the saved weights
        if restored:
            assert all(torch.equal(again.optimizer.state[p]["momentum_buffer"], b)
                       for p, b in zip(again.bare.parameters(), buffers))
        else:
            assert not any("momentum_buffer" in again.optimizer.state.get(p, {}) for p in again.bare.parameters())


# ----------------------------------------------------------------------------------------------- -c, W&B settings
def test_short_c_reads_the_config_as_config_does(tmp_path):
    from timm_fcl.training.flags import resolve_lr
    config = tmp_path / "recipe.yaml"
    config.write_text("opt: adamw\nlr_base: 0.004\nbatch-size: 64\nlayer_decay: 0.75\n")
    short, long = _args("-c", str(config)), _args("--config", str(config))
    assert vars(short) == vars(long)
    assert short.opt == "adamw" and short.layer_decay == 0.75 and short.batch_size == 64
    assert resolve_lr(short, 1)[0] == pytest.approx(0.004 * 0.5)  # sqrt(64 / 256)
    assert resolve_lr(_args("-c", str(config), "--opt", "sgd"), 1)[0] == pytest.approx(0.004 * 0.25)  # flag wins


def test_wandb_flags_reach_init_trackers(tmp_path):
    from timm_fcl.training.checks import check_timm_flags
    from timm_fcl.training.flags import ConfigError
    from timm_fcl.training.resume import start_trackers
    calls = []
    fake = types.SimpleNamespace(init_trackers=lambda project, config=None, init_kwargs=None: calls.append(
        (project, config, init_kwargs)))
    out = tmp_path / "my-run"
    start_trackers(_args("--log-wandb", "--wandb-project", "P", "--wandb-tags", "a", "b", "--wandb-resume-id", "X"),
                   fake, out, {"lr": 0.1})
    project, config, init_kwargs = calls[-1]
    assert project == "P"
    assert init_kwargs == {"wandb": {"name": "my-run", "dir": str(out), "tags": ["a", "b"], "id": "X",
                                     "resume": "must"}}
    assert config["resolved.lr"] == 0.1 and config["wandb_project"] == "P"
    start_trackers(_args("--log-wandb", "--experiment", "E"), fake, out, {})
    assert calls[-1][0] == "E" and calls[-1][2] == {"wandb": {"name": "my-run", "dir": str(out), "tags": None}}
    start_trackers(_args(), fake, out, {})
    assert calls[-1][0] == "timm-fcl"
    with pytest.raises(ConfigError, match="--wandb-resume-id needs --log-wandb"):
        check_timm_flags(_args("--wandb-resume-id", "X"))


def test_an_image_folders_validation_classes_follow_the_training_numbering(tmp_path, fresh_accelerate, caplog):
    """An image folder whose validation/ lacks one class shifted every later label (timm numbers each folder's own
    classes): validation is now numbered as training, and the empty class is named."""
    import logging
    import shutil

    from accelerate import Accelerator
    from timm_fcl.training.build import open_sources
    root = _image_folder(tmp_path / "images")
    shutil.rmtree(root / "validation" / "a")
    args = _args("--img-size", "16", "--workers", "0", "-b", "2", "--data-dir", str(root),
                 "--output", str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="timm_fcl.training.build"):
        sources = open_sources(args, Accelerator(cpu=True), tmp_path / "run")
    assert _labels_by_class(sources.train) == {"a": {0}, "b": {1}, "c": {2}}
    assert _labels_by_class(sources.val) == {"b": {1}, "c": {2}}  # not b -> 0, c -> 1
    assert any("has no image of 1 class(es) of the training split: a" in r.getMessage() for r in caplog.records)
