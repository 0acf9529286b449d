"""CIFAR-10 robustness: the paper's Tables 2 and 3 (section 4.2, Appendix B) scaled to a 2-core CPU; this command runs
the training and evaluation parts.

The paper trains ResNet-56 for 450 epochs and switches FCL and CL+Gaussian on after 300. Here one cross-entropy
pre-training of a CIFAR ResNet (``--pretrain-epochs``, lr 0.1 decayed x0.1 at 2/3) is shared by every method, and
each method continues from it for ``--continue-epochs`` (default 24) at ``--continue-lr`` (default 0.01, x0.1 at 2/3)
with its extra term on from the first step (contrastive terms ramped over half the continuation): the protocol that
passed its check on the validation split, where 6 epochs at lr 0.001 (the paper's lr after epoch 300, relative to its
peak) showed no regularizer's effect (benchmarks/LOG.md). The methods are XE, XE+Gaussian, CL+Gaussian, FCL,
Patch Gaussian + XE and Patch Gaussian + FCL (Patch Gaussian only in the continuation: the pre-training is shared), and
four FCL variants the paper does not have, at FCL's settings: every 4 and every 16 steps (the cheap mode),
``negatives="other_class"``, and ``selection="random"`` (the control for the utility). Under ``--grid equal-budget``
every 4 and other_class stay at the FCL setting they ran at (``PINNED``). Every run goes through train_fcl.py with
the standard CIFAR augmentation (--crop-pad 4), by default in bf16 autocast with channels-last (``--precision``),
every evaluation through ``python -m timm_fcl.eval``.
The pre-training is evaluated like the continuations and exported to ``zoo/ARCH.xe_pretrain_cifar10``; once that
folder is committed, every later part starts its continuations from it, so a part needs only the repository and the
data.

Pairing: a seed gives every method the same start (the pre-trained weights) and the same data order and crops.
Hyper-parameters are chosen on a validation split carved from the training shards (``timm_fcl.data.holdout``), by the
mean of validation UN and NUN accuracy among settings whose clean validation accuracy is within 1 point of XE's;
the sweep runs are the seed-0 continuation runs, so the chosen setting's seed-0 run is reused. CL+Gaussian and PG+FCL
take Appendix B's settings unless ``--paper-settings`` names other methods.

Parts (each resumable; a finished run's results JSON under benchmarks/results/cifar_robustness/ marks it done):

    python benchmarks/cifar_robustness.py --part carve pretrain           # held-out split + shared XE pre-training
    python benchmarks/cifar_robustness.py --part sweep --methods xe xe_gauss fcl   # validation sweep (seed 0)
    python benchmarks/cifar_robustness.py --part continue eval --eval-each --seeds 0 1 2
    python benchmarks/cifar_robustness.py --part continue eval --eval-each --redo-without-hits --methods xe  # again
    python benchmarks/cifar_tables.py --readme benchmarks/cifar_robustness/README.md --headline README.md  # tables
    python benchmarks/cifar_zoo.py                                        # the zoo (also --part tables zoo here)

Every results JSON records the commit of the code that trained and evaluated it: run the parts from a ``git worktree``
at a fixed commit. ``--hours`` stops a part at a wall-time limit: a training run still going then gets SIGTERM, saves
its state and stops (up to two minutes later), and the same command resumes it. Every accuracy is in percent; for new
evaluations each result also keeps which test images the model got right (``hits``; see ``condense``).
benchmarks/cifar_robustness/README.md holds the protocol, the tables and the plan; benchmarks/LOG.md how the parts ran.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from cifar_common import (METHODS, MIN_GAUSS_GAIN, PLAN_PARTS, REPO, SUITES, SWEEP_SEED, SWEEPS, ZOO_SEED, ZOO_TAGS,
                          Bench, Method, add_protocol_arguments, chosen_hp, earlier_result, read_json, read_result,
                          result_done, run_result, sha256, sweep_result, sweeps, write_json)
from cifar_tables import write_tables
from cifar_zoo import export_to_zoo, part_zoo
from shared_data import shared_data_root
from timm_fcl.robustness.hits import pack_counts, unpack_hits
from timm_fcl.robustness.metrics import CORRUPTIONS
from timm_fcl.robustness.units import UNIT, check_unit
from timm_fcl.run import folder as run_folder

PARTS = ("carve", "pretrain", "protocol", "sweep", "validate", "continue", "eval", "tables", "zoo")
STOP_GRACE_S = 120  # how long a command stopped at the deadline may take to save its state
PRETRAIN = "pretrain"  # the pre-training's name among the runs an evaluation takes


class PartStopped(Exception):
    """The --hours limit was reached; the same command resumes."""


# ------------------------------------------------------------------------------------- provenance and wall time
def code_commit() -> str:
    """The commit of the code that runs (recorded in every result; experiments run from a fixed worktree)."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def epochs_done(run: Path) -> int:
    """Epochs a train_fcl.py run folder has finished (rows of its summary.csv)."""
    path = run / run_folder.SUMMARY
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return len(list(csv.DictReader(f)))


def last_epoch(run: Path) -> dict:
    """What the result JSONs keep of the run's own summary.csv (its last row): the validation top-1 in percent
    (summary.csv's unit, timm's), the epoch it is of, and the pull ratio of the extra term (None without one)."""
    path = run / run_folder.SUMMARY
    if not path.is_file():
        return {"val_top1": None}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {"val_top1": None}
    last = rows[-1]
    return {"val_top1": float(last["eval_top1"]), "val_epoch": int(last["epoch"]),
            "train_pull": float(last["train_pull"]) if last.get("train_pull") else None}


@dataclasses.dataclass
class Part(Bench):
    """A part's flags and paths, and ``deadline``: when --hours runs out."""
    deadline: float = float("inf")

    def time_left(self) -> float:
        """Seconds until the part's --hours limit; PartStopped once it has passed."""
        remaining = self.deadline - time.time()
        if remaining <= 0:
            raise PartStopped()
        return remaining

    def run(self, cmd: list[str], log: Path) -> None:
        """A command with the thread limit, its output appended to ``log``. At the deadline it is sent SIGTERM, on
        which train_fcl.py saves its state and stops; SIGKILL follows if it has not stopped STOP_GRACE_S later."""
        remaining = self.time_left()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS=str(self.args.threads), TQDM_DISABLE="1")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise PartStopped() from None
        if proc.returncode != 0:
            tail = log.read_text().splitlines()[-15:]
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); {log}:\n" + "\n".join(tail))


# ------------------------------------------------------------------------------------------------------ training
def train_flags(b: Part, *, output: Path, epochs: int, lr: float, seed: int) -> list[str]:
    """train_fcl.py's flags shared by the pre-training and every continuation. timm's multistep schedule lowers the lr
    from epoch index m - 1 on for a milestone m, so m = 2/3 of the epochs + 1 trains 2/3 of them at the full lr."""
    a = b.args
    flags = [sys.executable, str(REPO / "train_fcl.py"), "--model", a.model, "--dataset", "wds/cifar10",
             "--data-dir", str(b.holdout), "--train-split", "train", "--val-split", "validation", "--num-classes", "10",
             "--img-size", "32", "--crop-pct", "1", "--crop-pad", "4", "-b", str(a.batch_size), "--epochs", str(epochs),
             "--opt", "sgd", "--momentum", "0.9", "--weight-decay", "1e-4", "--lr", str(lr), "--sched", "multistep",
             "--decay-milestones", str(round(2 * epochs / 3) + 1), "--decay-rate", "0.1", "--seed", str(seed),
             "--workers", "1", "--no-progress", "--log-interval", "50", "--checkpoint-interval", "100",
             "--output", str(output)]
    if a.precision == "bf16":  # autocast + channels-last: the same recipe, 2-3x faster on a CPU with AVX-512 BF16
        flags += ["--mixed-precision", "bf16", "--channels-last"]
    if a.train_subset:
        flags += ["--train-subset", str(a.train_subset)]
    if a.val_subset:
        flags += ["--val-subset", str(a.val_subset)]
    return flags


def continuation_flags(b: Part, method: Method, hp: dict) -> list[str]:
    """The method's own flags: its objective, its settings, the ramp of a contrastive term, Patch Gaussian."""
    if not b.pretrain_weights.is_file():
        raise RuntimeError(f"no pre-training in {b.pretrain_zoo} or {b.pretrain_run}: run --part pretrain first")
    flags = ["--method", method.objective, "--initial-checkpoint", str(b.pretrain_weights), "--warmup-epochs", "0"]
    flags += list(itertools.chain.from_iterable((f"--fcl-{k}", str(v)) for k, v in sorted(hp.items())))
    if method.objective in ("fcl", "cl_gauss"):
        flags += ["--fcl-ramp-epochs", str(b.args.continue_epochs / 2)]
    if method.patch_gaussian:
        flags += ["--patch-gaussian", "--patch-gaussian-size", "25", "--patch-gaussian-sigma", "0.1"]
    return flags


def train(b: Part, cmd: list[str], run: Path, epochs: int) -> None:
    """Run (or resume) a training run until it has ``epochs`` epochs; its wall time accumulates in bench_wall.json."""
    if epochs_done(run) >= epochs:
        return
    b.time_left()  # past the deadline, say nothing of a run that will not start
    print(f"training {run} ...", flush=True)
    commit = (read_json(run / "bench_commit.json") or {}).get("commit")
    if commit and commit != code_commit():
        print(f"  note: {run.name} was started by commit {commit}, resumed by {code_commit()}", flush=True)
    log, running = run.parent / f"{run.name}.log", run.parent / f"{run.name}.running.json"
    add_wall(run, killed_segment_seconds(running, log))
    start = time.time()
    write_json(running, {"since": start})
    try:
        b.run(cmd, log)
    finally:
        add_wall(run, time.time() - start)
        running.unlink(missing_ok=True)
        if run.is_dir() and commit is None:
            write_json(run / "bench_commit.json", {"commit": code_commit()})


def killed_segment_seconds(running: Path, log: Path) -> float:
    """The training time of a segment whose process was killed before it could count it (the marker it left is still
    there): from its start to the last line its training wrote to the log."""
    since = (read_json(running) or {}).get("since")
    if since is None or not log.is_file():
        return 0.0
    return max(0.0, log.stat().st_mtime - since)


def add_wall(run: Path, seconds: float) -> None:
    if seconds > 0 and run.is_dir():
        wall = run / "bench_wall.json"
        write_json(wall, {"seconds": (read_json(wall) or {}).get("seconds", 0.0) + seconds})


def part_carve(b: Part) -> None:
    from timm_fcl.data.holdout import carve_validation

    info = carve_validation(b.args.data_dir, b.holdout, val_size=b.args.val_size, seed=0, shard_size=9000)
    print(f"held-out split: {info['splits']['train']['num_samples']} train, "
          f"{info['splits']['validation']['num_samples']} validation in {b.holdout}")


def part_pretrain(b: Part) -> None:
    """The shared XE pre-training: trained, evaluated on the test set like every continuation, and exported to
    zoo/ARCH.xe_pretrain_cifar10 (commit it: later parts start from the zoo's copy). When this command goes on to
    --part eval, the evaluation waits for it and joins the continuations' (one process fewer to start)."""
    done = b.results / "pretrain.json"
    a = b.args
    if not done.is_file():
        cmd = train_flags(b, output=b.pretrain_run, epochs=a.pretrain_epochs, lr=0.1, seed=0) + [
            "--method", "xe", "--warmup-epochs", str(max(1, round(a.pretrain_epochs / 30))), "--warmup-lr", "0.01"]
        train(b, cmd, b.pretrain_run, a.pretrain_epochs)
        write_json(done, {"model": a.model, "epochs": a.pretrain_epochs,
                          "val_top1": last_epoch(b.pretrain_run)["val_top1"],
                          "train_seconds": read_json(b.pretrain_run / "bench_wall.json")["seconds"],
                          "precision": a.precision, "threads": a.threads, "commit": code_commit(), "unit": UNIT})
    if (b.pretrain_zoo / run_folder.WEIGHTS).is_file():
        return
    if not (b.pretrain_run / run_folder.MODEL / run_folder.WEIGHTS).is_file():
        raise RuntimeError(f"{done} exists but neither {b.pretrain_zoo} nor the run folder {b.pretrain_run} does")
    if not ("eval" in a.part and pretrain_pending(b)):  # else part_eval evaluates it with the continuations
        finish_pretrain(b)


def pretrain_pending(b: Part) -> bool:
    """Whether the pre-training is trained but neither evaluated nor exported yet."""
    entry = read_json(b.results / "pretrain.json")
    return (entry is not None and "clean" not in entry and not (b.pretrain_zoo / run_folder.WEIGHTS).is_file()
            and (b.pretrain_run / run_folder.MODEL / run_folder.WEIGHTS).is_file())


def finish_pretrain(b: Part, merged: Optional[dict] = None, seconds: Optional[float] = None) -> None:
    """pretrain.json completed with the pre-training's test results (``merged``, or evaluated now), then exported."""
    done = b.results / "pretrain.json"
    entry = read_json(done)
    if "clean" not in entry:
        began = time.time()
        if merged is None:
            merged = evaluate_test(b, [b.pretrain_run], b.work / "eval" / "test" / "pretrain")[b.pretrain_run.name]
        write_json(b.pretrain_run / run_folder.EVAL_RESULTS, {b.pretrain_run.name: merged})
        entry.update(condense(merged), eval_seconds=time.time() - began if seconds is None else seconds,
                     eval_commit=code_commit(), eval_precision=b.args.eval_precision)
    entry["sha256"] = sha256(b.pretrain_run / run_folder.MODEL / run_folder.WEIGHTS)
    write_json(done, entry)
    export_to_zoo(b, b.pretrain_run, b.pretrain_zoo)


def train_continuation(b: Part, method: Method, hp: dict, seed: int) -> Path:
    run = b.run_dir(method.name, hp, seed)
    cmd = train_flags(b, output=run, epochs=b.args.continue_epochs, lr=b.args.continue_lr, seed=seed)
    train(b, cmd + continuation_flags(b, method, hp), run, b.args.continue_epochs)
    return run


def train_all(b: Part, todo: list[tuple[str, dict, int]], after=None) -> list[Path]:
    """Continuation runs (method, settings, seed), --jobs of them at a time; their run folders, in order. ``after``
    (method, settings, seed, run folder) is called in the job's slot as soon as its run is trained, so a part cut
    short keeps the results of every run it finished. Once a run fails or is stopped (a signal saved its state, a
    command failed), no further run starts: the part ends with that run's error when the runs already going end."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    failed = threading.Event()

    def job(name: str, hp: dict, seed: int) -> Optional[Path]:
        if failed.is_set():
            return None
        try:
            run = train_continuation(b, METHODS[name], hp, seed)
            if after is not None:
                after(name, hp, seed, run)
        except BaseException:
            failed.set()
            raise
        return run

    with ThreadPoolExecutor(max_workers=b.args.jobs) as pool:
        futures = [pool.submit(job, name, hp, seed) for name, hp, seed in todo]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate(b: Part, runs: list[Path], *, suites: list[str], split: str, data_dir: Path, out: Path,
             max_samples: Optional[int] = None, threads: Optional[int] = None) -> dict:
    """``python -m timm_fcl.eval`` over several run folders at once; {run folder name: its results}."""
    a = b.args
    cmd = [sys.executable, "-m", "timm_fcl.eval", "--dataset", "wds/cifar10", "--data-dir", str(data_dir),
           "--split", split, "--train-split", "train", "--suites", *suites, "--threads", str(threads or a.eval_threads or a.threads),
           "--batch-size", "500", "--cache-dir", str(b.work / "corruptions"), "--output", str(out)]
    cmd += list(itertools.chain.from_iterable(("--model", str(r)) for r in runs))
    if max_samples:
        cmd += ["--max-samples", str(max_samples)]
    if a.eval_precision == "bf16":
        cmd += ["--amp", "bf16", "--channels-last"]
    if "generated" in suites and a.corruptions:
        cmd += ["--corruptions", *a.corruptions]
    shutil.rmtree(out, ignore_errors=True)
    b.run(cmd, out.parent / f"{out.name}.log")
    results = read_json(out / "results.json")
    return {r.name: results[run_folder.run_name(r)] for r in runs}


def condense(result: dict) -> dict:
    """What this benchmark keeps of one model's timm_fcl.eval results (in percent, as timm_fcl.eval writes them; an
    entry in another unit is refused): the clean / UN / NUN accuracies and the generated CIFAR-10-C's means.

    When the rows carry which images were right (``hits``; older evaluations lack them), it also keeps, for a paired
    test over images, the clean / UN / NUN hits with their image counts, and per image how many of the corrupted
    versions that enter the C mean (each corruption of CORRUPTIONS present x its severities) the model got right
    (``c10c.hits_count``, packed, out of ``c10c.cells``)."""
    check_unit(result, f"the evaluation of {result.get('spec', 'a model')}")
    plain = {r["suite"]: r for r in result["rows"] if r["severity"] == 0}
    out = {s: plain[s]["accuracy"] for s in SUITES if s in plain}
    suites = [s for s in SUITES if s in plain]
    if suites and all("hits" in plain[s] for s in suites):
        out["hits"] = {s: plain[s]["hits"] for s in suites}
        out["images"] = {s: plain[s]["total"] for s in suites}
    summary = result["summaries"].get("generated")
    if summary:
        cells = [r for r in result["rows"] if r["suite"] == "generated" and r["corruption"] in CORRUPTIONS]
        mean = summary["mean_19"] if summary.get("mean_19") is not None else summary["mean_all"]
        out["c10c"] = {"mean": mean, "groups": dict(summary["groups"]), "per_corruption": dict(summary["per_corruption"]),
                       "images": next(r["total"] for r in result["rows"] if r["suite"] == "generated")}
        if cells and all("hits" in r for r in cells):
            counts = sum(unpack_hits(r["hits"], r["total"]).astype(np.int64) for r in cells)
            out["c10c"].update(hits_count=pack_counts(counts), cells=len(cells))
    return dict(out, unit=UNIT)


def validate(b: Part, settings: list[tuple[str, dict]]) -> None:
    """Seed-0 continuations of (method, settings), trained if need be and scored on the held-out validation split as
    soon as each is trained; each score is kept as a sweep result."""
    def score(name: str, hp: dict, seed: int, run: Path) -> None:
        began = time.time()
        results = evaluate(b, [run], suites=list(SUITES), split="validation", data_dir=b.holdout,
                           out=b.work / "eval" / "sweep" / f"{run.name}-{int(time.time())}")
        eval_seconds = time.time() - began
        wall = read_json(run / "bench_wall.json") or {}
        write_json(sweep_result(b, name, hp), {"method": name, "hp": hp, "seed": seed, **condense(results[run.name]),
                                               **protocol_fields(b), "commit": code_commit(),
                                               "train_pull": last_epoch(run).get("train_pull"),
                                               "train_seconds": wall.get("seconds"), "eval_seconds": eval_seconds})

    todo = [(name, hp, SWEEP_SEED) for name, hp in settings if not sweep_result(b, name, hp).is_file()]
    train_all(b, todo, after=score)


def protocol_fields(b: Part) -> dict:
    return {"continue_lr": b.args.continue_lr, "continue_epochs": b.args.continue_epochs}


def part_protocol(b: Part) -> dict:
    """The protocol check on the validation split: seed-0 XE and XE+Gaussian (Appendix B's setting) continued with
    --continue-lr for --continue-epochs; the continuation shows a regularizer's effect when XE+Gaussian gains at least
    MIN_GAUSS_GAIN UN over XE. Written to protocol/LR-EPOCHS.json under --results."""
    pair = [("xe", SWEEPS["xe"][0]), ("xe_gauss", SWEEPS["xe_gauss"][0])]
    validate(b, pair)
    xe, gauss = (read_result(sweep_result(b, name, hp)) for name, hp in pair)
    gain = {s: gauss[s] - xe[s] for s in SUITES}
    verdict = {"protocol": b.protocol, **protocol_fields(b), "split": "validation", "xe": xe, "xe_gauss": gauss,
               "gain": gain, "passes": gain["un"] >= MIN_GAUSS_GAIN, "unit": UNIT,
               "train_seconds": {name: read_json(b.run_dir(name, hp, SWEEP_SEED) / "bench_wall.json")["seconds"]
                                 for name, hp in pair}}
    write_json(b.results / "protocol" / f"{b.protocol}.json", verdict)
    print(f"protocol {b.protocol} on validation: XE+Gaussian - XE = clean {gain['clean']:+.2f}, UN {gain['un']:+.2f}, "
          f"NUN {gain['nun']:+.2f} points (needed UN >= +{MIN_GAUSS_GAIN:g}): "
          f"{'passes' if verdict['passes'] else 'FAILS'}")
    return verdict


def part_sweep(b: Part) -> None:
    """Seed-0 continuations of every setting of the grid (--grid), scored on the held-out validation split."""
    grid = sweeps(b)
    names = [n for n in b.args.methods if len(grid[n]) > 1]
    validate(b, [(name, hp) for name in (["xe"] if names else []) + names  # XE's clean accuracy is the reference
                 for hp in grid[name]])
    for name in names:
        print(f"{METHODS[name].label}: chosen {chosen_hp(b, name)}")


def part_validate(b: Part) -> None:
    """One validation part of the equal-budget plan (--plan-part, PLAN_PARTS): its seed-0 runs in the plan's order,
    each scored on the held-out validation split as soon as it is trained."""
    if b.args.plan_part is None:
        raise SystemExit(f"--part validate needs --plan-part ({', '.join(map(str, PLAN_PARTS))})")
    validate(b, PLAN_PARTS[b.args.plan_part])


def part_continue(b: Part) -> None:
    """The continuations; with --eval-each (and --part eval), each evaluated as soon as it is trained."""
    todo = [(name, chosen_hp(b, name), seed) for seed, name in itertools.product(b.args.seeds, b.args.methods)
            if not result_done(b, name, seed)]
    each = b.args.eval_each and "eval" in b.args.part
    train_all(b, todo, after=(lambda name, hp, seed, run: evaluate_runs(b, [(name, seed, run)], b.args.threads))
              if each else None)


def set_aside(b: Part, name: str, seed: int) -> None:
    """A result at settings the method no longer takes moves to runs/earlier/ (kept, out of the tables' seeds)."""
    path = run_result(b, name, seed)
    entry = read_result(path)
    if entry is not None and entry["hp"] != chosen_hp(b, name):
        dest = earlier_result(b, name, entry["hp"], seed)
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.replace(dest)


def part_eval(b: Part) -> None:
    """Test-set evaluation of every finished continuation (and of the pre-training when its part left it to this
    one): clean / UN / NUN on --test-samples (default all 10,000), the generated CIFAR-10-C on
    --corruption-samples, in groups of --eval-group models per command."""
    a = b.args
    pending = [(PRETRAIN, ZOO_SEED, b.pretrain_run)] if pretrain_pending(b) else []
    for seed, name in itertools.product(a.seeds, a.methods):
        run = b.run_dir(name, chosen_hp(b, name), seed)
        if not result_done(b, name, seed) and epochs_done(run) >= a.continue_epochs:
            pending.append((name, seed, run))
    for start in range(0, len(pending), a.eval_group):
        evaluate_runs(b, pending[start:start + a.eval_group])


def evaluate_runs(b: Part, group: list[tuple[str, int, Path]], threads: Optional[int] = None) -> None:
    """One evaluation command over (method, seed, run folder)s; each result JSON written, seed-0 picks exported."""
    a = b.args
    runs, began = [run for _, _, run in group], time.time()
    results = evaluate_test(b, runs, b.work / "eval" / "test" / f"{runs[0].name}-{int(began)}", threads=threads)
    seconds = (time.time() - began) / len(group)
    for name, seed, run in group:
        merged = results[run.name]
        if name == PRETRAIN:
            finish_pretrain(b, merged, seconds)
            continue
        write_json(run / run_folder.EVAL_RESULTS, {run.name: merged})  # the run folder's own results (cards)
        flags = run_folder.read_args(run)
        repeats = repeated_numbers(b, name, seed)
        set_aside(b, name, seed)
        entry = {
            "method": name, "seed": seed, "hp": chosen_hp(b, name), "model": a.model, **condense(merged),
            **last_epoch(run), "train_seconds": read_json(run / "bench_wall.json")["seconds"],
            "eval_seconds": seconds, "precision": flags.get("mixed_precision") or "no",
            "eval_precision": a.eval_precision,
            "initial_checkpoint_sha256": sha256(Path(flags["initial_checkpoint"])), **protocol_fields(b),
            "commit": (read_json(run / "bench_commit.json") or {}).get("commit"), "eval_commit": code_commit(),
            **({"repeats": repeats} if repeats else {})}
        write_json(run_result(b, name, seed), entry)
        if repeats:
            report_repeat(entry)
        if seed == ZOO_SEED and name in ZOO_TAGS:  # exported now: the run folder does not outlive the part
            export_to_zoo(b, run, b.zoo_dir(name))


REPEATED = ("clean", "un", "nun")


def repeated_numbers(b: Part, name: str, seed: int) -> Optional[dict]:
    """The numbers (and commit) of the result this evaluation replaces at the same settings: a run trained again with
    --redo-without-hits, whose numbers must agree with them (a seed's training is deterministic)."""
    old = read_result(run_result(b, name, seed))
    if old is None or old["hp"] != chosen_hp(b, name):
        return None
    return {**{k: old[k] for k in REPEATED}, "c10c_mean": (old.get("c10c") or {}).get("mean"),
            "commit": old.get("commit")}


def report_repeat(entry: dict) -> None:
    """Print how the numbers of a repeated run compare with those it replaced (percent points)."""
    old = entry["repeats"]
    pairs = [(k, entry[k], old[k]) for k in REPEATED] + [("c10c mean", (entry.get("c10c") or {}).get("mean"),
                                                         old["c10c_mean"])]
    diffs = ", ".join(f"{k} {new:.2f} vs {was:.2f}" for k, new, was in pairs if new is not None and was is not None)
    same = all(abs(new - was) < 0.005 for _, new, was in pairs if new is not None and was is not None)
    print(f"  {entry['method']} seed {entry['seed']} trained again: {diffs} "
          f"({'the same numbers' if same else 'NOT the same numbers'})", flush=True)


def evaluate_test(b: Part, runs: list[Path], out: Path, threads: Optional[int] = None) -> dict:
    """Clean / UN / NUN on --test-samples and the generated CIFAR-10-C on --corruption-samples test images, as one
    results entry per run folder name."""
    a = b.args
    if a.test_samples == a.corruption_samples:  # the same images for both: one command
        return evaluate(b, runs, suites=[*SUITES, "generated"], split="test", data_dir=Path(a.data_dir),
                        out=out / "all", max_samples=a.test_samples, threads=threads)
    noisy = evaluate(b, runs, suites=list(SUITES), split="test", data_dir=Path(a.data_dir), out=out / "noisy",
                     max_samples=a.test_samples, threads=threads)
    corrupted = evaluate(b, runs, suites=["generated"], split="test", data_dir=Path(a.data_dir),
                         out=out / "generated", max_samples=a.corruption_samples, threads=threads)
    return {r.name: {**noisy[r.name], "spec": str(r), "rows": noisy[r.name]["rows"] + corrupted[r.name]["rows"],
                     "summaries": corrupted[r.name]["summaries"]} for r in runs}  # the unit and weights kept


# ---------------------------------------------------------------------------------------------------------- main
def part_tables(b: Part) -> None:
    """benchmarks/cifar_tables.py's tables for this protocol (and, with --readme, the tables block of a README)."""
    write_tables(b, Path(b.args.readme) if b.args.readme else None)


PART_FUNCTIONS = {"carve": part_carve, "pretrain": part_pretrain, "protocol": part_protocol, "sweep": part_sweep,
                  "validate": part_validate,
                  "continue": part_continue, "eval": part_eval, "tables": part_tables, "zoo": part_zoo}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: everything; "
                   "tables and zoo are benchmarks/cifar_tables.py's and benchmarks/cifar_zoo.py's)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="continuation seeds (paired)")
    p.add_argument("--plan-part", type=int, choices=sorted(PLAN_PARTS),
                   help="with --part validate: which validation part of the equal-budget plan to run")
    p.add_argument("--data-dir", default=str(shared_data_root() / "cifar10-wds"), help="CIFAR-10 shards (train, test)")
    add_protocol_arguments(p)
    p.add_argument("--readme", help="with --part tables: also write the tables into this markdown file, e.g. "
                   "benchmarks/cifar_robustness/README.md (as benchmarks/cifar_tables.py --readme does)")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--val-size", type=int, default=5000, help="training images held out for the sweep")
    p.add_argument("--train-subset", type=int, help="train on N images per epoch (smoke runs)")
    p.add_argument("--val-subset", type=int, help="validate on N images per epoch (smoke runs)")
    p.add_argument("--test-samples", type=int, help="clean / UN / NUN test images (default: all 10,000)")
    p.add_argument("--corruption-samples", type=int, default=2000, help="test images behind the generated CIFAR-10-C")
    p.add_argument("--corruptions", nargs="+", help="generate only these (default: all 19)")
    p.add_argument("--eval-group", type=int, default=3,
                   help="models per command of --part eval (a sweep scores each run as soon as it is trained)")
    p.add_argument("--redo-without-hits", action="store_true", help="with --part continue eval: a result at the "
                   "settings its method takes now but without per-image hits (older JSONs) is trained and evaluated "
                   "again; the new JSON keeps the old numbers under 'repeats' (a seed's training is deterministic, so "
                   "they must agree) and adds the hits")
    p.add_argument("--eval-each", action="store_true", help="with --part continue eval: evaluate each run as soon as "
                   "it is trained, in its job's slot (a part cut short keeps every run it finished)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"),
                   help="training precision: bf16 autocast with channels-last, or plain fp32")
    p.add_argument("--eval-precision", default="fp32", choices=("bf16", "fp32"),
                   help="evaluation precision: plain fp32, or bf16 autocast with channels-last")
    p.add_argument("--eval-threads", type=int, help="CPU threads of an evaluation (default: --threads)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of every training and evaluation")
    p.add_argument("--jobs", type=int, default=2, help="continuation runs trained at once (each with --threads)")
    p.add_argument("--hours", type=float, default=2.5, help="stop (resumably) after this much wall time")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    b = Part(args, deadline=time.time() + args.hours * 3600)
    start = time.time()
    try:
        for part in PARTS:
            if part in args.part:
                PART_FUNCTIONS[part](b)
    except PartStopped:
        print(f"stopped at the --hours {args.hours} limit after {time.time() - start:.0f} s; "
              "run the same command again to go on")
        return 3
    print(f"done ({', '.join(args.part)}) in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
