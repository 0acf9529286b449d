"""Is it the utility? FCL with ``selection="random"`` against ``"utility"`` on synthetic MNIST, paired by seed.

Reads the ``results.json`` files of ``synthetic_mnist.py`` runs of the two conditions (``--utility`` and ``--random``,
each one or more files; the FCL runs are paired by seed: same initial weights, batch order and noise stream) and prints,
in percent, each condition's mean test accuracy on BAL, BAL+UN and BAL+NUN, over all classes and over the rare classes
10-14 (the 0-4 digits whose label a corner digit decides, where the paper says utility matters), and the paired
difference random - utility with a 95% interval from a paired bootstrap over seeds and test images
(``timm_fcl.robustness.hits.paired_bootstrap``), plus the mean pull ratio of the FCL term in the last epoch. Writes the
table as JSON (``--output``).

    python benchmarks/synthetic_mnist_selection.py --name "published recipe" \\
        --utility runs/utility-s*/results.json --random runs/random-s*/results.json --output selection.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timm_fcl.robustness.hits import paired_bootstrap, unpack_counts, unpack_hits  # noqa: E402

SETS = {"bal": "BAL", "un": "BAL+UN", "nun": "BAL+NUN"}
RARE = range(10, 15)


def load_runs(paths: list[str], method: str = "fcl") -> tuple[dict[int, dict], np.ndarray]:
    """{seed: run} of ``method`` over the files, and the test labels (the same in every file, else an error)."""
    runs, labels = {}, None
    for path in paths:
        result = json.loads(Path(path).read_text())
        if "labels" not in result:
            raise SystemExit(f"{path}: no per-image results (written before synthetic_mnist.py kept them)")
        these = unpack_counts(result["labels"]["test"])
        if labels is not None and not np.array_equal(labels, these):
            raise SystemExit(f"{path}: its test labels differ from the other files' (another --data-seed or limit?)")
        labels = these
        for run in result["runs"].get(method, []):
            runs[run["seed"]] = run
    if not runs:
        raise SystemExit(f"no {method} runs in {', '.join(paths)}")
    return runs, labels


def hits(runs: dict[int, dict], seeds: list[int], name: str, count: int) -> np.ndarray:
    return np.stack([unpack_hits(runs[s]["test_hits"][name], count) for s in seeds])


def last_pull(run: dict):
    return run["log"][-1].get("pull") if run.get("log") else None


def compare(utility: dict[int, dict], random: dict[int, dict], labels: np.ndarray, resamples: int) -> dict:
    seeds = sorted(set(utility) & set(random))
    if not seeds:
        raise SystemExit(f"no seed in common (utility {sorted(utility)}, random {sorted(random)})")
    rare = np.isin(labels, list(RARE))
    rows = []
    for name, label in SETS.items():
        u, r = hits(utility, seeds, name, len(labels)), hits(random, seeds, name, len(labels))
        for group, mask in (("all", slice(None)), ("10-14", rare)):
            ci = paired_bootstrap(r[:, mask], u[:, mask], resamples=resamples)
            rows.append({"set": label, "classes": group, "utility": 100 * u[:, mask].mean(),
                         "random": 100 * r[:, mask].mean(), "diff": 100 * ci["mean"], "low": 100 * ci["low"],
                         "high": 100 * ci["high"],
                         "per_seed": [100 * (r[i, mask].mean() - u[i, mask].mean()) for i in range(len(seeds))]})
    pulls = {c: [p for s in seeds if (p := last_pull(runs[s])) is not None]
             for c, runs in (("utility", utility), ("random", random))}
    return {"seeds": seeds, "images": int(len(labels)), "rare_images": int(rare.sum()), "unit": "percent",
            "rows": rows, "pull_last_epoch": {c: statistics.fmean(p) if p else None for c, p in pulls.items()}}


def markdown(name: str, table: dict) -> str:
    lines = [f"{name}: FCL random - utility selection, test, {len(table['seeds'])} paired seeds "
             f"({', '.join(map(str, table['seeds']))}), percent; 95% interval from a paired bootstrap over seeds and "
             f"test images", "", "| set | classes | utility | random | random - utility [95% interval] |",
             "| --- | --- | --- | --- | --- |"]
    for r in table["rows"]:
        lines.append(f"| {r['set']} | {r['classes']} | {r['utility']:.2f} | {r['random']:.2f} | "
                     f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] |")
    p = table["pull_last_epoch"]
    lines += ["", "Pull ratio of the FCL term (last epoch, mean over seeds): "
              + ", ".join(f"{c} {v:.3g}" if v is not None else f"{c} -" for c, v in p.items())]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utility", nargs="+", required=True, help="results.json files of the utility runs")
    p.add_argument("--random", nargs="+", required=True, help="results.json files of the random-selection runs")
    p.add_argument("--name", default="synthetic MNIST", help="the recipe's name in the table's title")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--output", default=None, help="JSON file for the table")
    args = p.parse_args(argv)
    utility, labels = load_runs(args.utility)
    random, random_labels = load_runs(args.random)
    if not np.array_equal(labels, random_labels):
        raise SystemExit("the two conditions were scored on different test sets")
    table = compare(utility, random, labels, args.resamples)
    print(markdown(args.name, table))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"name": args.name, **table}, indent=1))
    return table


if __name__ == "__main__":
    main()
