"""Publishing with --dry-run and loading with plain timm (local-dir: and an offline hf-hub: cache)."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hfhub.model_card import build_model_card
from hfhub.publish import PublishError, find_export, main as publish_main, get_args_parser
from timm_fcl import FCLConfig
from train_helpers import ROOT, make_shards, run, train_cmd

LOGITS = r"""
import json, sys
import timm, torch
model = timm.create_model(sys.argv[1], pretrained=True).eval()
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    logits = model(x)
print(json.dumps({"logits": logits.tolist(), "timm_fcl": any(m.startswith("timm_fcl") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short CPU FCL run of resnet18 on toy shards, with an evaluation JSON beside it."""
    root = tmp_path_factory.mktemp("hub")
    shards = make_shards(root / "shards")
    out = root / "run"
    proc = run(train_cmd("--model", "resnet18", "--dataset", "wds/toy", "--data-dir", str(shards), "--img-size", "16",
                         "--crop-pct", "1", "-b", "16", "--epochs", "1", "--sched", "step", "--warmup-epochs", "0",
                         "--lr", "0.05", "--method", "fcl", "--fcl-k", "64", "--no-progress", "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text(json.dumps({"resnet18": {"rows": [
        {"suite": "clean", "corruption": "", "severity": 0, "accuracy": 0.91},
        {"suite": "un", "corruption": "", "severity": 0, "accuracy": 0.42}],
        "summaries": {"generated": {"mean_19": 0.61, "mean_15": 0.6, "groups": {"noise": 0.3, "blur": 0.7}}}}}))
    return out


def plain_timm_logits(name: str, x_path: Path, env_extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no timm_fcl on the path
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", LOGITS, name, str(x_path)], capture_output=True, text=True,
                          env=env, cwd=x_path.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def published(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dry") / "card"
    publish_main(get_args_parser().parse_args([str(trained), "--repo-id", "fcl-org/resnet18-toy", "--dry-run",
                                               str(folder)]))
    return folder


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """Logits of the trained model, loaded through the exporter's own files, on a fixed batch."""
    import timm
    from safetensors.torch import load_file
    cfg = json.loads((trained / "model" / "config.json").read_text())
    model = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"]).eval()
    model.load_state_dict(load_file(trained / "model" / "model.safetensors"))
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("x") / "x.pt"
    torch.save(x, path)  # a test input, not a checkpoint
    with torch.no_grad():
        return path, model(x)


def test_dry_run_folder_loads_with_plain_timm_local_dir(published, reference):
    assert sorted(p.name for p in published.iterdir()) == ["README.md", "config.json", "eval_results.json",
                                                          "model.safetensors"]
    x_path, want = reference
    got = plain_timm_logits(f"local-dir:{published}", x_path)
    assert not got["timm_fcl"]
    assert torch.equal(torch.tensor(got["logits"]), want)


def test_offline_hf_hub_cache_loads_with_plain_timm(published, reference, tmp_path):
    cache = tmp_path / "hub"
    snap = cache / "models--fcl-org--resnet18-toy" / "snapshots" / ("0" * 40)
    shutil.copytree(published, snap)
    (cache / "models--fcl-org--resnet18-toy" / "refs").mkdir()
    (cache / "models--fcl-org--resnet18-toy" / "refs" / "main").write_text("0" * 40)
    x_path, want = reference
    got = plain_timm_logits("hf-hub:fcl-org/resnet18-toy", x_path,
                            {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")})
    assert torch.equal(torch.tensor(got["logits"]), want)


def test_model_card_header_parses_and_carries_the_numbers(published):
    text = (published / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["library_name"] == "timm" and "timm-fcl" in header["tags"]
    assert "| clean | top-1 accuracy | 0.9100 |" in text and "| un | top-1 accuracy | 0.4200 |" in text
    assert "mean accuracy, 19 corruptions | 0.6100" in text
    for param in ("| method | fcl |", "| k | 64 |", "| tau |", "| sigma |", "| weight |"):
        assert param in text, param
    assert 'timm.create_model("hf-hub:fcl-org/resnet18-toy", pretrained=True)' in text


def test_no_pickle_is_written_and_pickle_only_folders_are_refused(trained, published, tmp_path):
    pickled = [p for p in list(published.rglob("*")) + list((trained / "model").rglob("*"))
               if p.suffix in (".pth", ".pt", ".bin", ".pkl", ".ckpt")]
    assert not pickled
    only_pth = tmp_path / "old"
    only_pth.mkdir()
    (only_pth / "checkpoint.pth").write_bytes(b"not really a pickle")
    with pytest.raises(PublishError, match="only pickled weights"):
        find_export(only_pth)
    proc = subprocess.run([sys.executable, "-m", "hfhub.publish", str(only_pth), "--repo-id", "a/b", "--dry-run",
                           str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("hfhub.publish: error:") and len(proc.stderr.strip().splitlines()) == 1


def card_table(text: str, section: str) -> dict:
    """{first cell: second cell} of the markdown table under ``## section``."""
    body = text.split(f"## {section}\n")[1].split("\n## ")[0]
    cells = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("| ")]
    return {c[0].strip(): c[1].strip() for c in cells[2:]}  # past the header and the --- row


def test_card_takes_fcl_settings_from_resolved_yaml():
    fcl = {f.name: f.default for f in dataclasses.fields(FCLConfig)}
    fcl.update(method="fcl", k=64, start_step=500, ramp_steps=250, input_std=[0.25, 0.25, 0.25])
    resolved = {"fcl": fcl, "fcl_schedule_epochs": {"start": 2, "ramp": 1}, "lr": 0.4, "global_batch": 1024,
                "world_size": 8}
    args = {"method": "fcl", "fcl_k": 8, "lr": None, "patch_gaussian": False, "patch_gaussian_size": 25}
    text = build_model_card("org/name", {"architecture": "resnet18"}, train_args=args, resolved=resolved)
    params = card_table(text, "FCL hyper-parameters")
    assert set(params) == set(fcl)  # every FCLConfig field, from the resolved file rather than the flags
    assert params["k"] == "64" and params["start_step"] == "500 (2 epochs)" and params["ramp_steps"] == "250 (1 epochs)"
    recipe = card_table(text, "Training recipe")
    assert recipe["lr"] == "0.4" and recipe["global_batch"] == "1024"
    assert not any(k.startswith("patch_gaussian") for k in recipe)  # off: no Patch Gaussian settings


def test_card_of_an_older_run_reads_the_fcl_flags_and_shows_patch_gaussian_when_on():
    args = {"method": "xe_gauss", "fcl_sigma": 0.3, "fcl_start_epochs": None, "patch_gaussian": True,
            "patch_gaussian_size": 16, "patch_gaussian_sigma": 0.2}
    text = build_model_card("org/name", {"architecture": "resnet18"}, train_args=args)
    assert card_table(text, "FCL hyper-parameters") == {"method": "xe_gauss", "sigma": "0.3"}
    recipe = card_table(text, "Training recipe")
    assert recipe["patch_gaussian_size"] == "16" and recipe["patch_gaussian_sigma"] == "0.2"
