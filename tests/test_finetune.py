"""Fine-tuning with FCL from pretrained weights in a local file (no network), the classifier reset."""
import csv

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import CIFAR_WDS, make_shards, run, train_cmd

COMMON = ["--model", "resnet18", "--img-size", "16", "--crop-pct", "1", "-b", "16", "--epochs", "1", "--sched", "step",
          "--warmup-epochs", "0", "--fcl-k", "64", "--no-progress", "--workers", "0"]


def test_pretrained_path_loads_the_backbone_and_resets_the_head(tmp_path):
    shards = make_shards(tmp_path / "shards")
    pre = tmp_path / "pre"
    proc = run(train_cmd(*COMMON, "--dataset", "wds/toy", "--data-dir", str(shards), "--lr", "0.05",
                         "--method", "xe", "--output", str(pre)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # lr 0: the fine-tuning run must end with exactly the file's backbone and a new (re-initialised) classifier
    ft = tmp_path / "ft"
    proc = run(train_cmd(*COMMON, "--dataset", "wds/toy", "--data-dir", str(shards), "--lr", "0",
                         "--weight-decay", "0", "--method", "fcl", "--fcl-start-epochs", "0",
                         "--pretrained-path", str(pre / "model" / "model.safetensors"), "--output", str(ft)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = load_file(pre / "model" / "model.safetensors"), load_file(ft / "model" / "model.safetensors")
    params = [k for k in before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], after[k]) for k in params if not k.startswith("fc."))
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
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
    """Pretrain resnet18 briefly (XE, 3 epochs of 8192 images), then fine-tune a fresh head + backbone with FCL on 2048
    images; compare with the same FCL run from scratch. Prints both accuracies."""
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
