"""The checkpoint zoo: a zoo folder published with hfhub.zoo --dry-run loads offline from a Hugging Face cache both
as hf-hub:timm-fcl/NAME and as the pretrained tag registered in timm."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timm_fcl.robustness.corruptions import CORRUPTION_GROUPS
from timm_fcl.run.atomic import file_sha256
from train_helpers import ROOT, make_shards, run, train_cmd

TAG = "resnet20_cifar.fcl_cifar10"
REPO_ID = f"timm-fcl/{TAG}"
LOGITS = r"""
import json, sys
import timm, torch
import timm_fcl  # registers resnet20_cifar and its zoo tags
model = timm.create_model(sys.argv[1], pretrained=True).eval()
with torch.no_grad():
    print(json.dumps(model(torch.load(sys.argv[2], weights_only=True)).tolist()))
"""


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """zoo/resnet20_cifar.fcl_cifar10 from a few FCL steps on toy shards: export, settings and results."""
    root = tmp_path_factory.mktemp("zoo")
    out = root / "run"
    proc = run(train_cmd("--model", "resnet20_cifar", "--dataset", "wds/toy", "--data-dir",
                         str(make_shards(root / "shards")), "--img-size", "16", "--crop-pct", "1", "-b", "32",
                         "--epochs", "1", "--sched", "step", "--warmup-epochs", "0", "--lr", "0.05", "--method", "fcl",
                         "--fcl-k", "64", "--crop-pad", "2", "--no-progress", "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = root / "zoo" / TAG
    (folder / "eval").mkdir(parents=True)
    for name in ("model/model.safetensors", "model/config.json", "args.yaml", "resolved.yaml"):
        shutil.copyfile(out / name, folder / Path(name).name)
    (folder / "eval" / "results.json").write_text(json.dumps({"run": {"unit": "percent", "rows": [
        {"suite": "clean", "corruption": "clean", "severity": 0, "accuracy": 90.0},
        {"suite": "un", "corruption": "uniform_noise", "severity": 0, "accuracy": 40.0}], "summaries": {}}}))
    return folder.parent


def expected_logits(zoo, cache, tmp_path):
    """The zoo entry's logits on a saved test input (tmp_path/x.pt), and the environment of an offline load from
    ``cache``."""
    from safetensors.torch import load_file
    import timm
    import timm_fcl  # noqa: F401
    model = timm.create_model("resnet20_cifar").eval()
    model.load_state_dict(load_file(zoo / TAG / "model.safetensors"))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")  # a test input, not a checkpoint
    with torch.no_grad():
        want = model(x)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache),
               HF_HOME=str(tmp_path / "home"))
    return want, env


def zoo_cmd(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hfhub.zoo", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_zoo_dry_run_loads_offline_as_hub_name_and_as_pretrained_tag(zoo, tmp_path):
    proc = zoo_cmd(str(zoo), "--dry-run", str(tmp_path / "staged"))
    assert proc.returncode == 0, proc.stderr
    staged = tmp_path / "staged" / TAG
    assert {"README.md", "config.json", "model.safetensors"} <= {p.name for p in staged.iterdir()}
    assert "| clean | top-1 accuracy | 90.00 |" in (staged / "README.md").read_text()  # the robustness table
    cache = tmp_path / "hub"
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    shutil.copytree(staged, repo / "snapshots" / ("1" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)

    want, env = expected_logits(zoo, cache, tmp_path)
    for name in (f"hf-hub:{REPO_ID}", TAG):
        proc = subprocess.run([sys.executable, "-c", LOGITS, name, str(tmp_path / "x.pt")], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert torch.equal(torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1])), want), name


def test_a_folder_that_is_no_registered_tag_is_refused_in_one_line(zoo, tmp_path):
    bad = tmp_path / "zoo"
    shutil.copytree(zoo / TAG, bad / "resnet20_cifar.mystery")
    proc = zoo_cmd(str(bad), "--dry-run", str(tmp_path / "staged"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "not a pretrained tag" in proc.stderr and not (tmp_path / "staged").exists()


def test_fill_cache_installs_the_zoo_so_its_tags_load_offline(zoo, tmp_path):
    cache = tmp_path / "hub"
    proc = zoo_cmd(str(zoo), "--fill-cache", str(cache))
    assert proc.returncode == 0, proc.stderr
    repo = cache / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / (repo / "refs" / "main").read_text()
    assert {"README.md", "config.json", "model.safetensors"} <= {p.name for p in snapshot.iterdir()}
    assert zoo_cmd(str(zoo), "--fill-cache", str(cache)).returncode == 0  # again: the same snapshot, nothing added
    assert [p.name for p in (repo / "snapshots").iterdir()] == [snapshot.name]

    want, env = expected_logits(zoo, cache, tmp_path)
    proc = subprocess.run([sys.executable, "-c", LOGITS, TAG, str(tmp_path / "x.pt")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.equal(torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1])), want)
    # the card's own loading snippet runs as written, against the same cache
    card = (snapshot / "README.md").read_text()
    snippet = card.split("## How to load\n\n```python\n")[1].split("```")[0]
    assert "import timm_fcl" in snippet  # timm itself lacks resnet20_cifar
    proc = subprocess.run([sys.executable, "-c", snippet + "print(type(model).__name__, model.num_classes)"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["CifarResNet", "10"]


def test_fill_cache_and_dry_run_together_are_refused(zoo, tmp_path):
    proc = zoo_cmd(str(zoo), "--fill-cache", str(tmp_path / "hub"), "--dry-run", str(tmp_path / "staged"))
    assert proc.returncode == 2 and "--fill-cache and --dry-run" in proc.stderr
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("entry", sorted(p.name for p in (ROOT / "zoo").iterdir() if p.is_dir()))
def test_each_committed_zoo_card_is_the_card_publishing_writes_with_its_evaluations_numbers(entry, tmp_path):
    """zoo/*/README.md is exactly what publishing the folder uploads, and its numbers (table and model-index) are
    those of its eval/results.json, in percent."""
    import timm
    from huggingface_hub import ModelCard

    import timm_fcl  # noqa: F401  (registers the zoo's tags)
    from hfhub.publish import cli

    folder = ROOT / "zoo" / entry
    assert cli([str(folder), "--repo-id", timm.models.get_pretrained_cfg(entry).hf_hub_id,
                "--dry-run", str(tmp_path / "staged")]) == 0
    assert (tmp_path / "staged" / "README.md").read_text() == (folder / "README.md").read_text()
    (result,) = json.loads((folder / "eval" / "results.json").read_text()).values()
    assert result["unit"] == "percent" and result["weights_sha256"] == file_sha256(folder / "model.safetensors")
    card = ModelCard.load(folder / "README.md")
    index = {(r.dataset_config, r.metric_name): r.metric_value for r in card.data.eval_results}
    plain = {r["suite"]: r["accuracy"] for r in result["rows"] if r["severity"] == 0}
    plain_total = {r["suite"]: r["total"] for r in result["rows"] if r["severity"] == 0}
    assert {s: index[(s, "top-1 accuracy")] for s in plain} == {s: round(v, 4) for s, v in plain.items()}
    summary = result["summaries"]["generated"]
    assert index[("generated", "mean accuracy, 19 corruptions")] == round(summary["mean_19"], 4)
    assert all(index[("generated", f"{g} group mean ({', '.join(CORRUPTION_GROUPS[g])})")] == round(v, 4)
               for g, v in summary["groups"].items())
    # each test set's name says how many images and which corruptions, as its rows give them
    names = {r.dataset_config: r.dataset_name for r in card.data.eval_results}
    assert names["clean"] == f"cifar10 (clean): {plain_total['clean']:,} images"
    assert names["un"] == f"cifar10 (un): uniform_noise on {plain_total['un']:,} images"
    generated = {(r["corruption"], r["severity"], r["total"]) for r in result["rows"] if r["suite"] == "generated"}
    assert len(generated) == 19 * 5 and len({t for *_, t in generated}) == 1
    assert names["generated"].startswith(f"cifar10 (generated): 19 corruptions x 5 severities (1-5), "
                                         f"{next(iter(generated))[2]:,} images each")
    assert f"| clean | top-1 accuracy | {plain['clean']:.2f} |" in card.content


ALL_LOGITS = r"""
import json, sys
import timm, torch
import timm_fcl  # registers resnet20_cifar and its zoo tags
x = torch.load(sys.argv[1], weights_only=True)
out = {}
for tag in sys.argv[2:]:
    with torch.no_grad():
        out[tag] = timm.create_model(tag, pretrained=True).eval()(x).tolist()
print(json.dumps(out))
"""


def test_every_committed_zoo_entry_loads_offline_by_its_pretrained_tag_with_its_exported_logits(tmp_path):
    """zoo/ installed into an empty Hugging Face cache: each tag loads with timm.create_model(TAG, pretrained=True),
    nothing downloaded, and gives the logits of the folder's own weights."""
    from safetensors.torch import load_file
    import timm

    import timm_fcl  # noqa: F401  (registers resnet20_cifar)

    zoo = ROOT / "zoo"
    tags = sorted(p.name for p in zoo.iterdir() if p.is_dir())
    assert "resnet20_cifar.xe_pretrain_cifar10" in tags and len(tags) >= 3
    proc = zoo_cmd(str(zoo), "--fill-cache", str(tmp_path / "hub"))
    assert proc.returncode == 0, proc.stderr
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")  # a test input, not a checkpoint
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", ALL_LOGITS, str(tmp_path / "x.pt"), *tags], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for tag in tags:
        config = json.loads((zoo / tag / "config.json").read_text())
        model = timm.create_model(config["architecture"], num_classes=config["num_classes"]).eval()
        model.load_state_dict(load_file(zoo / tag / "model.safetensors"))
        with torch.no_grad():
            assert torch.equal(torch.tensor(got[tag]), model(x)), tag


def test_fill_cache_repairs_swapped_weights_and_evaluation_records_the_digest_it_loaded(tmp_path):
    """A filled cache whose weights were swapped was not repaired by --fill-cache, and the swapped weights were
    evaluated without a digest. Now --fill-cache installs the entry again, and an evaluation of a tag records the
    SHA-256 of the file it loaded, from the cache as from a local folder."""
    cache = tmp_path / "hub"
    tag, repo_id = "resnet20_cifar.xe_cifar10", "timm-fcl/resnet20_cifar.xe_cifar10"
    zoo_file = ROOT / "zoo" / tag / "model.safetensors"
    want = file_sha256(zoo_file)
    assert zoo_cmd("--fill-cache", str(cache)).returncode == 0
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    cached = repo / "snapshots" / (repo / "refs" / "main").read_text() / "model.safetensors"
    other = ROOT / "zoo" / "resnet20_cifar.fcl_cifar10" / "model.safetensors"
    cached.write_bytes(other.read_bytes())  # swapped
    proc = zoo_cmd("--fill-cache", str(cache))
    assert proc.returncode == 0 and "differs from" in proc.stdout, proc.stdout + proc.stderr
    assert file_sha256(cached) == want == file_sha256(zoo_file)  # repaired, and the zoo itself untouched

    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    code = ("from timm_fcl.robustness.evaluation import load_models\n"
            f"print(load_models([{tag!r}], pretrained=True)[0].weights_sha256)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == want
