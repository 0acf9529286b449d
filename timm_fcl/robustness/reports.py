"""What an evaluation leaves behind: a plain-text table per model, one CSV row per model x set, and a bar plot that
compares the models corruption by corruption; every accuracy in percent (``units``)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from .corruptions import CORRUPTIONS, SEVERITIES
from .evaluation import CORRUPTION_SUITES

CSV_FIELDS = ("model", "suite", "corruption", "severity", "accuracy", "top5", "correct", "correct_top5", "total")


def corruption_lines(rows: List[dict], suite: str, names: List[str]) -> List[str]:
    """Corruption x severity top-1 accuracy (%) with its mean, and the mean top-5 accuracy, of one suite."""
    lines = [f"{'corruption':<18}" + "".join(f"{'s' + str(s):>8}" for s in SEVERITIES) + f"{'mean':>8}{'top5':>8}"]
    by_set = {(r["corruption"], r["severity"]): r for r in rows if r["suite"] == suite}
    for name in names:
        found = [by_set[(name, s)] for s in SEVERITIES if (name, s) in by_set]
        cells = "".join(f"{by_set[(name, s)]['accuracy']:8.2f}" if (name, s) in by_set else f"{'-':>8}"
                        for s in SEVERITIES)
        top5 = np.mean([r.get("top5", np.nan) for r in found])  # results.json of older runs have no top-5
        lines.append(f"{name:<18}{cells}{np.mean([r['accuracy'] for r in found]):8.2f}{top5:8.2f}")
    return lines


def format_table(results: Dict[str, dict]) -> str:
    """Plain-text tables in percent: the plain test sets, then corruption x severity per suite with Table 3's
    summaries (top-1; top-5 beside each plain set and as the last column of each corruption)."""
    lines = []
    for label, result in results.items():
        lines.append(f"== {label}")
        plain = [r for r in result["rows"] if r["severity"] == 0]
        if plain:
            lines.append("  ".join(f"{r['suite']}: {r['accuracy']:.2f} (top-5 {r.get('top5', np.nan):.2f})"
                                   for r in plain))
        for suite, summary in result["summaries"].items():
            lines.append(f"-- {suite} ({summary['preset']} parameters)")
            lines += corruption_lines(result["rows"], suite, list(summary["per_corruption"]))
            parts = [f"{g} {v:.2f}" for g, v in summary["groups"].items()]
            parts += [f"{k} {summary[k]:.2f}" for k in ("mean_19", "mean_15", "mce", "relative_mce")
                      if summary.get(k) is not None]
            if summary.get("mean_19") is None:
                parts.append(f"mean over {len(summary['per_corruption'])} {summary['mean_all']:.2f}")
            lines.append("   ".join(parts))
    return "\n".join(lines)


def write_csv(results: Dict[str, dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="", extrasaction="ignore")  # no per-image hits
        writer.writeheader()
        for result in results.values():
            writer.writerows(result["rows"])


def plot_name(results: Dict[str, dict]) -> str:
    """The plot's file name, for what it shows: corruptions.png with a corruption suite, else clean_and_noisy.png."""
    return "corruptions.png" if any(res["summaries"] for res in results.values()) else "clean_and_noisy.png"


def plot_comparison(results: Dict[str, dict], path: Path) -> None:
    """Bars per corruption (mean over severities), one colour per model, one panel per suite (plus the test sets),
    each bar labelled with its value and each panel with the images behind it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in ("plain",) + CORRUPTION_SUITES if any(
        (s == "plain" and any(r["severity"] == 0 for r in res["rows"])) or s in res["summaries"]
        for res in results.values())]
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 3.6 * len(panels)), squeeze=False)
    width = 0.8 / max(len(results), 1)
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "plain":
            names = list(dict.fromkeys(
                r["suite"] for res in results.values() for r in res["rows"] if r["severity"] == 0))
            values = {label: {r["suite"]: r["accuracy"] for r in res["rows"] if r["severity"] == 0}
                      for label, res in results.items()}
        else:
            names = [c for c in CORRUPTIONS if any(c in res["summaries"].get(panel, {}).get("per_corruption", {})
                                                   for res in results.values())]
            values = {label: dict(res["summaries"][panel]["per_corruption"], mean=res["summaries"][panel]["mean_all"])
                      if panel in res["summaries"] else {} for label, res in results.items()}
            names.append("mean")
        for i, label in enumerate(results):
            bars = ax.bar(np.arange(len(names)) + i * width, [values[label].get(n, np.nan) for n in names], width,
                          label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2)
        ax.set_xticklabels(names, rotation=35, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("top-1 accuracy (%)")
        suites = ("clean", "un", "nun") if panel == "plain" else (panel,)
        counts = sorted({r["total"] for res in results.values() for r in res["rows"] if r["suite"] in suites})
        images = "/".join(f"{n:,}" for n in counts)
        ax.set_title(f"clean and noisy test sets ({images} images each)" if panel == "plain" else
                     f"{panel}: mean accuracy over severities 1-5 ({images} images per corruption and severity)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(results: Dict[str, dict], output: str | Path) -> List[Path]:
    """results.json, results.csv and the plot (``plot_name``) in ``output``; returns their paths."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.csv", out / plot_name(results)]
    paths[0].write_text(json.dumps(results, indent=1))
    write_csv(results, paths[1])
    plot_comparison(results, paths[2])
    return paths
