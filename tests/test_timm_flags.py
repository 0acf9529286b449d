"""timm's train.py flags in train_fcl.py, each checked by what it does: the loss label smoothing gives, the utility of a
mixed batch, the model drop path reaches, AugMix views with JSD and FCL, the FCL weight under gradient accumulation,
run folders, the best epoch's export (the EMA's under --model-ema) and the --checkpoint-hist best epochs, trackers'
hyper-parameters, --amp and --clip-mode."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import timm_fcl  # noqa: F401  (registers lenet5_mnist)
from train_helpers import parse_train, same_weights, ROOT, TOY_RUN, env, run, train_cmd

# the flags every test here starts from
_args = functools.partial(parse_train, "--model", "lenet5_mnist", "--num-classes", "10")

TOY = [*TOY_RUN, "--workers", "0"]


def _lenet(seed: int = 0) -> torch.nn.Module:
    import timm
    torch.manual_seed(seed)
    model = timm.create_model("lenet5_mnist", num_classes=10).double().train()
    with torch.no_grad():
        model.head.bias.copy_(torch.randn(10) * 3)  # far from the uniform prediction, which smoothing leaves alone
    return model


def _regularizer(args, model):
    from timm_fcl.training.build import build_loss
    from timm_fcl import FCLConfig, FeatureContrastiveRegularizer
    loss_fn, label_loss_fn = build_loss(args)
    cfg = FCLConfig(method=args.method, k=64, sigma=0.5, weight=1e-3)
    return FeatureContrastiveRegularizer(model, cfg, loss_fn=loss_fn, num_splits=max(args.aug_splits, 1),
                                         label_loss_fn=label_loss_fn)


# ------------------------------------------------------------------------------------------------ smoothing, mixup
def test_smoothing_default_is_timms_label_smoothing_loss_and_zero_is_plain_cross_entropy():
    from timm.loss import LabelSmoothingCrossEntropy
    x, y = torch.rand(8, 1, 28, 28, dtype=torch.float64), torch.arange(8) % 10
    for argv, reference in (([], LabelSmoothingCrossEntropy(0.1)), (["--smoothing", "0.3"],
                            LabelSmoothingCrossEntropy(0.3)), (["--smoothing", "0"], F.cross_entropy)):
        out = _regularizer(_args("--method", "xe", *argv), _lenet())(x, y)
        expected = reference(_lenet()(x), y)
        assert torch.allclose(out.ce, expected, rtol=1e-12), argv
        print(argv or "default", f"ce {out.ce.item():.6f} reference {expected.item():.6f}")
    smoothed = _regularizer(_args("--method", "xe"), _lenet())(x, y).ce
    assert abs(smoothed - F.cross_entropy(_lenet()(x), y)) > 0.01  # the default is not plain cross-entropy


def test_mixup_batch_utility_is_the_finite_difference_gradient_of_the_soft_target_loss(monkeypatch):
    import timm_fcl.regularizer as regularizer
    from timm.loss import SoftTargetCrossEntropy
    from timm_fcl.training.build import Progress, build_mixup
    from timm_fcl.training.steps import training_batch

    args = _args("--mixup", "0.8", "--cutmix", "1.0", "--mixup-switch-prob", "0.5")
    run = types.SimpleNamespace(mixup=build_mixup(args, 10), progress=Progress())
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), process_index=0)
    x0, y0 = torch.rand(9, 1, 28, 28, dtype=torch.float64), torch.arange(9) % 10
    x, y = training_batch(args, accelerator, run, x0.clone(), y0)
    assert x.shape[0] == 8 and y.shape == (8, 10)  # the odd last sample given up, soft targets
    assert not torch.equal(x, x0[:8]) and (y > 0).all()  # mixed images, smoothed targets (mass on every class)
    numpy_state = np.random.get_state()[1].copy()
    again = training_batch(args, accelerator, run, x0.clone(), y0)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)  # the batch's place decides: a resume mixes alike
    assert (np.random.get_state()[1] == numpy_state).all()  # and the run's own numpy stream is left alone

    seen = {}
    real = regularizer.perturbed_batch

    def spy(x_, utility, *rest, **kw):
        seen["u"] = utility
        return real(x_, utility, *rest, **kw)

    monkeypatch.setattr(regularizer, "perturbed_batch", spy)
    model = _lenet()
    _regularizer(_args("--mixup", "0.8", "--cutmix", "1.0"), model)(x, y)
    loss = SoftTargetCrossEntropy()
    eps, worst = 1e-5, 0.0
    flat = seen["u"].flatten()
    spread = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:6]
    picks = torch.cat([flat.topk(6).indices, spread])  # the elements FCL perturbs first, and others
    with torch.no_grad():
        for i in picks.tolist():
            d = torch.zeros_like(x).flatten()
            d[i] = eps
            d = d.view_as(x)
            # the utility of each sample is the gradient of its own loss: the batch mean times the batch size
            fd = (loss(model(x + d), y) - loss(model(x - d), y)) * x.shape[0] / (2 * eps)
            worst = max(worst, abs(fd.abs().item() - flat[i].item()))
    print(f"largest gap between the utility and the finite differences: {worst:.2e} (largest utility "
          f"{flat.max().item():.2e})")
    assert worst < 1e-6 * flat.max().item()


# -------------------------------------------------------------------------------------------------- the model's flags
def test_drop_path_dropout_and_model_kwargs_reach_the_model():
    from timm_fcl.training.build import build_model
    args = _args("--model", "vit_tiny_patch16_224", "--drop-path", "0.2", "--drop", "0.3",
                 "--model-kwargs", "img_size=32", "patch_size=8", "depth=3")
    model = build_model(args, 10)
    assert len(model.blocks) == 3 and model.patch_embed.patch_size == (8, 8)
    assert [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert model.head_drop.p == 0.3
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))


# --------------------------------------------------------------------------------------------------- AugMix and JSD
def test_fcl_term_of_augmix_views_is_the_clean_views_term_and_jsd_sees_all_views():
    from timm.loss import JsdCrossEntropy
    x = torch.rand(3, 6, 1, 28, 28, dtype=torch.float64)  # 3 views of 6 images
    y = torch.arange(6) % 10
    stacked = _regularizer(_args("--aug-splits", "3", "--jsd-loss", "--smoothing", "0"), _lenet())
    alone = _regularizer(_args("--smoothing", "0"), _lenet())
    out = stacked(x.flatten(0, 1), y.repeat(3), generator=torch.Generator().manual_seed(1))
    ref = alone(x[0], y, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.fcl, ref.fcl, rtol=1e-10) and out.scale == ref.scale == 6.0
    assert torch.allclose(out.ce, JsdCrossEntropy(num_splits=3, smoothing=0)(_lenet()(x.flatten(0, 1)), y.repeat(3)))
    print(f"fcl {out.fcl.item():.6f} (clean view alone {ref.fcl.item():.6f}); jsd+ce {out.ce.item():.4f}")


def test_augmix_views_are_a_clean_view_and_augmented_ones_drawn_per_sample_seed():
    from PIL import Image
    from timm_fcl.training.build import build_transforms
    from timm_fcl.data import seeded
    args = _args("--aug-splits", "3", "--aa", "augmix-m3-w3", "--hflip", "0", "--scale", "1", "1", "--ratio", "1", "1")
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
              "crop_pct": 1.0, "crop_mode": "center"}
    train_tf, _ = build_transforms(args, config)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    with seeded(5):
        views = train_tf(image)
    with seeded(5):
        same = train_tf(image)
    with seeded(6):
        other = train_tf(image)
    clean = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert len(views) == 3 and torch.allclose(views[0], clean, atol=1e-6)  # crop and flip only (both identity here)
    assert not torch.allclose(views[1], clean, atol=1e-3) and not torch.allclose(views[2], views[1], atol=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(views, same)) and not torch.equal(views[1], other[1])


def _interval_losses(stderr: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"step \d+ batch \S+ lr \S+ loss (\S+)", stderr)]


def test_augmix_jsd_and_fcl_train_20_steps_with_finite_decreasing_loss(toy, tmp_path):
    out = tmp_path / "augmix"
    proc = run(train_cmd(*TOY, "--data-dir", str(toy), "--output", str(out), "-b", "8", "--train-subset", "160",
                         "--epochs", "1", "--log-interval", "5", "--aug-splits", "3", "--jsd-loss",
                         "--aa", "augmix-m3-w3", "--method", "fcl", "--lr", "0.01"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _interval_losses(proc.stderr)
    print("loss per 5 steps:", losses)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    hparams = next((out / "tb").rglob("hparams.yml")).read_text()  # the settings reached the tracker
    assert "aug_splits: 3" in hparams and "jsd_loss: true" in hparams and "resolved.fcl.weight: 0.001" in hparams


# ------------------------------------------------------------------------------------------ gradient accumulation
def test_two_accumulated_batches_of_16_train_as_one_batch_of_32(toy, tmp_path):
    from safetensors.torch import load_file
    base = [*TOY, "--model", "lenet5_mnist", "--in-chans", "3", "--img-size", "28", "--no-aug", "--data-dir",
            str(toy), "--train-subset", "32", "--epochs", "1", "--opt", "momentum", "--momentum", "0",
            "--weight-decay", "0", "--lr", "0.5", "--method", "xe_gauss", "--fcl-weight", "0.05"]
    procs = {name: subprocess.Popen(train_cmd(*base, *extra, "--output", str(tmp_path / name)), env=env(), cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, extra in (("one", ["-b", "32"]), ("accumulated", ["-b", "16", "--grad-accum-steps", "2"]))}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
    init = _lenet_init()
    one, acc = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("one", "accumulated"))
    gap = max(((one[k] - acc[k]).abs().max() / (one[k] - init[k]).abs().max()).item() for k in one)
    print(f"largest weight difference relative to the update: {gap:.2e}")
    assert gap < 1e-4


def _lenet_init() -> dict:
    import timm
    from accelerate.utils import set_seed
    set_seed(42)  # train_fcl's default seed, set before the model is created
    return timm.create_model("lenet5_mnist", num_classes=10, in_chans=3).state_dict()


# -------------------------------------------------------------------------------------------------------- run folders
def test_two_runs_with_default_flags_land_in_two_new_folders(toy, tmp_path):
    argv = [*TOY, "--data-dir", str(toy), "-b", "16", "--train-subset", "16", "--val-subset", "16", "--epochs", "1",
            "--method", "xe"]
    procs = [subprocess.Popen(train_cmd(*argv), env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        assert "resumed from" not in stderr
    folders = sorted(p.name for p in (tmp_path / "output" / "train").iterdir())
    print(folders)
    assert len(folders) == 2 and all(re.fullmatch(r"\d{8}-\d{6}-resnet18-16(-\d+)?", f) for f in folders)
    assert all(len((tmp_path / "output" / "train" / f / "summary.csv").read_text().splitlines()) == 2 for f in folders)


def test_experiment_names_the_run_folder_as_timm_does():
    from timm_fcl.training.build import run_output
    main = types.SimpleNamespace(is_main_process=True)
    assert run_output(_args("--experiment", "cifar-fcl"), main) == Path("output", "train", "cifar-fcl")
    assert run_output(_args("--experiment", "cifar-fcl", "--output", "runs"), main) == Path("runs", "cifar-fcl")
    assert run_output(_args("--output", "runs/mine"), main) == Path("runs", "mine")


# ---------------------------------------------------------------------------------------------- the best checkpoint
@pytest.mark.parametrize("metric, best_epoch", [("top1", 1), ("loss", 0)])
def test_eval_metric_keeps_the_best_epoch_in_model_best(toy, tmp_path, monkeypatch, fresh_accelerate, metric,
                                                        best_epoch):
    import train_fcl
    from safetensors.torch import load_file
    planted, weights = [10.0, 30.0, 20.0], []

    def planted_evaluate(model, loader, accelerator, **_):
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        value = planted[len(weights) - 1]
        return {"loss": value, "top1": value, "top5": value, "samples": 16}

    monkeypatch.setattr(train_fcl, "evaluate", planted_evaluate)
    out = tmp_path / "run"
    train_fcl.main(train_fcl.parse_args([*TOY, "--data-dir", str(toy), "-b", "16", "--train-subset", "32",
                                         "--epochs", "3", "--method", "xe", "--eval-metric", metric,
                                         "--output", str(out)]))
    best = load_file(out / "model_best" / "model.safetensors")
    assert all(torch.equal(best[k], weights[best_epoch][k]) for k in best)
    assert not all(torch.equal(best[k], weights[2][k]) for k in best)  # not simply the last epoch
    record = json.loads((out / "best.json").read_text())
    assert record == {"eval_metric": metric, "value": planted[best_epoch], "epoch": best_epoch,
                      "step": 2 * (best_epoch + 1), "chosen_on": "validation", "weights": "model"}
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[-1].split(",")[-3:] == [str(best_epoch), str(planted[best_epoch]), "validation"]


def _planted_run(out: Path, toy: Path, monkeypatch, planted: list[float], *argv: str) -> list[dict]:
    """Train toy epochs of 2 steps in this process, each validation call scoring the next ``planted`` value (top1,
    top5 and loss alike); returns the weights each call validated."""
    import train_fcl
    weights = []

    def planted_evaluate(model, loader, accelerator, **_):
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        value = planted[len(weights) - 1]
        return {"loss": value, "top1": value, "top5": value, "samples": 16}

    monkeypatch.setattr(train_fcl, "evaluate", planted_evaluate)
    train_fcl.main(train_fcl.parse_args([*TOY, "--data-dir", str(toy), "-b", "16", "--train-subset", "32",
                                         "--method", "xe", "--output", str(out), *argv]))
    return weights


def _export_is(path: Path, weights: dict) -> bool:
    from safetensors.torch import load_file
    return same_weights(load_file(path / "model.safetensors"), weights)


def test_model_ema_is_judged_on_the_emas_validation_as_in_timm(toy, tmp_path, monkeypatch, fresh_accelerate):
    import csv
    from timm.scheduler.step_lr import StepLRScheduler
    seen, step = [], StepLRScheduler.step

    def recording_step(self, epoch: int, metric=None) -> None:  # the metric each epoch end hands a plateau schedule
        if metric is not None:
            seen.append(metric)
        step(self, epoch, metric)

    monkeypatch.setattr(StepLRScheduler, "step", recording_step)
    # each epoch validates the trained weights, then the EMA: the trained ones are best at epoch 1, the EMA at 0
    raw, ema = [10.0, 30.0, 20.0], [25.0, 15.0, 5.0]
    out = tmp_path / "run"
    weights = _planted_run(out, toy, monkeypatch, [v for pair in zip(raw, ema) for v in pair], "--epochs", "3",
                           "--model-ema", "--checkpoint-hist", "2")
    assert _export_is(out / "model_best", weights[1]) and not _export_is(out / "model_best", weights[0])  # the EMA of epoch 0
    assert _export_is(out / "model_ema", weights[5])
    assert json.loads((out / "best.json").read_text()) == {"eval_metric": "top1", "value": 25.0, "epoch": 0,
                                                          "step": 2, "chosen_on": "validation", "weights": "ema"}
    assert sorted(p.name for p in (out / "best").iterdir()) == ["epoch_0", "epoch_1"]
    assert _export_is(out / "best" / "epoch_1", weights[3])
    assert seen == ema
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["eval_top1"]) for r in rows] == ema and [float(r["raw_eval_top1"]) for r in rows] == raw
    assert [r["best_epoch"] for r in rows] == ["0", "0", "0"]


# ------------------------------------------------------------------------------------ --checkpoint-hist, --state-hist
@pytest.mark.parametrize("metric, kept", [("top1", [1, 2]), ("loss", [0, 4])])
def test_checkpoint_hist_keeps_the_best_epochs_across_a_resume(toy, tmp_path, monkeypatch, fresh_accelerate,
                                                                metric, kept):
    from accelerate.state import AcceleratorState
    planted = [10.0, 30.0, 20.0, 20.0, 5.0]  # epoch 3 ties epoch 2: the earlier stays, as in timm
    out = tmp_path / "run"
    flags = ["--eval-metric", metric, "--checkpoint-hist", "2", "--state-hist", "1"]
    weights = _planted_run(out, toy, monkeypatch, planted, "--epochs", "3", *flags)
    AcceleratorState._reset_state(True)
    (out / "best" / "epoch_7").mkdir()  # what a resume runs again or a killed export left is cleared
    (out / "best" / ".epoch_9.tmp").mkdir()
    weights += _planted_run(out, toy, monkeypatch, planted[3:], "--epochs", "5", *flags)
    assert sorted(p.name for p in (out / "best").iterdir()) == [f"epoch_{e}" for e in kept]
    assert all(_export_is(out / "best" / f"epoch_{e}", weights[e]) for e in kept)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000000010"]


# ---------------------------------------------------------------------------------------- trackers, precision, clipping
def test_log_wandb_without_wandb_is_one_line(toy, tmp_path):
    from accelerate.utils import is_wandb_available
    if is_wandb_available():
        pytest.skip("wandb is installed here")
    proc = run(train_cmd(*TOY, "--data-dir", str(toy), "--log-wandb", "--output", str(tmp_path / "w")))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "train_fcl.py: error: --log-wandb needs wandb (pip install wandb)"
    assert not (tmp_path / "w").exists()


def test_amp_is_bf16_autocast_on_cpu_and_clip_modes_clip(tmp_path, fresh_accelerate, monkeypatch):
    from timm_fcl.training.build import setup
    from timm_fcl.training.checks import check_timm_flags, resolve_mixed_precision
    from timm_fcl.training.flags import ConfigError
    from timm_fcl.training.steps import clip_gradients
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    accelerator, _ = setup(_args("--amp", "--data-dir", str(tmp_path), "--output", str(tmp_path / "amp")))
    model = _lenet().float()
    with accelerator.autocast():
        assert model(torch.rand(2, 1, 28, 28)).dtype == torch.bfloat16
    assert resolve_mixed_precision(_args("--amp"), "cuda") == "fp16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(_args("--amp"), "cuda") == "bf16"
    with pytest.raises(ConfigError, match="--amp contradicts"):
        check_timm_flags(_args("--amp", "--mixed-precision", "no"))

    for mode, bound in (("value", lambda g: max(p.abs().max() for p in g)), ("norm", lambda g: torch.cat(
            [p.flatten() for p in g]).norm())):
        model.zero_grad()
        (model(torch.rand(4, 1, 28, 28)).square().sum() * 100).backward()
        assert bound([p.grad for p in model.parameters()]) > 0.01
        clip_gradients(_args("--clip-grad", "0.01", "--clip-mode", mode), accelerator, model)
        assert bound([p.grad for p in model.parameters()]) <= 0.01 * (1 + 1e-5), mode
