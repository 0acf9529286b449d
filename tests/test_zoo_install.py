"""The zoo's pretrained tags right after installing timm-fcl: with no network and an empty Hugging Face cache, from any
folder, a tag loads the copy installed with the package (a wheel ships zoo/ as timm_fcl/zoo/); the Hub copy wins when
it can be had; a tag neither can give is one line naming both ways to get it; hfhub.zoo works from any folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from train_helpers import ROOT

TAG = "resnet20_cifar.fcl_cifar10"
ZOO = ROOT / "zoo"
BUDGET = 12 * 2 ** 20  # what the installed zoo may weigh, in bytes
# the model a tag gives, saved for the test to compare, and the log lines that say where its weights came from
LOAD = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
import timm, timm_fcl
from safetensors.torch import save_file
model = timm.create_model(sys.argv[1], pretrained=True)
save_file(model.state_dict(), sys.argv[2])
print(json.dumps({"timm_fcl": timm_fcl.__file__}))
"""


def offline_env(tmp_path: Path, *, pythonpath: str | None = str(ROOT), cache: Path | None = None) -> dict:
    """No network (HF_HUB_OFFLINE=1) and a Hugging Face cache of the test's own (empty unless ``cache``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache or tmp_path / "hub"),
               HF_HOME=str(tmp_path / "hf-home"))
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def load_tag(python: str, tag: str, tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, Path]:
    """``timm.create_model(tag, pretrained=True)`` in a new interpreter started in an empty folder outside the
    checkout; its state dict is saved to the returned file."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    out = tmp_path / f"{tag}.loaded.safetensors"
    proc = subprocess.run([python, "-c", LOAD, tag, str(out)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    return proc, out


def assert_same_weights(loaded: Path, reference: Path) -> None:
    got, want = load_file(loaded), load_file(reference)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def zoo_log(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("timm_fcl.models.zoo: ")]


def test_a_tag_loads_the_installed_copy_offline_with_an_empty_cache_from_any_folder(tmp_path):
    proc, loaded = load_tag(sys.executable, TAG, tmp_path, offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(loaded, ZOO / TAG / "model.safetensors")
    (line,) = zoo_log(proc.stderr)
    assert "weights from the copy installed with timm-fcl" in line and str(ZOO / TAG / "model.safetensors") in line
    assert "HF_HUB_OFFLINE" in line  # and why the Hub copy was not used


def test_the_hub_copy_is_preferred_when_the_cache_holds_it(tmp_path):
    """A cache holding the tag's repository (other weights, to tell them apart) is what the tag loads."""
    repo = tmp_path / "hub" / f"models--timm-fcl--{TAG}"
    snapshot = repo / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    shutil.copyfile(ZOO / TAG / "config.json", snapshot / "config.json")
    hub_weights = {k: v + 1 if v.is_floating_point() else v for k, v in load_file(ZOO / TAG / "model.safetensors").items()}
    save_file(hub_weights, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    proc, loaded = load_tag(sys.executable, TAG, tmp_path, offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(loaded, snapshot / "model.safetensors")
    (line,) = zoo_log(proc.stderr)
    assert f"weights from the Hugging Face Hub copy timm-fcl/{TAG}" in line


def test_a_tag_no_copy_can_give_is_one_line_naming_both_ways_to_get_it(tmp_path):
    """resnet56_cifar's tags are registered for the Hub, and the installed zoo holds none of them."""
    tag = "resnet56_cifar.fcl_cifar10"
    assert not (ZOO / tag).exists()
    proc, _ = load_tag(sys.executable, tag, tmp_path, offline_env(tmp_path))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("timm_fcl.models.zoo.ZooWeightsError: ") and tag in last
    assert "from the Hub" in last and "python -m hfhub.zoo ZOO --fill-cache" in last


def test_a_tag_that_cannot_be_loaded_is_one_error_line_of_the_commands(tmp_path, capsys, monkeypatch):
    import timm
    from huggingface_hub import constants

    import timm_fcl  # noqa: F401  (registers the tags)
    from timm_fcl.run.cli import run_cli

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    assert run_cli("prog", lambda a: timm.create_model("resnet56_cifar.xe_cifar10", pretrained=True), []) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prog: error: resnet56_cifar.xe_cifar10: no weights")


def test_fill_cache_works_from_any_folder_and_the_tags_then_load_the_hub_copy(tmp_path):
    """``python -m hfhub.zoo --fill-cache CACHE`` without ZOO, outside the checkout, installs the zoo installed with
    timm-fcl; the tags then load from the cache as a download would."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "hfhub.zoo", "--fill-cache", "cache"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = sorted(p.name for p in ZOO.iterdir() if p.is_dir())
    assert sorted(p.name.split("--")[-1] for p in (cwd / "cache").iterdir()) == tags
    proc, loaded = load_tag(sys.executable, TAG, tmp_path, offline_env(tmp_path, cache=cwd / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(loaded, ZOO / TAG / "model.safetensors")
    assert "weights from the Hugging Face Hub copy" in zoo_log(proc.stderr)[0]
    # a ZOO that is not there says how to use the installed one
    proc = subprocess.run([sys.executable, "-m", "hfhub.zoo", "zoo", "--fill-cache", "cache"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "hfhub.zoo: error: zoo is not a folder (leave ZOO out for the zoo installed with timm-fcl)"


# ------------------------------------------------------------------------------------------- installed from a wheel
def build_wheel(tmp_path: Path) -> Path:
    """The project's wheel, built (pip wheel, no build isolation: nothing downloaded) from a copy of the sources
    a build needs, so the checkout gets no build/ folder."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("timm_fcl", "hfhub", "zoo"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("timm_fcl-*.whl")
    return wheel


def test_the_wheel_ships_the_zoo_within_its_budget(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        shipped = {i.filename[len("timm_fcl/zoo/"):]: i.file_size for i in z.infolist()
                   if i.filename.startswith("timm_fcl/zoo/")}
    assert shipped == {str(p.relative_to(ZOO)): p.stat().st_size for p in ZOO.rglob("*") if p.is_file()}
    assert sum(shipped.values()) <= BUDGET


def test_in_a_fresh_venv_with_the_wheel_installed_a_tag_loads_offline_with_the_zoos_weights(tmp_path):
    """A fresh virtual environment, the project installed from its wheel with pip, run from a folder outside the
    checkout with HF_HUB_OFFLINE=1 and an empty cache: the tag loads the copy the wheel carries. The dependencies (torch, timm, ...) are
    this environment's, reached through a .pth file (nothing is downloaded); timm-fcl itself is the wheel's only."""
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    proc = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    deps = [p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir()]
    (site / "_test_dependencies.pth").write_text("\n".join(map(str, deps)) + "\n")
    proc, loaded = load_tag(python, TAG, tmp_path, offline_env(tmp_path, pythonpath=None))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["timm_fcl"].startswith(str(site))
    assert_same_weights(loaded, ZOO / TAG / "model.safetensors")
    assert str(site / "timm_fcl" / "zoo" / TAG / "model.safetensors") in zoo_log(proc.stderr)[0]
