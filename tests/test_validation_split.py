"""Which split chooses the best epoch: a missing validation split is never quietly replaced by the test split; the
test split is used only when named (and the run folder says so), or --val-holdout N carves a fixed validation split
out of the training shards."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from train_helpers import TOY_RUN, one_error_line, run, train_cmd

TOY = [*TOY_RUN, "-b", "16", "--log-interval", "4", "--epochs", "1", "--workers", "0"]


def _train_and_test_only(toy: Path, folder: Path) -> Path:
    """The toy shards as CIFAR-10's come: a train and a test split, no validation split."""
    shutil.copytree(toy, folder)
    info = json.loads((folder / "_info.json").read_text())
    info["splits"]["test"] = info["splits"].pop("validation")
    (folder / "_info.json").write_text(json.dumps(info))
    return folder


def _split_hashes(root: Path, split: str) -> list[str]:
    import webdataset as wds

    info = json.loads((root / "_info.json").read_text())["splits"][split]
    return [hashlib.sha1(s["png"]).hexdigest() for name in info["filenames"]
            for s in wds.tarfile_to_samples()([{"url": str(root / name)}])]


def test_a_missing_validation_split_is_refused_not_replaced_by_test(toy, tmp_path):
    data = _train_and_test_only(toy, tmp_path / "data")
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(data), "--output", str(out)))
    line = one_error_line("no validation split", proc.returncode, proc.stderr)
    assert "lists no split 'validation' (its splits: train, test)" in line, line
    assert "--val-split test" in line and "--val-holdout N" in line, line
    assert " step " not in proc.stderr and not out.exists()


def test_the_test_split_named_is_used_and_the_run_folder_says_so(toy, tmp_path):
    data = _train_and_test_only(toy, tmp_path / "data")
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(data), "--val-split", "test", "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "best.json").read_text())["chosen_on"] == "test"
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].split(",")[-1] == "best_chosen_on" and summary[1].endswith(",test")
    assert ",64," in summary[1]  # eval_samples: the 64 test images


def test_val_holdout_carves_a_fixed_validation_split_disjoint_from_training(toy, tmp_path):
    data = _train_and_test_only(toy, tmp_path / "data")
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        proc = run(train_cmd(*TOY, "--data-dir", str(data), "--val-holdout", "16", "--output", str(out)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"--val-holdout 16: {out / 'holdout'} holds train 176 and validation 16 images" in proc.stderr
    a, b = (r / "holdout" for r in runs)
    assert _split_hashes(a, "validation") == _split_hashes(b, "validation")  # the same pick in every run
    assert _split_hashes(a, "train") == _split_hashes(b, "train")
    held, kept, test = set(_split_hashes(a, "validation")), _split_hashes(a, "train"), set(_split_hashes(data, "test"))
    assert len(held) == 16 and len(kept) == 176 and not held & set(kept) and not held & test
    assert sorted(held | set(kept)) == sorted(_split_hashes(data, "train"))  # nothing lost, nothing repeated
    best = json.loads((runs[0] / "best.json").read_text())
    assert best["chosen_on"] == "validation (held out of train)"
    row = (runs[0] / "summary.csv").read_text().splitlines()[1]
    assert ",16," in row  # eval_samples

    out = tmp_path / "folder"
    proc = run(train_cmd(*TOY, "--data-dir", str(data), "--dataset", "", "--val-holdout", "16", "--output", str(out)))
    line = one_error_line("not shards", proc.returncode, proc.stderr)
    assert "--val-holdout needs WebDataset shards (--dataset wds/NAME), not ''" in line, line


@pytest.mark.parametrize("asked, listed", [("validation", ["train", "val"]), ("val", ["train", "validation", "test"])])
def test_validation_names_find_each_other_but_never_test(toy, tmp_path, asked, listed):
    from timm_fcl.data import MissingSplit, wds_split

    folder = tmp_path / "data"
    shutil.copytree(toy, folder)
    info = json.loads((folder / "_info.json").read_text())
    entry = info["splits"].pop("validation")
    info["splits"].update({name: entry for name in listed if name != "train"})
    (folder / "_info.json").write_text(json.dumps(info))
    urls, lengths, _ = wds_split(str(folder), asked)
    assert sum(lengths) == 64 and all("validation" in Path(u).name for u in urls)
    info["splits"] = {"train": info["splits"]["train"], "test": entry}
    (folder / "_info.json").write_text(json.dumps(info))
    with pytest.raises(MissingSplit, match=f"lists no split '{asked}' \\(its splits: train, test\\)"):
        wds_split(str(folder), asked)
