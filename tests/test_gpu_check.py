"""benchmarks/gpu_check.py: its smoke run on the CPU writes every section, and a plain run refuses without a GPU."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from train_helpers import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_pass_floor_counts_forwards_and_backwards():
    # r = B / F = 2.5: XE is F + B = 3.5 F; FCL is F + B/2 + 2F + 3B = 11.75 F
    assert gpu_check.pass_floor("fcl", 2.5, every=4, fraction=0.25) == pytest.approx(11.75 / 3.5)
    assert gpu_check.pass_floor("fcl-every", 2.5, every=4, fraction=0.25) == pytest.approx((3 + 11.75 / 3.5) / 4)
    # fraction f of the batch: the full XE step, plus F + B/2 (the subset's utility) and 2F + 2B over [x_low; x_high]
    assert gpu_check.pass_floor("fcl-fraction", 2.5, every=4, fraction=0.25) == pytest.approx(1 + 0.25 * 9.25 / 3.5)
    assert gpu_check.pass_floor("xe_gauss", 7.0, every=4, fraction=0.25) == 2.0
    assert gpu_check.pass_floor("xe", 7.0, every=4, fraction=0.25) == 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check.py: error: no CUDA device: this check is for a GPU (--smoke runs the same code tiny on the CPU)"]
    assert not (tmp_path / "x.json").exists()


def test_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "step_cost", "end_to_end", "loader", "targets", "skipped"} and not data["skipped"]
    assert [(e["model"], e["compile"]) for e in data["step_cost"]] == [("test_resnet", "none"), ("test_resnet", "eager")]
    for entry in data["step_cost"]:
        rows = {r["mode"]: r for r in entry["rows"]}
        assert list(rows) == list(gpu_check.MODES)
        assert rows["xe"]["ratio_to_xe"] == 1.0 and entry["backward_over_forward"] >= 0
        for r in rows.values():
            assert r["img_per_s"] == pytest.approx(entry["batch_size"] / r["median_s"])
            assert r["ratio_to_floor"] == pytest.approx(r["ratio_to_xe"] / r["floor"])
            assert len(r["times_s"]) == data["meta"]["steps"]
    assert [r["method"] for r in data["end_to_end"]] == ["xe", "fcl"]
    assert all(r["img_per_s"] > 0 and len(r["intervals"]) >= 2 for r in data["end_to_end"])
    assert data["loader"][0]["img_per_s"] > 0 and data["loader"][0]["images"] > 0
    assert data["meta"]["shards"]["images"] == 96
    targets = data["targets"]
    assert {"test_resnet/none: fcl / floor", "test_resnet/eager: every 4 / xe", "loader / fcl end to end"} <= set(targets)
    loader = targets["loader / fcl end to end"]
    assert loader["measured"] == pytest.approx(data["loader"][0]["img_per_s"] / data["end_to_end"][1]["img_per_s"])
    assert loader["met"] == (loader["measured"] >= 1.5)
    assert "| target | measured | wanted | met |" in proc.stdout
