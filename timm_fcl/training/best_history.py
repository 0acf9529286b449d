"""timm's --checkpoint-hist: the N best epochs by --eval-metric, each kept as an export folder best/epoch_E/
(model.safetensors + config.json of the weights that scored, as model_best/ holds the best one).

The ranking is read back from the disk every epoch: the kept epochs are the best/epoch_E/ folders, their values the
judged eval_ column of summary.csv, so a resumed run goes on ranking where it stopped. Each export is written whole
under a temporary name and renamed into place, and a folder leaves the ranking by a rename before it is deleted, so
best/ only ever shows complete exports; what a killed run left (a temporary or half-deleted folder, the export of an
epoch the resume runs again) is cleared at the next epoch's end."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

from ..run import folder as run_folder
from .summary import EPOCH, better_first, judged_epochs

EPOCH_DIR = re.compile(r"^epoch_(\d+)$")
LEFTOVER = re.compile(r"^\.epoch_\d+\.(tmp|old|del)$")


def epoch_dir(output: Path, epoch: int) -> Path:
    """Where the export of a kept epoch lives."""
    return output / run_folder.BEST_EPOCHS / f"epoch_{epoch}"


def kept_epochs(output: Path) -> dict[int, Path]:
    """The best/epoch_E/ folders of a run, by epoch."""
    folder = output / run_folder.BEST_EPOCHS
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in folder.iterdir() if (m := EPOCH_DIR.match(p.name)) and p.is_dir()}


def _discard(path: Path) -> None:
    """Remove a folder of best/ without ever showing it half deleted: renamed away first, then deleted."""
    gone = path.with_name(f".{path.name}.del") if EPOCH_DIR.match(path.name) else path
    if gone != path:
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def keep_best_epochs(eval_metric: str, output: Path, row: dict, export: Callable[[Path], object],
                     keep: int) -> list[int]:
    """Keep the ``keep`` best epochs so far as best/epoch_E/, ranked as timm's checkpoint saver ranks them (lower is
    better for the loss; of equal values the earlier epoch stays): the row's epoch is exported when it ranks among
    them, then every other folder of best/ is removed (an epoch that fell out, one a resume runs again, a killed
    write's leftovers). Returns the kept epochs, best first."""
    on_disk = kept_epochs(output)
    candidates = [e for e in judged_epochs(output, eval_metric, row) if e[0] in on_disk or e[0] == row[EPOCH]]
    kept = [e[0] for e in sorted(candidates, key=better_first(eval_metric))[:keep]]
    if row[EPOCH] in kept:
        export(epoch_dir(output, row[EPOCH]))
    folder = output / run_folder.BEST_EPOCHS
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = EPOCH_DIR.match(path.name)
        if (m is not None and int(m.group(1)) not in kept) or LEFTOVER.match(path.name):
            _discard(path)
    return kept
