"""synthetic_mnist.py keeps per-image hits and the pull ratio; synthetic_mnist_selection.py pairs the random and utility
runs by seed and reports their difference, in percent, recomputed here from the hits by hand."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from timm_fcl.robustness.hits import unpack_counts, unpack_hits

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--methods", "fcl", "--seeds", "2", "--epochs", "2", "--fcl-start-epoch", "0", "--fcl-ramp-epochs", "0",
         "--limit-train", "600", "--limit-eval", "300", "--figure-batch", "60", "--weight", "1e-3"]


def _module(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_conditions(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("selection")
    for name, extra in (("utility", []), ("random", ["--selection", "random"])):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synthetic_mnist.py"), *SMOKE, *extra,
                               "--data-dir", str(data_dir), "--output", str(out / name)],
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_runs_keep_hits_labels_and_pull(two_conditions):
    result = json.loads((two_conditions / "random" / "results.json").read_text())
    labels = unpack_counts(result["labels"]["test"])
    assert len(labels) == 300 and result["config"]["selection"] == "random"
    for run in result["runs"]["fcl"]:
        for s in ("bal", "un", "nun"):
            bits = unpack_hits(run["test_hits"][s], len(labels))
            assert bits.mean() == pytest.approx(run["test"][s])  # the hits are the accuracy, image by image
        assert all(entry["pull"] > 0 for entry in run["log"])


def test_comparison_pairs_by_seed_and_prints_percent(two_conditions, tmp_path):
    compare = _module("synthetic_mnist_selection")
    out = tmp_path / "table.json"
    table = compare.main(["--utility", str(two_conditions / "utility" / "results.json"), "--random",
                          str(two_conditions / "random" / "results.json"), "--resamples", "200", "--output", str(out)])
    assert table["seeds"] == [0, 1] and json.loads(out.read_text())["unit"] == "percent"
    runs = {c: json.loads((two_conditions / c / "results.json").read_text()) for c in ("utility", "random")}
    labels = unpack_counts(runs["utility"]["labels"]["test"])
    rare = np.isin(labels, range(10, 15))
    for row in table["rows"]:
        key = {"BAL": "bal", "BAL+UN": "un", "BAL+NUN": "nun"}[row["set"]]
        mask = rare if row["classes"] == "10-14" else np.ones(len(labels), bool)
        acc = {c: np.mean([unpack_hits(r["test_hits"][key], len(labels))[mask].mean() for r in runs[c]["runs"]["fcl"]])
               for c in runs}
        assert row["utility"] == pytest.approx(100 * acc["utility"])
        assert row["random"] == pytest.approx(100 * acc["random"])
        assert row["diff"] == pytest.approx(100 * (acc["random"] - acc["utility"]))
        assert row["low"] <= row["diff"] <= row["high"]
    assert table["pull_last_epoch"]["random"] > 0
