"""Crash-safe files for train_fcl.py: training states (accelerate save_state), the exported timm model
(model.safetensors + config.json), and small text files.

Every write goes to a temporary name in the same folder and is renamed into place, so a run killed during a
save leaves the previous good state (or export) untouched; older states are deleted only after a new one is in place.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save_file

from ._compat import save_timm_config

STATE_DIR = "checkpoints"
STATE_PATTERN = re.compile(r"^step_(\d+)$")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _swap_dir(tmp: Path, final: Path) -> None:
    """Put a finished folder in place of `final`; the old one is removed only after the new one is there."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def list_states(path: str | os.PathLike) -> list[Path]:
    """Complete training states under an output folder (or its checkpoints/ folder), oldest first."""
    path = Path(path)
    folder = path / STATE_DIR if (path / STATE_DIR).is_dir() else path
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STATE_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_state(path: str | os.PathLike) -> Optional[Path]:
    """A state folder itself, or the newest state of an output folder; None when there is none."""
    path = Path(path)
    if STATE_PATTERN.match(path.name) and path.is_dir():
        return path
    states = list_states(path)
    return states[-1] if states else None


def save_state_atomic(accelerator, output: str | os.PathLike, step: int, keep: int) -> Path:
    """accelerator.save_state into a temporary folder, renamed to checkpoints/step_N; keeps the newest `keep`.

    Called on every process (each writes its RNG state); the main process renames and prunes.
    """
    folder = Path(output) / STATE_DIR
    final = folder / f"step_{step:09d}"
    tmp = folder / f".step_{step:09d}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (epoch end right after an interval save)
            _swap_dir(tmp, final)
        else:
            os.replace(tmp, final)
        for stale in list_states(output)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def export_model(model: torch.nn.Module, directory: str | os.PathLike, *, data_config: dict,
                 label_names: Optional[Sequence[str]] = None) -> Path:
    """The bare timm model as model.safetensors + timm config.json, loadable by plain timm with
    `timm.create_model("local-dir:DIRECTORY", pretrained=True)`; replaced atomically as a folder."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # safetensors needs contiguous tensors (channels_last weights are not) and no shared storage
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    model_config = {"label_names": list(label_names)} if label_names else None
    save_timm_config(model, str(tmp / "config.json"), model_config=model_config, data_config=data_config)
    _swap_dir(tmp, directory)
    return directory
