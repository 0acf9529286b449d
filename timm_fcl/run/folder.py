"""The layout of a training run folder, the one contract between training, evaluation and publishing.

    OUTPUT/
      model/           the last epoch's bare timm model: model.safetensors + config.json (``local-dir:`` loads it)
      model_ema/       the same for the EMA weights (--model-ema)
      model_best/      the same for the epoch with the best validation --eval-metric (the EMA's with --model-ema)
      best/epoch_E/    the same for each of the --checkpoint-hist best epochs (timm's checkpoint history)
                       (exports of the same weights share one model.safetensors: hard links, see export.py)
      checkpoints/     training states step_N/ (the --state-hist newest; safetensors + state.json, no pickles)
      args.yaml        the flags the run was started with
      resolved.yaml    what those flags resolved to (``Resolved``); a resume must resolve to the same
      summary.csv      one row per epoch (with the best epoch so far and its metric)
      best.json        the best epoch: metric, value, epoch, step, the split that chose it and the weights
      run.json         the run's identity (run id, model, when it started), written before anything else: a folder
                       holding it belongs to a train_fcl.py run, and train_fcl.py writes into no other non-empty folder
      .lock            held by the run writing the folder (host, pid, run id)
      holdout/         with --val-holdout N: the training shards carved into train and an N-image validation split
      eval/results.json  robustness results of the exported model (python -m timm_fcl.eval --output OUTPUT/eval)

A resume may change only the flags that change how a run goes, not what it computes (train_fcl.py declares them
``may_change_on_resume``; ``Resolved.settings`` leaves them out), and a run's epochs may only grow
(``setting_changes``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import yaml

from .atomic import atomic_write_text
from .cli import UsageError, first_line

MODEL = "model"
MODEL_EMA = "model_ema"
MODEL_BEST = "model_best"
BEST_EPOCHS = "best"  # best/epoch_E/: the --checkpoint-hist best epochs
STATES = "checkpoints"
ARGS = "args.yaml"
RESOLVED = "resolved.yaml"
SUMMARY = "summary.csv"
BEST = "best.json"
LOCK = ".lock"
MARKER = "run.json"
HOLDOUT = "holdout"  # --val-holdout: the training shards carved into train + validation
EVAL_RESULTS = os.path.join("eval", "results.json")
_EXPORTS = (MODEL, MODEL_EMA, MODEL_BEST)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """The names in ``folder`` that make it no run folder of this project's: everything when it holds no run.json
    (its lock files aside), else nothing. A run folder written before run.json existed (args.yaml and resolved.yaml
    beside checkpoints/ or the exports) counts as a run's."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / MARKER).exists():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.name != LOCK and not p.name.startswith(LOCK + "."))
    if {ARGS, RESOLVED} <= set(names) and (STATES in names or MODEL in names):
        return []
    return names


def claim(folder: str | os.PathLike, identity: dict) -> bool:
    """Write run.json (``identity``) into ``folder`` unless it holds one; True when written here."""
    path = Path(folder) / MARKER
    if path.exists():
        return False
    atomic_write_text(path, json.dumps(identity, indent=1) + "\n")
    return True


def is_export(path: str | os.PathLike) -> bool:
    """A folder holding an exported timm model (model.safetensors + config.json)."""
    path = Path(path)
    return (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def find_export(path: str | os.PathLike, *, ema: bool = False) -> Optional[Path]:
    """The export to use for ``path``: a run folder's model/ (model_ema/ with ``ema``), or an export folder itself."""
    path = Path(path)
    candidates = [path / MODEL_EMA] if ema else [path / MODEL, path]
    return next((c for c in candidates if is_export(c)), None)


def sibling_exports(export: str | os.PathLike) -> list[Path]:
    """The other exports of the run an export folder belongs to (model/, model_ema/, model_best/, best/epoch_E/),
    those that exist; [] for an export outside a run's layout."""
    path = Path(export)
    if path.name in _EXPORTS:
        run = path.parent
    elif path.parent.name == BEST_EPOCHS and path.name.startswith("epoch_"):
        run = path.parent.parent
    else:
        return []
    best = sorted(p for p in (run / BEST_EPOCHS).glob("epoch_*") if p.name[len("epoch_"):].isdigit())
    return [p for p in [run / name for name in _EXPORTS] + best if p != path and is_export(p)]


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
    """A run folder's YAML file as a mapping ({} when absent or empty); anything else is refused as one line."""
    if not path.is_file():
        return {}
    try:
        value = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exn:
        raise UsageError(f"{path} is not YAML ({first_line(exn)})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{path} is not a mapping of settings: it holds a {type(value).__name__}")
    return value


def read_args(run: str | os.PathLike) -> dict:
    """The flags a run was started with ({} when not recorded)."""
    return _read_yaml(Path(run) / ARGS)


def read_resolved(run: str | os.PathLike) -> dict:
    """What the run's flags resolved to, as ``Resolved.as_yaml`` wrote it ({} when not recorded)."""
    return _read_yaml(Path(run) / RESOLVED)


@dataclasses.dataclass
class Resolved:
    """What a run computes, as resolved.yaml holds it (its keys are these fields)."""
    settings: dict             # every flag that shapes the result, as given (not the may_change_on_resume ones)
    fcl: dict                  # every FCLConfig field, the schedule in steps
    fcl_schedule_epochs: dict  # the schedule's start and ramp in epochs
    lr: float
    num_classes: int
    data_config: dict
    world_size: int
    global_batch: int          # images per optimizer update over all processes
    updates_per_epoch: int
    epochs: int
    loader_streams: int        # the parts of each rank's training share, kept by a resume
    train_samples: int
    val_samples: int
    mixed_precision: str = "no"  # the accelerator's: --mixed-precision / --amp, else the launch config's

    def as_yaml(self) -> dict:
        """The fields as YAML reads them back (tuples become lists), so that a saved and a new one compare equal."""
        return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))


def resolved_text(resolved: dict) -> str:
    """resolved.yaml's text (``Resolved.as_yaml``)."""
    return yaml.safe_dump(resolved, sort_keys=False)


def write_settings(run: str | os.PathLike, args: dict, resolved: dict) -> None:
    """args.yaml (the flags as given) and resolved.yaml (``Resolved.as_yaml``)."""
    atomic_write_text(Path(run) / ARGS, yaml.safe_dump(args, sort_keys=False))
    atomic_write_text(Path(run) / RESOLVED, resolved_text(resolved))


def setting_changes(saved: dict, now: dict) -> list[str]:
    """'name old -> new' for each setting of ``now`` that differs from ``saved`` (names both know: a run saved by an
    older version lacks some); derived values (as section.name) only when no flag differs, as a flag explains them."""
    def diff(old: dict, new: dict, prefix: str) -> list[str]:
        return [f"{prefix}{k} {old[k]} -> {new[k]}" for k in old if k in new and old[k] != new[k]]

    flags = diff(saved.get("settings", {}), now.get("settings", {}), "")
    if flags or saved.get("world_size", now.get("world_size")) != now.get("world_size"):
        return flags  # another world size: load_training_state refuses it, saying why (each rank's own streams)
    changes = []
    for key, value in saved.items():
        if key in ("settings", "epochs") or key not in now:
            continue
        changes += diff(value, now[key], f"{key}.") if isinstance(value, dict) and isinstance(now[key], dict) \
            else diff({key: value}, {key: now[key]}, "")
    if now.get("epochs", 0) < saved.get("epochs", 0):
        changes.append(f"epochs {saved['epochs']} -> {now['epochs']} (a run's epochs may only grow)")
    return changes
