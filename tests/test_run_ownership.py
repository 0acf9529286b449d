"""A run folder is owned: train_fcl.py writes into a non-empty folder only if a run of its own wrote it (run.json), and
a start that continues a run is checked against the settings that run recorded, wherever its state comes from."""
from __future__ import annotations

import json
import shutil

from train_helpers import TOY_RUN, one_error_line, run, train_cmd, trained_run, tree_digest

FLAGS = [*TOY_RUN, "-b", "16", "--workers", "0", "--method", "xe", "--epochs", "1", "--train-subset", "48",
         "--val-subset", "16", "--checkpoint-interval", "1", "--state-hist", "5", "--checkpoint-hist", "1"]


def _start(toy, out, *extra):
    return run(train_cmd(*FLAGS, *extra, "--data-dir", str(toy), "--output", str(out)))


def test_output_onto_a_folder_of_the_users_own_files_is_refused_and_keeps_every_byte(toy, tmp_path):
    """--output onto a folder without checkpoints/ overwrote it with rc 0: the user's model/ package was swapped for
    the export, best/epoch_0/ pruned, args.yaml and best.json overwritten, summary.csv merged. Now: one line, and
    every byte of the folder as it was."""
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "__init__.py").write_text("def my_model(): ...\n")
    (mine / "best" / "epoch_0").mkdir(parents=True)
    (mine / "best" / "epoch_0" / "notes.txt").write_text("mine\n")
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "best.json").write_text('{"mine": true}\n')
    (mine / "summary.csv").write_text("epoch,mine\n0,1\n")
    before = tree_digest(mine)
    proc = _start(toy, mine)
    line = one_error_line("own files", proc.returncode, proc.stderr)
    assert "holds files that no train_fcl.py run wrote (best, best.json, model, notes.txt and 1 more)" in line, line
    assert tree_digest(mine) == before and sorted(p.name for p in mine.iterdir()) == \
        ["best", "best.json", "model", "notes.txt", "summary.csv"]


def test_a_new_run_claims_its_folder_first_and_a_failed_start_leaves_nothing(toy, tmp_path):
    out = tmp_path / "run"
    trained_run(out, toy, FLAGS)
    marker = json.loads((out / "run.json").read_text())
    assert marker["model"] == "resnet18" and len(marker["run_id"]) == 32
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _start(toy, empty, "--model", "resnet181")  # refused after the folder was claimed? never: nothing is left
    one_error_line("unknown model", proc.returncode, proc.stderr)
    assert list(empty.iterdir()) == []


def test_a_run_whose_states_were_removed_is_still_checked_against_its_settings(toy, tmp_path):
    """A finished run whose checkpoints/ was removed to save space was trained over as if new, with another --method,
    its best exports deleted. Now its recorded settings decide: another --method is refused, nothing changed; the
    same flags train the same run again."""
    out = trained_run(tmp_path / "run", toy, FLAGS)
    shutil.rmtree(out / "checkpoints")
    before = tree_digest(out)
    proc = _start(toy, out, "--method", "fcl")
    line = one_error_line("other method", proc.returncode, proc.stderr)
    assert "other settings" in line and "method xe -> fcl" in line, line
    assert tree_digest(out) == before
    proc = _start(toy, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints").is_dir()


def test_resuming_another_runs_state_into_an_existing_run_is_refused(toy, tmp_path):
    """--resume of run A's state with --output B, B a run of its own: B's new states were pruned and a later plain run
    of B continued A's newest state. Now refused in one line, B untouched; into a new folder it resumes."""
    a = trained_run(tmp_path / "a", toy, FLAGS)
    b = trained_run(tmp_path / "b", toy, [*FLAGS, "--seed", "7"])
    state = sorted((a / "checkpoints").iterdir())[0]
    before = tree_digest(b)
    proc = _start(toy, b, "--resume", str(state))
    line = one_error_line("resume into another run", proc.returncode, proc.stderr)
    assert "is another run's state, but --output" in line and "holds a run of its own" in line, line
    assert tree_digest(b) == before
    proc = _start(toy, tmp_path / "c", "--resume", str(state))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {state}: epoch 0, batch 1, step 1" in proc.stderr  # A's first state, continued in c


def test_a_state_moved_out_of_its_run_is_checked_against_the_settings_saved_with_it(toy, tmp_path):
    """--resume of a state folder outside its run's checkpoints/ skipped the settings check; each state now carries
    the run's resolved.yaml, and it is checked."""
    a = trained_run(tmp_path / "a", toy, FLAGS)
    moved = tmp_path / "moved_state"
    shutil.copytree(sorted((a / "checkpoints").iterdir())[0], moved)
    assert (moved / "resolved.yaml").is_file()
    proc = _start(toy, tmp_path / "c", "--resume", str(moved), "--method", "fcl")
    line = one_error_line("moved state, other method", proc.returncode, proc.stderr)
    assert "method xe -> fcl" in line, line
    (moved / "resolved.yaml").unlink()
    proc = _start(toy, tmp_path / "d", "--resume", str(moved))
    assert "holds no resolved.yaml to check the settings against" in one_error_line("no settings", proc.returncode,
                                                                                      proc.stderr)
