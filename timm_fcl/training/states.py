"""Training states of train_fcl.py, saved and found again crash-safely.

A training state is a folder checkpoints/step_N of safetensors files (timm_fcl.training.state_files): one per part (model,
optimizer, scheduler, EMA, progress, loss scaler), written by the main process since they are identical on every
rank, and rng_R.safetensors with the random streams of each process R (NAME_R.safetensors for any other part that
differs between processes, e.g. the epoch's loss meter); state.json, written last, lists them with their
sizes and SHA-256 digests. Nothing in it is pickled, so resuming from a planted or damaged folder can at worst fail to
parse it, and a file changed after the save (even to the same size) is caught by its digest before anything is loaded.

Every state is written to a temporary folder, flushed to the disk and renamed into place (timm_fcl.run.atomic), so a
run killed during a save leaves the previous good state untouched; older states are deleted only after a new
one is in place. A damaged newest state is passed over for the newest intact one.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from safetensors import SafetensorError

from ..run import folder as run_folder
from ..run.atomic import WriteError, file_sha256, swap_dir
from ..run.cli import UsageError, first_line
from . import rng
from .state_files import StateError, read_part, write_part

STATE_DIR = run_folder.STATES
STATE_PATTERN = re.compile(r"^step_(\d+)$")
STALE_PATTERN = re.compile(r"^\.step_(\d+)\.(tmp|old)$")
MANIFEST = "state.json"
FORMAT = "timm-fcl training state 2"
FORMAT_SIZES_ONLY = "timm-fcl training state 1"  # a manifest of sizes without digests: still resumed from

_logger = logging.getLogger(__name__)


def _rng_file(rank: int) -> str:
    return f"rng_{rank}.safetensors"


def _part_file(name: str) -> str:
    return f"{name}.safetensors"


def _present(parts: Mapping[str, Any]) -> dict:
    """The parts this run has (an EMA or a loss scaler only with the flags that make them)."""
    return {name: obj for name, obj in parts.items() if obj is not None}


# ----------------------------------------------------------------------------------------------------------- saving
def _rank_file(name: str, rank: int) -> str:
    return f"{name}_{rank}.safetensors"


def _write_manifest(folder: Path, step: int, world: int, parts: Sequence[str], rank_parts: Sequence[str]) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(folder.iterdir())}
    manifest = {"format": FORMAT, "step": step, "world_size": world, "parts": sorted(parts),
                "rank_parts": sorted(rank_parts), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


class SaveError(WriteError):
    """A training state could not be written (e.g. the disk is full): the newest complete state is kept; reported as
    one line."""


def _all_ok(accelerator, problem: Optional[str]) -> bool:
    """Whether no process met a problem (a collective when there are several, so every rank takes the same path)."""
    if accelerator.num_processes == 1:
        return problem is None
    failed = accelerator.reduce(torch.tensor([float(problem is not None)], device=accelerator.device),
                                reduction="sum")
    return int(failed.item()) == 0


def _give_up_save(accelerator, output, tmp: Path, step: int, problem: Optional[str]) -> SaveError:
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    newest = list_states(output)
    kept = f"the newest complete state ({newest[-1]}) is kept" if newest else "no earlier state exists"
    folder = Path(output) / STATE_DIR
    if folder.exists() and not folder.is_dir():  # not a disk problem: no space to free would help
        remedy = f"{folder} is a file, not a folder: move it away and run the same command to resume"
    else:
        remedy = "free space (or make the folder writable) and run the same command to resume"
    return SaveError(f"cannot save the training state of step {step}: {problem or 'another process could not write'}"
                     f"; {kept}: {remedy}")


def save_state_atomic(accelerator, output: str | os.PathLike, step: int, keep: int,
                      parts: Mapping[str, Any], rank_parts: Optional[Mapping[str, Any]] = None,
                      files: Optional[Mapping[str, str]] = None) -> Path:
    """Every part's state_dict (each an object with state_dict/load_state_dict; None for an absent one), each
    process's random streams and its own ``rank_parts``, and ``files`` (name: text, e.g. the run's resolved settings,
    so a state moved out of its run can still be checked), in a temporary folder renamed to checkpoints/step_N once
    all of it is on the disk; keeps the newest `keep` states. Called on every process. A write that fails on any process
    (a full disk) removes the unfinished folder on every process and raises :class:`SaveError`; the states saved
    before are untouched."""
    folder = Path(output) / STATE_DIR
    final, tmp = folder / f"step_{step:09d}", folder / f".step_{step:09d}.tmp"
    parts, rank_parts = _present(parts), _present(rank_parts or {})
    problem = None
    if accelerator.is_main_process:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as exn:
            problem = first_line(exn)
    accelerator.wait_for_everyone()
    try:
        if problem is None:
            write_part(tmp / _rng_file(accelerator.process_index), rng.capture(accelerator.device.type))
            for name, obj in rank_parts.items():
                write_part(tmp / _rank_file(name, accelerator.process_index), obj.state_dict())
            if accelerator.is_main_process:
                for name, obj in parts.items():
                    write_part(tmp / _part_file(name), obj.state_dict())
                for name, text in (files or {}).items():
                    (tmp / name).write_text(text)
    except (OSError, SafetensorError) as exn:  # safetensors reports a full disk as its own error
        problem = first_line(exn)
    if not _all_ok(accelerator, problem):
        raise _give_up_save(accelerator, output, tmp, step, problem)
    if accelerator.is_main_process:
        try:
            _write_manifest(tmp, step, accelerator.num_processes, list(parts), list(rank_parts))
            swap_dir(tmp, final)  # the same step is saved again at an epoch end right after an interval save
        except OSError as exn:
            problem = first_line(exn)
    if not _all_ok(accelerator, problem):
        raise _give_up_save(accelerator, output, tmp, step, problem)
    if accelerator.is_main_process:
        for stale in list_states(output)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------------------- finding
def list_states(path: str | os.PathLike) -> list[Path]:
    """Complete training states under an output folder (or its checkpoints/ folder), oldest first."""
    path = Path(path)
    folder = path / STATE_DIR if (path / STATE_DIR).is_dir() else path
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STATE_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _state_candidates(path: str | os.PathLike) -> list[Path]:
    """The states to resume from, newest first: a state folder itself, or the states of an output folder."""
    path = Path(path)
    if STATE_PATTERN.match(path.name) and path.is_dir():
        return [path]
    return list_states(path)[::-1]


def _remove_stale(output: str | os.PathLike) -> None:
    """Clear what a killed save leaves behind: an unfinished .step_N.tmp, and a .step_N.old (a state that was being
    replaced; put back when its replacement never got into place)."""
    folder = Path(output) / STATE_DIR
    for path in folder.iterdir() if folder.is_dir() else []:
        m = STALE_PATTERN.match(path.name)
        if m is None:
            continue
        final = folder / f"step_{m.group(1)}"
        if m.group(2) == "old" and not final.exists():
            os.replace(path, final)
            _logger.warning(f"{final} put back: the save that was replacing it did not finish")
        else:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- loading
def _read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest["format"] not in (FORMAT, FORMAT_SIZES_ONLY):
            raise ValueError(f"format {manifest['format']!r}")
        manifest["world_size"], manifest["parts"] = int(manifest["world_size"]), list(manifest["parts"])
        manifest["rank_parts"] = list(manifest.get("rank_parts", []))
        if manifest["format"] == FORMAT_SIZES_ONLY:
            manifest["files"] = {str(k): {"size": int(v), "sha256": None} for k, v in manifest["files"].items()}
        else:
            manifest["files"] = {str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])}
                                 for k, v in manifest["files"].items()}
        return manifest
    except FileNotFoundError:
        raise StateError(f"{MANIFEST} is missing (a state of accelerate's save_state holds pickles and is not "
                         f"loaded)") from None
    except Exception as exn:  # untrusted content
        raise StateError(f"{MANIFEST} is unreadable ({first_line(exn)})") from None


def read_state(folder: Path, needed: Sequence[str], rank: int, world: int,
               wanted_rank_parts: Sequence[str] = ()) -> tuple[dict, dict]:
    """The state_dicts of the `needed` parts, of those `wanted_rank_parts` the state holds (this process's own,
    under their names) and this process's random streams, each file checked; StateError when the state is damaged,
    UsageError when it cannot be this run's."""
    manifest = _read_manifest(folder)
    if manifest["world_size"] != world:
        raise UsageError(f"{folder} was saved by {manifest['world_size']} process(es) and this run has {world}: "
                         f"resume with as many (each keeps its own place in the data and random streams)")
    missing = [name for name in needed if name not in manifest["parts"]]
    if missing:
        raise UsageError(f"{folder} holds no {', '.join(missing)} state, which this run needs")
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise StateError(f"{name} is missing")
        if path.stat().st_size != expected["size"]:
            raise StateError(f"{name} has {path.stat().st_size} bytes instead of {expected['size']}")
        if expected["sha256"] is not None and file_sha256(path) != expected["sha256"]:
            raise StateError(f"{name} does not match its SHA-256 in {MANIFEST} (changed after it was saved)")
    states = {name: read_part(folder / _part_file(name)) for name in needed}
    states.update({name: read_part(folder / _rank_file(name, rank)) for name in wanted_rank_parts
                   if name in manifest["rank_parts"]})
    streams = read_part(folder / _rng_file(rank))
    try:
        rng.check(streams)
    except Exception as exn:  # untrusted content
        raise StateError(f"{_rng_file(rank)} holds no usable random streams ({first_line(exn)})") from None
    return states, streams


def _apply(folder: Path, states: dict, streams: dict, parts: Mapping[str, Any], device_type: str) -> None:
    for name, obj in parts.items():
        if name not in states:  # a rank part of a state saved before the run kept it: it starts afresh
            continue
        try:
            obj.load_state_dict(states[name])
        except (RuntimeError, KeyError, TypeError, ValueError) as exn:
            raise UsageError(f"{folder}: the saved {name} does not fit this run ({first_line(exn)})") from None
    rng.restore(streams, device_type)


def load_training_state(accelerator, parts: Mapping[str, Any], *, output: str | os.PathLike,
                        resume: str | os.PathLike = "", rank_parts: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """Load `resume` (a state folder, or an output folder's newest state) or else the newest state of `output` into
    `parts` and restore every process's random streams. The state used is the newest that every process finds intact;
    passing over a damaged one is logged with both names. None when there is no state; a UsageError when none is
    intact or the state does not fit this run."""
    if accelerator.is_main_process:
        _remove_stale(output)
    accelerator.wait_for_everyone()
    parts, rank_parts = _present(parts), _present(rank_parts or {})
    candidates = _state_candidates(resume or output)
    problems = []
    for folder in candidates:
        try:
            states, streams = read_state(folder, list(parts), accelerator.process_index, accelerator.num_processes,
                                         list(rank_parts))
            problem = None
        except StateError as exn:
            problem = str(exn)
            if not accelerator.is_main_process:  # the main process names it when it passes the state over
                _logger.warning(f"{folder} cannot be resumed from on process {accelerator.process_index}: {problem}")
        intact = accelerator.reduce(torch.tensor([problem is None], dtype=torch.float32, device=accelerator.device),
                                    reduction="sum")
        if int(intact.item()) == accelerator.num_processes:
            _apply(folder, states, streams, {**parts, **rank_parts}, accelerator.device.type)
            if folder != candidates[0] and accelerator.is_main_process:
                _logger.warning(f"resuming from {folder} instead of {candidates[0]}, which is damaged ({problems[0]})")
            return folder
        problems.append(problem or "damaged on another process")
    if candidates:
        raise StateError(f"no intact training state in {resume or output}: {candidates[0]}: {problems[0]}")
    return None
