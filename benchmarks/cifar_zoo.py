"""The zoo of the CIFAR-10 benchmark: its seed-0 picks exported to ``zoo/ARCH.TAG/`` with their evaluation and the
model card that ``python -m hfhub.publish`` writes for them.

    python benchmarks/cifar_zoo.py      # after the seed-0 runs are evaluated (their run folders still there)

The evaluation (benchmarks/cifar_robustness.py --part eval) exports each pick as soon as it is measured, since run
folders do not outlive a part; this command re-exports the picks whose run folders still exist and removes a PG+FCL
entry that is not a pick.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Optional

from cifar_common import (METHODS, ZOO_SEED, ZOO_TAGS, Bench, add_protocol_arguments, chosen_hp, load_runs, sha256,
                          t2_value, t3_value)
from timm_fcl.run import folder as run_folder


def zoo_picks(runs: dict) -> list[str]:
    """The methods the zoo publishes, each as its ZOO_SEED run (a seed fixed before any result, so nothing is picked on
    the test set): FCL and its XE twin, and PG+FCL when it beats PG+XE on the mean (over seeds) test UN, NUN and
    CIFAR-10-C accuracy."""
    if ZOO_SEED not in (runs.get("fcl") or {}):
        raise RuntimeError(f"no evaluated seed-{ZOO_SEED} FCL run yet: run --part continue eval first")
    picks = ["fcl"] + (["xe"] if ZOO_SEED in runs.get("xe", {}) else [])
    pg, pg_xe = runs.get("pg_fcl") or {}, runs.get("pg_xe") or {}

    def avg(entries: dict, value, col: str) -> float:
        return statistics.mean(value(e, col) for e in entries.values())

    if ZOO_SEED in pg and pg_xe and all(avg(pg, v, c) > avg(pg_xe, v, c) for v, c in
                                        ((t2_value, "un"), (t2_value, "nun"), (t3_value, "mean"))):
        picks.append("pg_fcl")
    return picks


def export_to_zoo(b: Bench, run: Path, dest: Path) -> Path:
    """zoo/ARCH.TAG/: the run's export, settings and evaluation, and the model card hfhub.publish writes for them
    (nothing is rewritten when the folder holds that export and evaluation already)."""
    import timm

    import timm_fcl  # noqa: F401  (registers the zoo's tags)
    from hfhub.publish import cli as publish

    export = run / run_folder.MODEL
    files = ((export / run_folder.WEIGHTS, run_folder.WEIGHTS), (export / run_folder.CONFIG, run_folder.CONFIG),
             (run / run_folder.ARGS, run_folder.ARGS), (run / run_folder.RESOLVED, run_folder.RESOLVED),
             (run / run_folder.EVAL_RESULTS, run_folder.EVAL_RESULTS))
    if (dest / "README.md").is_file() and all((dest / rel).is_file() and sha256(dest / rel) == sha256(src)
                                              for src, rel in files):
        print(f"zoo: {dest} holds {run.name} already")
        return dest
    repo_id = timm.models.get_pretrained_cfg(dest.name).hf_hub_id
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "eval").mkdir(parents=True)
    for src, rel in files:
        shutil.copyfile(src, dest / rel)
    with tempfile.TemporaryDirectory() as tmp, open(b.work / "zoo.log", "a") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        card = Path(tmp) / "card"  # the card publishing writes, made in this process (no interpreter to start)
        if publish([str(dest), "--repo-id", repo_id, "--dry-run", str(card)]) != 0:
            raise RuntimeError(f"publishing {dest} failed: see {b.work / 'zoo.log'}")
        shutil.copyfile(card / "README.md", dest / "README.md")
    print(f"zoo: {dest} ({run.name}) -> {repo_id}")
    return dest


def part_zoo(b: Bench) -> None:
    """The zoo's continuations: each pick re-exported while its run folder exists (an evaluation exports it as soon as
    it is measured, since run folders do not outlive a part); a PG+FCL entry that is not a pick is removed."""
    picks = zoo_picks(load_runs(b))
    for name in ZOO_TAGS:
        run, dest = b.run_dir(name, chosen_hp(b, name), ZOO_SEED), b.zoo_dir(name)
        if name in picks and (run / run_folder.EVAL_RESULTS).is_file():
            export_to_zoo(b, run, dest)
        elif name in picks and not (dest / run_folder.WEIGHTS).is_file():
            raise RuntimeError(f"{dest} is missing and {run} is gone: run --part continue eval --seeds {ZOO_SEED} "
                               f"--methods {name} again")
        elif name not in picks and dest.exists():
            shutil.rmtree(dest)
            print(f"zoo: removed {dest} ({METHODS[name].label} is not a pick)")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(p)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    part_zoo(Bench(get_args_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
