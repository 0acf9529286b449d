"""Fine-tuning with FCL from pretrained weights in a local file or export (no network): an export's data config is
the run's unless flags override it, and its classifier is kept when the class count matches, reset otherwise."""
import csv
import json
import logging

import pytest
import timm
import torch
from safetensors.torch import load_file

from timm_fcl.run.export import export_model
from timm_fcl.run.model_io import ModelError
from timm_fcl.training.build import build_model, resolve_run_data_config
from train_helpers import CIFAR_WDS, make_shards, run, train_cmd

# a CIFAR-like export of a model whose own pretrained_cfg is ImageNet's (224 px, ImageNet mean / std, bicubic)
EXPORT_ARCH, EXPORT_CLASSES = "resnet10t", 10
EXPORT_DATA = dict(input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616),
                   interpolation="bilinear", crop_pct=1.0, crop_mode="center")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A run-folder-shaped export (RUN/model/) of a resnet10t whose every tensor, BatchNorm statistics included, is
    away from its initial value, so that a re-initialized or unloaded tensor shows."""
    torch.manual_seed(0)
    model = timm.create_model(EXPORT_ARCH, num_classes=EXPORT_CLASSES)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1).abs_()
    run_folder = tmp_path_factory.mktemp("pre")
    export_model(model.eval(), run_folder / "model", data_config=EXPORT_DATA)
    return run_folder / "model"


def built(*argv: str, data_classes=EXPORT_CLASSES):
    from train_fcl import parse_args

    args = parse_args(list(argv))
    return args, build_model(args, data_classes)


def sources(export) -> dict:
    """The ways train_fcl.py names an export as the weights to fine-tune."""
    return {"--pretrained-path FILE": ["--model", EXPORT_ARCH, "--pretrained-path", str(export / "model.safetensors")],
            "--pretrained-path RUN": ["--model", EXPORT_ARCH, "--pretrained-path", str(export.parent)],
            "--model local-dir:EXPORT": ["--model", f"local-dir:{export}", "--pretrained"],
            "--model RUN": ["--model", str(export.parent), "--pretrained"]}


SOURCES = ("--pretrained-path FILE", "--pretrained-path RUN", "--model local-dir:EXPORT", "--model RUN")


@pytest.mark.parametrize("source", SOURCES)
def test_the_exports_data_config_is_the_runs_unless_flags_override_it(export, source):
    config = json.loads((export / "config.json").read_text())["pretrained_cfg"]
    args, model = built(*sources(export)[source])
    resolved = resolve_run_data_config(args, model)
    assert list(resolved["input_size"]) == config["input_size"] == [3, 32, 32]
    assert list(resolved["mean"]) == config["mean"] and list(resolved["std"]) == config["std"]
    assert (resolved["interpolation"], resolved["crop_pct"]) == (config["interpolation"], config["crop_pct"])
    args, model = built(*sources(export)[source], "--mean", "0.5", "0.25", "0.125", "--img-size", "24")
    resolved = resolve_run_data_config(args, model)
    assert tuple(resolved["mean"]) == (0.5, 0.25, 0.125) and list(resolved["std"]) == config["std"]
    assert tuple(resolved["input_size"]) == (3, 24, 24)


@pytest.mark.parametrize("source", SOURCES)
def test_matching_classes_keep_the_exports_classifier_and_logits(export, source, caplog):
    stored = load_file(export / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="timm_fcl.training.build"):
        _, model = built(*sources(export)[source], "--num-classes", str(EXPORT_CLASSES))
    assert torch.equal(model.fc.weight, stored["fc.weight"]) and torch.equal(model.fc.bias, stored["fc.bias"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain(x))
    assert [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()] == \
        [f"classifier kept: the pretrained weights' {EXPORT_CLASSES} classes (loaded, not re-initialized)"]


@pytest.mark.parametrize("source", SOURCES)
def test_the_load_line_says_what_was_loaded_and_from_where(export, source, caplog):
    """timm logs 'Loaded {key} from checkpoint' with an empty key for a safetensors file ('Loaded  from checkpoint'):
    the line a fine-tune shows names the weights and the file."""
    with caplog.at_level(logging.INFO):
        built(*sources(export)[source])
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loaded")]
    assert loaded, [r.getMessage() for r in caplog.records]
    assert not [m for m in loaded if "Loaded  " in m], loaded
    assert loaded == [f"Loaded the weights (the file's whole state dict) from checkpoint "
                      f"'{export / 'model.safetensors'}'"] * len(loaded)


@pytest.mark.parametrize("source", SOURCES)
def test_other_classes_reset_the_classifier_and_keep_the_backbone(export, source, caplog):
    stored = load_file(export / "model.safetensors")
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="timm_fcl.training.build"):
        _, model = built(*sources(export)[source], data_classes=7)  # --num-classes unset: the data's count
    assert model.num_classes == 7 and model.fc.weight.shape == (7, stored["fc.weight"].shape[1])
    assert not torch.equal(model.fc.weight, stored["fc.weight"][:7])
    assert not torch.equal(model.fc.bias, stored["fc.bias"][:7])
    assert model.fc.weight.abs().max() < stored["fc.weight"].abs().max()  # timm's fresh init, not the export's rows
    backbone = [k for k in stored if not k.startswith("fc.")]
    assert backbone and all(torch.equal(model.state_dict()[k], stored[k]) for k in backbone)
    assert [r.getMessage() for r in caplog.records if "classifier" in r.getMessage()] == \
        [f"classifier reset from {EXPORT_CLASSES} to 7 classes (re-initialized; the rest is pretrained)"]


def test_a_malformed_export_config_is_one_line(export, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    config = json.loads((export / "config.json").read_text())
    config["pretrained_cfg"]["std"] = [0.2, 0.0, 0.2]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"pretrained_cfg std \[0.2, 0.0, 0.2\] is not a valid std"):
        built("--model", EXPORT_ARCH, "--pretrained-path", str(bad / "model.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="is a folder without model.safetensors and config.json"):
        built("--model", EXPORT_ARCH, "--pretrained-path", str(tmp_path / "empty"))


@pytest.mark.parametrize("damage, expected", [
    (lambda c: c.pop("architecture"), "its 'architecture' (the timm model name) is missing"),
    (lambda c: c.update(pretrained_cfg=["not", "a", "mapping"]), "'pretrained_cfg' must be a mapping, got list"),
])
def test_an_export_config_timm_cannot_read_is_one_line_in_training_and_evaluation(export, tmp_path, damage,
                                                                                   expected):
    """A config.json without 'architecture', or whose pretrained_cfg is no mapping, was a KeyError / AttributeError
    traceback from timm's loader, in --pretrained and in evaluation; now one line naming the file."""
    from timm_fcl.run import model_io

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    config = json.loads((export / "config.json").read_text())
    damage(config)
    (bad / "config.json").write_text(json.dumps(config))
    message = f"{bad / 'config.json'} is not a timm config: {expected}"
    with pytest.raises(ModelError) as why:
        built("--model", f"local-dir:{bad}", "--pretrained")
    assert str(why.value) == message
    with pytest.raises(ModelError) as why:
        built("--model", EXPORT_ARCH, "--pretrained-path", str(bad))
    assert str(why.value) == message
    with pytest.raises(ModelError) as why:  # evaluation's way in: the export used exactly as stored
        model_io.create_model(f"local-dir:{bad}", exact=True)
    assert str(why.value) == message

COMMON = ["--model", "resnet18", "--img-size", "16", "--crop-pct", "1", "-b", "16", "--epochs", "1", "--sched", "step",
          "--warmup-epochs", "0", "--fcl-k", "64", "--no-progress", "--workers", "0"]


def test_fine_tuning_an_export_with_its_class_count_keeps_every_weight(tmp_path):
    shards = make_shards(tmp_path / "shards")
    pre = tmp_path / "pre"
    proc = run(train_cmd(*COMMON, "--dataset", "wds/toy", "--data-dir", str(shards), "--lr", "0.05",
                         "--method", "xe", "--output", str(pre)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # lr 0: the fine-tuning run must end with exactly the export's weights, its classifier included (same 10 classes)
    ft = tmp_path / "ft"
    proc = run(train_cmd(*COMMON, "--dataset", "wds/toy", "--data-dir", str(shards), "--lr", "0",
                         "--weight-decay", "0", "--method", "fcl", "--fcl-start-epochs", "0",
                         "--pretrained-path", str(pre / "model" / "model.safetensors"), "--output", str(ft)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = load_file(pre / "model" / "model.safetensors"), load_file(ft / "model" / "model.safetensors")
    params = [k for k in before if "running" not in k and "num_batches" not in k]
    assert "fc.weight" in params and all(torch.equal(before[k], after[k]) for k in params)
    assert "classifier kept: the pretrained weights' 10 classes" in proc.stdout + proc.stderr
    assert "fcl" in proc.stdout + proc.stderr


def test_missing_pretrained_path_is_one_clear_error(tmp_path):
    shards = make_shards(tmp_path / "shards", train=48, val=16)
    proc = run(train_cmd(*COMMON, "--dataset", "wds/toy", "--data-dir", str(shards), "--pretrained-path",
                         str(tmp_path / "nope.safetensors"), "--output", str(tmp_path / "o")))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--pretrained-path" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR_WDS / "_info.json").exists(), reason=f"CIFAR-10 shards not found at {CIFAR_WDS}")
def test_finetune_on_cifar10_beats_chance_and_scratch(tmp_path):
    """Pretrain resnet18 briefly (XE, 3 epochs of 8192 images), then fine-tune it (its head kept: the same 10 classes)
    with FCL on 2048 images; compare with the same FCL run from scratch. Prints both accuracies."""
    cifar = ["--model", "resnet18", "--dataset", "wds/cifar10", "--data-dir", str(CIFAR_WDS), "--val-split", "test",
             "--img-size", "32", "--crop-pct", "1", "-b", "64", "--sched", "step", "--warmup-epochs", "0",
             "--no-progress", "--workers", "1", "--val-subset", "1000", "--lr", "0.05"]
    pre = tmp_path / "pre"
    assert run(train_cmd(*cifar, "--epochs", "3", "--train-subset", "8192", "--method", "xe", "--seed", "1",
                         "--output", str(pre)), timeout=1800).returncode == 0
    results = {}
    for name, extra in (("pretrained", ["--pretrained-path", str(pre / "model" / "model.safetensors")]),
                        ("scratch", [])):
        out = tmp_path / name
        proc = run(train_cmd(*cifar, "--epochs", "1", "--train-subset", "2048", "--method", "fcl", "--fcl-k", "256",
                             "--fcl-start-epochs", "0", "--fcl-ramp-epochs", "0.5", "--seed", "2", *extra,
                             "--output", str(out)), timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(out / "summary.csv", newline="") as f:
            results[name] = float(list(csv.DictReader(f))[-1]["eval_top1"])
    print(results)
    assert results["pretrained"] > 25.0 and results["pretrained"] > results["scratch"] + 5
