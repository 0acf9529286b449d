"""The layout of a training run folder, the one contract between training, evaluation and publishing.

    OUTPUT/
      model/           the last epoch's bare timm model: model.safetensors + config.json (``local-dir:`` loads it)
      model_ema/       the same for the EMA weights (--model-ema)
      model_best/      the same for the epoch with the best validation --eval-metric (the trained weights')
      checkpoints/     training states step_N/ (the newest few; safetensors + state.json, no pickles), for resuming
      args.yaml        the flags the run was started with
      resolved.yaml    what those flags resolved to: FCLConfig (schedule in steps), lr, classes, data, world size
      summary.csv      one row per epoch (with the best epoch so far and its metric)
      best.json        the best epoch: metric, value, epoch, step
      .lock            held by the run writing the folder (host, pid, run id)
      eval/results.json  robustness results of the exported model (python -m timm_fcl.eval --output OUTPUT/eval)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import yaml

MODEL = "model"
MODEL_EMA = "model_ema"
MODEL_BEST = "model_best"
STATES = "checkpoints"
ARGS = "args.yaml"
RESOLVED = "resolved.yaml"
SUMMARY = "summary.csv"
BEST = "best.json"
LOCK = ".lock"
EVAL_RESULTS = os.path.join("eval", "results.json")
_EXPORTS = (MODEL, MODEL_EMA, MODEL_BEST)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def is_export(path: str | os.PathLike) -> bool:
    """A folder holding an exported timm model (model.safetensors + config.json)."""
    path = Path(path)
    return (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def find_export(path: str | os.PathLike, *, ema: bool = False) -> Optional[Path]:
    """The export to use for ``path``: a run folder's model/ (model_ema/ with ``ema``), or an export folder itself."""
    path = Path(path)
    candidates = [path / MODEL_EMA] if ema else [path / MODEL, path]
    return next((c for c in candidates if is_export(c)), None)


def run_name(export: str | os.PathLike) -> str:
    """A short name for an export in tables: its run folder's name for model/, model_ema/ and model_best/, else its
    own."""
    path = Path(export).resolve()
    return path.parent.name if path.name in _EXPORTS else path.name


def run_of(export: str | os.PathLike) -> Path:
    """The run folder an export belongs to (the export itself when it is not one of a run's exports)."""
    path = Path(export)
    return path.parent if path.name in _EXPORTS else path


def _read_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_args(run: str | os.PathLike) -> dict:
    """The flags a run was started with ({} when not recorded)."""
    return _read_yaml(Path(run) / ARGS)


def read_resolved(run: str | os.PathLike) -> dict:
    """What the run's flags resolved to ({} when not recorded): ``settings`` (every flag that shapes the result, as
    given), ``fcl`` (every FCLConfig field, the schedule in steps), ``fcl_schedule_epochs``, ``lr``, ``num_classes``,
    ``data_config``, ``world_size``, ``global_batch``, ``updates_per_epoch``, ``epochs``, ``loader_streams``,
    ``train_samples``."""
    return _read_yaml(Path(run) / RESOLVED)
