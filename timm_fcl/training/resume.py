"""Starting or resuming a run: the run a resume continues, the check that it resolves to the same settings, loading
its newest intact state, recording the settings with each save, and starting the trackers."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..run import folder as run_folder
from .build import Data, Training
from .flags import ConfigError
from .states import MANIFEST as STATE_MANIFEST, list_states, load_training_state

if TYPE_CHECKING:
    from accelerate import Accelerator

_logger = logging.getLogger("train_fcl")


def previous_run(args: argparse.Namespace, output: Path) -> tuple[Optional[Path], dict]:
    """The run a start continues and what its flags resolved to, which the start must resolve to as well:
    --resume's run (or its state folder, moved out of the run, with the resolved.yaml saved in it), else --output's
    own run, also when its states are gone (resolved.yaml stays); (None, {}) for a new run. Resuming another run's
    state into an --output that holds a run of its own is refused: the two runs' states would mix."""
    if args.resume:
        source = Path(args.resume)
        folder = source.parent.parent if source.parent.name == run_folder.STATES else source
        if folder.resolve() != Path(output).resolve() and _holds_a_run(output):
            raise ConfigError(f"--resume {args.resume} is another run's state, but --output {output} holds a run of its "
                              f"own: resume into a new --output (or resume {output} itself)")
        if (source / STATE_MANIFEST).is_file() and source.parent.name != run_folder.STATES:
            if not (source / run_folder.RESOLVED).is_file():
                raise ConfigError(f"--resume {args.resume}: this state folder, outside its run's {run_folder.STATES}/, "
                                  f"holds no {run_folder.RESOLVED} to check the settings against: resume it from its "
                                  f"run folder")
            return source, run_folder.read_resolved(source)
        return (folder, run_folder.read_resolved(folder)) if list_states(folder) else (None, {})
    if list_states(output) or (Path(output) / run_folder.RESOLVED).is_file():
        return output, run_folder.read_resolved(output)
    return None, {}


def _holds_a_run(output: Path) -> bool:
    return bool(list_states(output)) or (Path(output) / run_folder.RESOLVED).is_file()


def record_settings(args: argparse.Namespace, run: Training) -> None:
    """args.yaml and resolved.yaml of this start, written with each of its saves (main process): they describe what
    the saved states and exports were made with, and a start that saves nothing changes nothing."""
    run_folder.write_settings(run.output, vars(args), run.settings)


def schedule_has_state(scheduler) -> bool:
    """Whether a scheduler holds state beyond its settings (timm's plateau scheduler: the metric history that decides
    its next decay), so that it is restored on resume; the others are functions of the epoch and update count and of
    their settings, the number of epochs among them."""
    return type(scheduler).__name__ == "PlateauLRScheduler"


def resume_or_start(args: argparse.Namespace, accelerator: Accelerator, run: Training, data: Data,
                    previous: tuple[Optional[Path], dict] = (None, {})) -> None:
    """Load the newest state of --resume (or of the run folder) if it was made with the same settings (what the run
    computes, ``run.settings``); start the trackers."""
    world = accelerator.num_processes
    resolved = run.settings
    changes = run_folder.setting_changes(previous[1], resolved) if previous[0] is not None else []
    if changes:
        raise ConfigError(f"resume with other settings than the run in {previous[0]}: {', '.join(changes)}")
    parts = run.state_parts(accelerator)
    if args.no_resume_opt:  # timm's: the weights and progress, a fresh optimizer (the scheduler follows the epoch)
        parts = {k: v for k, v in parts.items() if k not in ("optimizer", "scheduler")}
    saved_epochs = previous[1].get("epochs") if previous[0] is not None else None
    if saved_epochs is not None and saved_epochs != run.num_epochs and "scheduler" in parts \
            and not schedule_has_state(run.scheduler):
        # the saved scheduler carries the old length (a cosine would end at the old last epoch): the one built for
        # the new length is the schedule a run of that length follows, from the resume point on
        parts = {k: v for k, v in parts.items() if k != "scheduler"}
        if accelerator.is_main_process:
            _logger.info(f"--epochs grew from {saved_epochs} to {run.num_epochs}: the --sched {args.sched} schedule "
                         f"is rebuilt for {run.num_epochs} epochs (the saved one is not loaded)")
    resume = load_training_state(accelerator, parts, output=run.output, resume=args.resume, rank_parts=run.rank_parts())
    if args.resume and resume is None:
        raise ConfigError(f"--resume {args.resume}: no saved state there")
    if resume is not None:
        if accelerator.is_main_process:
            p = run.progress
            _logger.info(f"resumed from {resume}: epoch {p.epoch}, batch {p.batch}, step {p.step}")
    if accelerator.is_main_process:
        _logger.info(f"{args.model}: {data.num_classes} classes, {world} process(es), {len(data.train)} batches of "
                     f"{args.batch_size} per process and epoch, {run.num_epochs} epochs, method {args.method}, "
                     f"output {run.output}")
        if run.progress.epoch >= run.num_epochs:
            _logger.info(f"all {run.num_epochs} epochs are done in {run.output}; raise --epochs to train on")
    start_trackers(args, accelerator, run.output, resolved)


def _flat(values: dict, prefix: str = "") -> dict:
    """Nested settings as trackers take hyper-parameters: dotted names, values bool / int / float / str."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def start_trackers(args: argparse.Namespace, accelerator: Accelerator, output: Path, resolved: dict) -> None:
    """Start every tracker with the run's settings as its hyper-parameters: the flags and what they resolved to."""
    config = {**_flat(vars(args)), **_flat(resolved, "resolved.")}
    wandb = {"name": output.name, "dir": str(output), "tags": list(args.wandb_tags) or None}
    if args.wandb_resume_id:
        wandb.update(id=args.wandb_resume_id, resume="must")
    accelerator.init_trackers(args.wandb_project or args.experiment or "timm-fcl", config=config,
                              init_kwargs={"wandb": wandb})
