"""summary.csv, one row per epoch, and the best epoch (model_best/, best.json): the columns are named here only."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable, Optional

from ..run import folder as run_folder
from ..run.atomic import atomic_write_text
from .build import Progress

EPOCH, STEP = "epoch", "step"


def _rounded(prefix: str, values: dict) -> dict:
    return {f"{prefix}_{k}": round(v, 6) if isinstance(v, float) else v for k, v in values.items()}


def epoch_row(progress: Progress, lr: float, train: dict, val: dict, skipped: list[int],
              ema: Optional[dict] = None) -> dict:
    """The summary row of a finished epoch: train_* means, eval_* (and ema_*) validation metrics, and the unreadable
    shards skipped and samples repeated to keep the ranks in step."""
    row = {EPOCH: progress.epoch, STEP: progress.step, "lr": lr, **_rounded("train", train), **_rounded("eval", val),
           "bad_shards": skipped[0], "repeated_samples": skipped[1]}
    return {**row, **_rounded("ema", ema)} if ema is not None else row


def read_summary(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def update_summary(path: Path, row: dict) -> None:
    """The CSV summary, one row per epoch; a re-run epoch (after a resume) replaces its row."""
    rows = [r for r in read_summary(path) if r.get(EPOCH) != str(row[EPOCH])]
    rows.append({k: str(v) for k, v in row.items()})
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def keep_best(eval_metric: str, output: Path, row: dict, export: Callable[[Path], object],
              split: str = "validation") -> None:
    """The best epoch so far by ``eval_metric`` (lower is better for the loss; the earliest of equals): exported to
    model_best/ when it is this one, recorded in this row (with the ``split`` that chose it) and in best.json.
    Earlier epochs come from summary.csv, so a resumed run keeps its best, and epochs a resume re-runs are judged
    again."""
    key = f"eval_{eval_metric}"
    sign = -1.0 if eval_metric == "loss" else 1.0
    earlier = [(int(r[EPOCH]), int(r[STEP]), float(r[key])) for r in read_summary(output / run_folder.SUMMARY)
               if r.get(key) and int(r[EPOCH]) < row[EPOCH]]
    epoch, step, value = max(sorted(earlier) + [(row[EPOCH], row[STEP], row[key])], key=lambda e: sign * e[2])
    if epoch == row[EPOCH]:
        export(output / run_folder.MODEL_BEST)
    row.update({"best_epoch": epoch, f"best_{key}": value, "best_chosen_on": split})
    best = {"eval_metric": eval_metric, "value": value, EPOCH: epoch, STEP: step, "chosen_on": split}
    atomic_write_text(output / run_folder.BEST, json.dumps(best, indent=2) + "\n")
