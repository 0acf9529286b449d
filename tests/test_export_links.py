"""A run's identical exports are stored once: model/, model_best/ and best/epoch_E/ of the same weights share one
model.safetensors (a hard link; a copy where the file system has none), and replacing or removing one export leaves
the others' files as they were."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import timm
import torch

from timm_fcl.run import export
from timm_fcl.run import folder as run_folder
from train_helpers import TOY_RUN, run, train_cmd

WEIGHTS = run_folder.WEIGHTS


def du(path: Path) -> int:
    """What ``du -s`` counts, in bytes: the blocks of every file and folder under ``path``, each inode once."""
    seen, total = set(), 0
    for p in [path, *path.rglob("*")]:
        st = p.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=3)


def export_to(model: torch.nn.Module, folder: Path) -> Path:
    return export.export_model(model, folder, data_config=timm.data.resolve_model_data_config(model))


def test_a_short_run_stores_its_identical_exports_once(toy, tmp_path):
    """A 20-step resnet18 run (one epoch, so it is its own best) with --checkpoint-hist 1: model/, model_best/ and
    best/epoch_0/ hold one weights file, and the folder weighs one export plus its training states."""
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY_RUN, "-b", "8", "--train-subset", "160", "--val-subset", "16", "--epochs", "1",
                         "--workers", "0", "--checkpoint-hist", "1", "--data-dir", str(toy), "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (out / run_folder.STATES).iterdir()] == ["step_000000020"]  # 160 images / 8: 20 steps
    exports = [out / run_folder.MODEL, out / run_folder.MODEL_BEST, out / run_folder.BEST_EPOCHS / "epoch_0"]
    inodes = {(e / WEIGHTS).stat().st_ino for e in exports}
    assert len(inodes) == 1 and (out / run_folder.MODEL / WEIGHTS).stat().st_nlink == 3
    one_export, states = du(out / run_folder.MODEL), du(out / run_folder.STATES)
    assert one_export > 40 * 2 ** 20  # resnet18's weights: a second copy could not hide in the margin below
    assert du(out) <= one_export + states + 2 ** 20  # + the small files (settings, summary, logs, configs)


def test_identical_weights_are_linked_and_different_ones_are_not(tmp_path):
    a, b = tiny_model(0), tiny_model(1)
    best = export_to(a, tmp_path / run_folder.MODEL_BEST)
    hist = export_to(a, tmp_path / run_folder.BEST_EPOCHS / "epoch_3")
    last = export_to(b, tmp_path / run_folder.MODEL)
    assert os.path.samefile(best / WEIGHTS, hist / WEIGHTS)
    assert not os.path.samefile(best / WEIGHTS, last / WEIGHTS)
    # an export outside a run's layout has no siblings: a file of its own
    alone = export_to(a, tmp_path / "elsewhere" / "export")
    assert (alone / WEIGHTS).stat().st_nlink == 1
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # no temporary link or folder left


def test_replacing_or_removing_one_export_leaves_the_others_unchanged(tmp_path):
    a, b = tiny_model(0), tiny_model(1)
    best = export_to(a, tmp_path / run_folder.MODEL_BEST)
    last = export_to(a, tmp_path / run_folder.MODEL)
    assert os.path.samefile(best / WEIGHTS, last / WEIGHTS)
    kept = (best / WEIGHTS).read_bytes()
    export_to(b, last)  # the next epoch's model/: other weights
    assert (best / WEIGHTS).read_bytes() == kept and (last / WEIGHTS).read_bytes() != kept
    assert (best / WEIGHTS).stat().st_nlink == 1
    export_to(a, last)  # the same weights again: linked again
    shutil.rmtree(best)
    assert (last / WEIGHTS).read_bytes() == kept


def test_where_the_file_system_refuses_a_link_the_export_is_a_copy(tmp_path, monkeypatch):
    a = tiny_model(0)
    best = export_to(a, tmp_path / run_folder.MODEL_BEST)

    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    last = export_to(a, tmp_path / run_folder.MODEL)
    assert not os.path.samefile(best / WEIGHTS, last / WEIGHTS)
    assert (last / WEIGHTS).read_bytes() == (best / WEIGHTS).read_bytes()
    assert sorted(p.name for p in last.iterdir()) == sorted(p.name for p in best.iterdir())


@pytest.mark.parametrize("name", [run_folder.MODEL, run_folder.MODEL_EMA, run_folder.MODEL_BEST, "best/epoch_12"])
def test_the_siblings_of_an_export_are_the_runs_other_exports(tmp_path, name):
    for folder in (run_folder.MODEL, run_folder.MODEL_EMA, run_folder.MODEL_BEST, "best/epoch_12", "best/epoch_3"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / WEIGHTS).write_bytes(b"")
        (tmp_path / folder / run_folder.CONFIG).write_text("{}")
    (tmp_path / "best" / ".epoch_4.tmp").mkdir()  # a killed write's leftover is no export
    siblings = run_folder.sibling_exports(tmp_path / name)
    assert tmp_path / name not in siblings and len(siblings) == 4
    assert run_folder.sibling_exports(tmp_path / "best") == []
