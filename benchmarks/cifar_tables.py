"""Tables 2 and 3 of the paper (section 4.2) from the CIFAR-10 benchmark's results, beside the paper's numbers.

    python benchmarks/cifar_tables.py                           # tables.md, table2.png, table3.png of lr0.01-e24
    python benchmarks/cifar_tables.py --readme benchmarks/cifar_robustness/README.md --headline README.md  # and the blocks
    python benchmarks/cifar_tables.py --continue-lr 0.001 --continue-epochs 6 --paper-settings  # an earlier protocol

It reads the results JSONs that benchmarks/cifar_robustness.py wrote under --results/PROTOCOL/ (every accuracy in
percent; a file in another unit is refused) and writes, beside them, tables.md (Tables 2 and 3 with the paired
differences, the per-corruption differences, the training times, FCL every 4 and every 16 steps against full FCL,
the results at settings the validation sweep superseded, each method's tuning budget, the protocol check) and a PNG
per table; --readme FILE copies Tables 2 and 3 into a markdown file, --headline FILE writes the compact table of the
paper's methods (the root README's). It only reads results: a result at settings its method no longer takes is left
where it is and shown among the superseded ones.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

from cifar_common import (INTERVAL_METHOD, METHODS, GROUPS, MIN_GAUSS_GAIN, Bench, add_protocol_arguments, base_hp,
                          chosen_hp, grid_name, hp_key, load_runs, paired_interval, results_at, superseded, sweep_result, sweeps,
                          t2_value, t3_value, takes_paper_settings)

# (method, baseline) of the paired-difference rows: every method against XE and XE+Gaussian, Patch Gaussian + FCL
# against Patch Gaussian + XE, and the FCL variants (every n, other_class, random selection) against full FCL
PAIRS = tuple((n, base) for base in ("xe", "xe_gauss") for n in METHODS if n != base) + (
    ("pg_fcl", "pg_xe"), ("fcl_every4", "fcl"), ("fcl_other", "fcl"), ("fcl_random", "fcl"), ("fcl_every16", "fcl"))
T2_COLUMNS = (("clean", "Clean"), ("un", "UN"), ("nun", "NUN"))
T3_COLUMNS = (("mean", "mean of 19"),) + tuple((g, g) for g in GROUPS)
EVERY_MODES = ("fcl_every4", "fcl_every16")  # FCL's term every n steps, each against full FCL
CORRUPTION_PAIRS = (("fcl", "xe"), ("xe_gauss", "xe"), ("cl_gauss", "xe"), ("pg_fcl", "pg_xe"), ("fcl_other", "fcl"))
README_BEGIN = "<!-- benchmarks/cifar_tables.py --readme writes from here -->"
README_END = "<!-- to here -->"
HEADLINE_BEGIN = "<!-- benchmarks/cifar_tables.py --headline writes from here -->"


def mean_std(values: list[float], sign: str = "") -> str:
    """The mean over seeds and its std in percent ("m ± s"); the value alone for one seed (a std needs two)."""
    if not values:
        return "-"
    mean = f"{statistics.mean(values):{sign}.2f}"
    return f"{mean} ± {statistics.stdev(values):.2f}" if len(values) > 1 else mean


def pinned_bases(b: Bench) -> dict:
    """{variant: (settings, {seed: result})} of each variant that runs on settings its base method no longer takes
    (pinned by the grid): the base's results at those settings, which the variant is compared with."""
    bases = {}
    for name, method in METHODS.items():
        if method.settings_from and (hp := base_hp(b, name)) != chosen_hp(b, method.settings_from):
            bases[name] = (hp, results_at(b, method.settings_from, hp))
    return bases


def against(runs: dict, bases: Optional[dict], name: str, baseline: str) -> tuple[dict, str]:
    """The runs to pair ``name`` with ``baseline`` in, and the baseline's label: a pinned variant meets its base at
    the settings it ran at (labelled with them), every other pair the base at its choice."""
    if bases and name in bases and baseline == METHODS[name].settings_from:
        hp, entries = bases[name]
        return {**runs, baseline: entries}, f"{METHODS[baseline].label} at {hp_key(hp)}"
    return runs, METHODS[baseline].label


def paired(runs: dict, name: str, baseline: str, value, column: str) -> str:
    """The paired difference (method - baseline) over the shared seeds: its mean with a 95% interval from the runs'
    per-image results where every one of them kept them, else mean ± std over the seeds (INTERVAL_METHOD)."""
    ci = paired_interval(runs, name, baseline, column)
    if ci is not None:
        return f"{ci['mean']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]"
    seeds = sorted(set(runs[name]) & set(runs[baseline]))
    diffs = [value(runs[name][s], column) - value(runs[baseline][s], column) for s in seeds
             if value(runs[name][s], column) is not None and value(runs[baseline][s], column) is not None]
    return mean_std(diffs, sign="+")


def format_table(runs: dict, title: str, columns: tuple, value, paper_index: str,
                 bases: Optional[dict] = None) -> str:
    """A markdown table in percent: ours (mean ± std over seeds), the paper's means, then paired differences (a
    pinned variant against its base at the variant's settings, ``bases``)."""
    head = [c for _, c in columns]
    lines = [f"### {title}", "", "| method | seeds | " + " | ".join(head) + " | paper: " + " / ".join(head) + " |",
             "|" + " --- |" * (len(head) + 3)]
    for name, method in METHODS.items():
        seeds = sorted(runs.get(name, {}))
        if not seeds and method.paper_t2 is None:  # a variant of ours not run yet: no row
            continue
        cells = [mean_std([v for s in seeds if (v := value(runs[name][s], col)) is not None]) for col, _ in columns]
        numbers = getattr(method, paper_index)
        paper = " / ".join(f"{v:.2f}" for v in numbers[:len(columns)]) if numbers else "-"
        lines.append(f"| {method.label} | {len(seeds)} | " + " | ".join(cells) + f" | {paper} |")
    lines += ["", f"Paired differences (same seed). {INTERVAL_METHOD}", "",
              "| method | vs | " + " | ".join(head) + " |", "|" + " --- |" * (len(head) + 2)]
    for name, baseline in PAIRS:
        view, label = against(runs, bases, name, baseline)
        if view.get(name) and view.get(baseline):
            cells = [paired(view, name, baseline, value, col) for col, _ in columns]
            lines.append(f"| {METHODS[name].label} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_table(runs: dict, path: Path, title: str, columns: tuple, value, paper_index: str) -> None:
    """One panel per column: our mean over seeds (std as error bar) beside the paper's mean, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [n for n, m in METHODS.items() if runs.get(n) or m.paper_t2 is not None]  # as the tables' rows
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.8), squeeze=False)
    for i, (ax, (col, head)) in enumerate(zip(axes[0], columns)):
        ours = [[v for s in runs.get(n, {}) if (v := value(runs[n][s], col)) is not None] for n in names]
        means = [statistics.mean(v) if v else np.nan for v in ours]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in ours]
        paper = [getattr(METHODS[n], paper_index)[i] if getattr(METHODS[n], paper_index) else np.nan for n in names]
        x = np.arange(len(names))
        ax.bar(x - 0.2, means, 0.4, yerr=stds, capsize=3, label="ours")
        ax.bar(x + 0.2, paper, 0.4, hatch="//", alpha=0.6, label="paper (ResNet-56)")
        ax.set_xticks(x)
        ax.set_xticklabels([METHODS[n].label for n in names], rotation=40, ha="right")
        ax.set_ylim(0, 100)
        ax.set_title(head)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



def corruption_value(entry: dict, corruption: str) -> Optional[float]:
    return ((entry.get("c10c") or {}).get("per_corruption") or {}).get(corruption)


def format_per_corruption(runs: dict, bases: Optional[dict] = None) -> str:
    """Paired differences per corruption (points, mean over the shared seeds), the corruptions in the order of FCL's
    gain (a pinned variant against its base at the variant's settings, ``bases``)."""
    views = {(n, base): against(runs, bases, n, base) for n, base in CORRUPTION_PAIRS}
    pairs = [(n, base) for n, base in CORRUPTION_PAIRS
             if set(views[n, base][0].get(n) or {}) & set(views[n, base][0].get(base) or {})]
    corruptions = sorted({c for seeds in runs.values() for e in seeds.values() for c in
                          ((e.get("c10c") or {}).get("per_corruption") or {})})
    if not pairs or not corruptions:
        return ""

    def diff(name: str, base: str, corruption: str) -> Optional[float]:
        view = views[name, base][0]
        seeds = sorted(set(view[name]) & set(view[base]))
        values = [corruption_value(view[name][s], corruption) - corruption_value(view[base][s], corruption)
                  for s in seeds if corruption_value(view[name][s], corruption) is not None
                  and corruption_value(view[base][s], corruption) is not None]
        return statistics.mean(values) if values else None

    first = pairs[0]
    corruptions.sort(key=lambda c: -(diff(*first, c) or 0.0))
    lines = ["### CIFAR-10-C per corruption: paired differences, mean over seeds", "",
             "| corruption | " + " | ".join(f"{METHODS[n].label} - {views[n, base][1]}" for n, base in pairs) + " |",
             "| --- |" + " --- |" * len(pairs)]
    for c in corruptions:
        cells = [diff(n, base, c) for n, base in pairs]
        lines.append(f"| {c} | " + " | ".join("-" if v is None else f"{v:+.2f}" for v in cells) + " |")
    return "\n".join(lines)


def format_earlier(b: Bench) -> str:
    """Each result at settings its method no longer takes (FCL at Appendix B's settings, before the sweep chose),
    beside the same method and seed at the settings it takes now."""
    entries = superseded(b)
    if not entries:
        return ""
    lines = ["### Earlier settings, superseded by the validation sweep's choice (same seed)", "",
             "| method | settings | seed | Clean / UN / NUN / C mean | now: settings "
             "| now: Clean / UN / NUN / C mean |",
             "| --- | --- | --- | --- | --- | --- |"]

    def cells(entry: Optional[dict]) -> str:
        if entry is None:
            return "-"
        values = [t2_value(entry, c) for c in ("clean", "un", "nun")] + [t3_value(entry, "mean")]
        return " / ".join("-" if v is None else f"{v:.2f}" for v in values)

    runs = load_runs(b)
    for entry in entries:
        now = runs[entry["method"]].get(entry["seed"])
        lines.append(f"| {METHODS[entry['method']].label} | {hp_key(entry['hp'])} | {entry['seed']} | {cells(entry)} "
                     f"| {hp_key(now['hp']) if now else '-'} | {cells(now)} |")
    return "\n".join(lines)


def format_costs(runs: dict) -> str:
    """Training wall time of a continuation per method (mean over seeds) and its ratio to XE's."""
    lines = ["### Training time of a continuation", "", "| method | seeds | wall s | vs XE | precision |",
             "| --- | --- | --- | --- | --- |"]
    xe = [e["train_seconds"] for e in runs.get("xe", {}).values()]
    for name, method in METHODS.items():
        entries = list(runs.get(name, {}).values())
        if entries:
            wall = statistics.mean(e["train_seconds"] for e in entries)
            ratio = f"{wall / statistics.mean(xe):.2f}" if xe else "-"
            precision = "/".join(sorted({str(e.get("precision", "no")) for e in entries}))
            lines.append(f"| {method.label} | {len(entries)} | {wall:.0f} | {ratio} | {precision} |")
    entries = [e for seeds in runs.values() for e in seeds.values()]
    train = sum(e["train_seconds"] for e in entries) / 3600
    evaluate = sum(e.get("eval_seconds", 0.0) for e in entries) / 3600
    lines += ["", f"In all: {len(entries)} continuations, {train:.1f} h of training and {evaluate:.1f} h of evaluation. "
              "The wall times depend on how each run trained (threads, a second run beside it), so the ratios to XE "
              "are rough; `benchmarks/README.md` has the step cost of each method, measured in one run."]
    return "\n".join(lines)


def format_every(runs: dict, name: str, bases: Optional[dict] = None) -> str:
    """A cheap mode (FCL's term every n steps) against full FCL at the same settings, over the seeds both share with
    XE: each one's paired gain over XE on UN, NUN and the CIFAR-10-C mean, the share of full FCL's gain that every n
    steps keeps, and the training time per epoch of each seed (not averaged: runs of one seed may have trained under
    other conditions than those of the next)."""
    n = dict(METHODS[name].extra)["every"]
    runs, label = against(runs, bases, name, "fcl")
    seeds = sorted(set(runs.get(name) or {}) & set(runs.get("fcl") or {}) & set(runs.get("xe") or {}))
    if not seeds:
        return ""
    columns = ((t2_value, "un"), (t2_value, "nun"), (t3_value, "mean"))

    def gain(method: str, value, column: str) -> float:
        return statistics.mean(value(runs[method][s], column) - value(runs["xe"][s], column) for s in seeds)

    def epoch_seconds(method: str, seed: int) -> float:
        return runs[method][seed]["train_seconds"] / runs[method][seed]["continue_epochs"]

    lines = [f"### FCL every {n} steps against full FCL{label[len('FCL'):]} (seeds {', '.join(map(str, seeds))})", "",
             "| | UN - XE | NUN - XE | C mean - XE |", "| --- | --- | --- | --- |"]
    for method in ("fcl", name):
        lines.append(f"| {METHODS[method].label} | " + " | ".join(f"{gain(method, value, column):+.2f}"
                                                                   for value, column in columns) + " |")
    shares = [gain(name, value, column) / full if (full := gain("fcl", value, column)) else float("nan")
              for value, column in columns]
    lines.append(f"| every {n} / full | " + " | ".join(f"{v:.2f}" for v in shares) + " |")
    per_seed = ", ".join(f"seed {s} {epoch_seconds(name, s):.0f} / {epoch_seconds('fcl', s):.0f} "
                         f"({epoch_seconds(name, s) / epoch_seconds('fcl', s):.2f})" for s in seeds)
    lines += ["", f"Training seconds per epoch, every {n} / full: {per_seed}. A ratio means something only where "
              "both runs trained under the same conditions (threads, runs side by side); `benchmarks/README.md` has "
              "the step times of both, measured in one run."]
    return "\n".join(lines)


def format_cheap_modes(runs: dict, bases: Optional[dict] = None) -> str:
    """Every cheap mode that has runs (every 4, every 16) against full FCL, one table each."""
    return "\n\n".join(t for name in EVERY_MODES if (t := format_every(runs, name, bases)))


def tuning_budget(b: Bench) -> str:
    """How many settings each method was chosen among: those of its grid scored on validation (seed 0) before the
    choice; a method that takes Appendix B's settings (or has a grid of one) had no sweep."""
    grid = sweeps(b)
    cells = []
    for name, method in METHODS.items():
        if method.settings_from:
            continue
        tried = sum(sweep_result(b, name, hp).exists() for hp in grid[name])
        if len(grid[name]) == 1 or takes_paper_settings(b, name):
            cells.append(f"{method.label} none (fixed settings)")
        else:
            cells.append(f"{method.label} {tried} of {len(grid[name])}")
    variants = ", ".join(m.label for m in METHODS.values() if m.settings_from)
    return (f"Tuning budget (settings scored on validation, seed 0, under the {grid_name(b)} grid): "
            f"{'; '.join(cells)}. {variants} take their base method's settings, untuned.")


def protocol_check(runs: dict) -> str:
    """Whether the continuation is long enough to show a regularizer: XE+Gaussian's paired UN gain over XE (the
    paper's is +20.9 points) must be at least MIN_GAUSS_GAIN."""
    seeds = sorted(set(runs.get("xe", {})) & set(runs.get("xe_gauss", {})))
    if not seeds:
        return "Protocol check: no paired XE and XE+Gaussian runs yet."
    gain = statistics.mean(runs["xe_gauss"][s]["un"] - runs["xe"][s]["un"] for s in seeds)
    verdict = "passes" if gain >= MIN_GAUSS_GAIN else "FAILS: the continuation is too short or too gentle"
    return (f"Protocol check: XE+Gaussian - XE on UN = {gain:+.2f} points over seeds {seeds} (paper +20.9, needed "
            f">= +{MIN_GAUSS_GAIN:g}): {verdict}.")


def readme_block(b: Bench, runs: dict, readme: Path, header: str, tables: list[str]) -> str:
    """The README's copy of the results: Tables 2 and 3 with their paired differences and PNGs, the training
    times, the cheap modes against full FCL and the tuning budget; per-corruption and superseded results stay in tables.md (linked)."""
    def link(name: str) -> str:
        return os.path.relpath(b.protocol_results / name, readme.parent).replace(os.sep, "/")

    parts = [header.strip()]
    for table, png in zip(tables, ("table2.png", "table3.png")):
        parts += [table.replace("### ", "#### ", 1), f"![{table.splitlines()[0][4:].split(':')[0]}]({link(png)})"]
    parts += [format_costs(runs).replace("### ", "#### ", 1)]
    cheap = format_cheap_modes(runs, pinned_bases(b))
    parts += [cheap.replace("### ", "#### ")] if cheap else []
    parts += [tuning_budget(b), protocol_check(runs), f"Per corruption, and the results superseded by the validation sweep's "
              f"choice: [tables.md]({link('tables.md')})."]
    return "\n\n".join(parts)


def headline_block(b: Bench, runs: dict) -> str:
    """The compact table of the methods the paper has: clean, UN, NUN and the CIFAR-10-C mean in percent, mean ± std
    over the seeds, the paper's values beside them."""
    columns = ((t2_value, "clean"), (t2_value, "un"), (t2_value, "nun"), (t3_value, "mean"))
    a = b.args
    lines = [f"{a.model}, {a.pretrain_epochs}-epoch cross-entropy pre-training + {a.continue_epochs}-epoch "
             "continuation per method; test set, top-1 %, mean ± std over the seeds; the paper's ResNet-56 beside it.",
             "", "| method | seeds | clean | UN | NUN | CIFAR-10-C mean | paper: clean / UN / NUN / C mean |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, method in METHODS.items():
        if method.paper_t2 is None:
            continue
        seeds = sorted(runs.get(name, {}))
        cells = [mean_std([v for s in seeds if (v := value(runs[name][s], col)) is not None]) for value, col in columns]
        paper = " / ".join(f"{v:.2f}" for v in (*method.paper_t2, method.paper_t3[0]))
        lines.append(f"| {method.label} | {len(seeds)} | " + " | ".join(cells) + f" | {paper} |")
    return "\n".join(lines)


def fill_readme(readme: Path, block: str, begin: str = README_BEGIN) -> None:
    """Replace what stands between begin and README_END in readme with block (the markers stay)."""
    text = readme.read_text()
    start = text.find(begin)
    end = text.find(README_END, start + len(begin)) if start >= 0 else -1
    if end < 0:
        raise RuntimeError(f"{readme} has no block to fill: put the lines {begin!r} and {README_END!r} "
                           "where the tables go")
    start += len(begin)
    readme.write_text(text[:start] + "\n" + block + "\n" + text[end:])


def write_tables(b: Bench, readme: Optional[Path] = None, headline: Optional[Path] = None) -> str:
    """tables.md and the two PNGs beside the protocol's results (and the blocks of ``readme`` and ``headline``); the
    text printed.
    Nothing but those files is written: the results are only read."""
    runs = load_runs(b)
    c10c = [e["c10c"] for seeds in runs.values() for e in seeds.values() if e.get("c10c")]
    sizes = "/".join(sorted({str(c["images"]) for c in c10c}))
    counts = "/".join(sorted({str(len(c["per_corruption"])) for c in c10c}))
    t2 = ("Table 2: noisy CIFAR-10 test set (clean, UN, NUN)", T2_COLUMNS, t2_value, "paper_t2")
    t3 = (f"Table 3: generated CIFAR-10-C ({counts} corruptions x 5 severities, {sizes} images each; the mean is "
          f"over the corruptions present)", T3_COLUMNS, t3_value, "paper_t3")
    header = (f"{b.args.model}, pre-training {b.args.pretrain_epochs} epochs + continuation {b.args.continue_epochs} "
              f"epochs at lr {b.args.continue_lr:g}\n\n")
    bases = pinned_bases(b)
    tables = [format_table(runs, *t, bases=bases) for t in (t2, t3)]
    text = header + "\n\n".join(tables)
    per_corruption = format_per_corruption(runs, bases)
    text += ("\n\n" + per_corruption if per_corruption else "") + "\n\n" + format_costs(runs)
    cheap = format_cheap_modes(runs, bases)
    text += "\n\n" + cheap if cheap else ""
    earlier = format_earlier(b)
    text += "\n\n" + earlier if earlier else ""
    text += "\n\n" + tuning_budget(b) + "\n\n" + protocol_check(runs)
    print(text)
    out = b.protocol_results
    out.mkdir(parents=True, exist_ok=True)  # beside the JSON files they are made from
    (out / "tables.md").write_text(text + "\n")
    for t, png in ((t2, "table2.png"), (t3, "table3.png")):
        plot_table(runs, out / png, *t)
    print(f"wrote {out / 'tables.md'}, {out / 'table2.png'}, {out / 'table3.png'}")
    if readme is not None:
        fill_readme(readme, readme_block(b, runs, readme, header, tables))
        print(f"wrote the tables into {readme}")
    if headline is not None:
        fill_readme(headline, headline_block(b, runs), HEADLINE_BEGIN)
        print(f"wrote the headline table into {headline}")
    return text


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(p)
    p.add_argument("--readme", type=Path, help="also write the tables into this markdown file, between the lines "
                   f"{README_BEGIN!r} and {README_END!r}")
    p.add_argument("--headline", type=Path, help="also write the compact table of the paper's methods (clean, UN, NUN, "
                   f"CIFAR-10-C mean) into this markdown file, between the lines {HEADLINE_BEGIN!r} and {README_END!r}")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    write_tables(Bench(args), args.readme, args.headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
