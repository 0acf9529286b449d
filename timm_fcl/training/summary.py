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
    """The summary row of a finished epoch: train_* means, eval_* validation metrics of the weights that are judged,
    and ``skipped``: the unreadable shards skipped, the samples repeated to keep the ranks in step, the undecodable
    training images replaced and the undecodable validation images left out. With an EMA (``ema``), eval_* are the
    EMA's, as in timm's summary, and the trained weights' own are raw_eval_*."""
    evals = {**_rounded("eval", ema), **_rounded("raw_eval", val)} if ema is not None else _rounded("eval", val)
    return {EPOCH: progress.epoch, STEP: progress.step, "lr": lr, **_rounded("train", train), **evals,
            "bad_shards": skipped[0], "repeated_samples": skipped[1], "replaced_undecodable": skipped[2],
            "val_undecodable_left_out": skipped[3]}


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


def better_first(eval_metric: str) -> Callable[[tuple[int, int, float]], tuple[float, int]]:
    """The sort key of (epoch, step, value) entries, best first as timm ranks them: lower is better for the loss,
    higher for the others; of equal values the earlier epoch comes first."""
    sign = 1.0 if eval_metric == "loss" else -1.0
    return lambda entry: (sign * entry[2], entry[0])


def judged_epochs(output: Path, eval_metric: str, row: dict) -> list[tuple[int, int, float]]:
    """(epoch, step, value of eval_``eval_metric``) of the epochs summary.csv holds before the row's, then the row's
    own: what the best epochs are chosen from (a resume's re-run epochs are judged again)."""
    key = f"eval_{eval_metric}"
    earlier = [(int(r[EPOCH]), int(r[STEP]), float(r[key])) for r in read_summary(output / run_folder.SUMMARY)
               if r.get(key) and int(r[EPOCH]) < row[EPOCH]]
    return sorted(earlier) + [(row[EPOCH], row[STEP], row[key])]


def keep_best(eval_metric: str, output: Path, row: dict, export: Callable[[Path], object],
              split: str = "validation", weights: str = "model") -> None:
    """The best epoch so far by the row's eval_``eval_metric`` (lower is better for the loss; the earliest of
    equals): exported to model_best/ when it is this one, recorded in this row (with the ``split`` that chose it)
    and in best.json, which also names the ``weights`` that scored and were exported ("model", or "ema" under
    --model-ema). Earlier epochs come from summary.csv, so a resumed run keeps its best."""
    key = f"eval_{eval_metric}"
    epoch, step, value = min(judged_epochs(output, eval_metric, row), key=better_first(eval_metric))
    if epoch == row[EPOCH]:
        export(output / run_folder.MODEL_BEST)
    row.update({"best_epoch": epoch, f"best_{key}": value, "best_chosen_on": split})
    best = {"eval_metric": eval_metric, "value": value, EPOCH: epoch, STEP: step, "chosen_on": split,
            "weights": weights}
    atomic_write_text(output / run_folder.BEST, json.dumps(best, indent=2) + "\n")
