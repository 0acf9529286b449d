"""The unit of the accuracies in a results.json of ``python -m timm_fcl.eval``: percent, timm's unit (its train.py's
summary.csv and validate.py's top1 / top5), so the evaluation, the run's summary.csv and a model card read alike.

Each model's entry says so itself (``"unit": "percent"``): its rows' ``accuracy`` (top-1) and ``top5``, and every
number of its corruption summaries (means, group means, per corruption; mCE and relative mCE as Hendrycks & Dietterich
print them, in percent). An entry without ``unit`` was written before and holds fractions in [0, 1]; ``in_percent``
reads either, so older files still compare, publish and tabulate in the one unit.
"""
from __future__ import annotations

from typing import Dict, Mapping

UNIT = "percent"
ROW_ACCURACIES = ("accuracy", "top5")


def scaled(value, factor: float):
    """``value`` with every number in it (nested dicts included) times ``factor``; text, None and booleans are left
    as they are."""
    if isinstance(value, Mapping):
        return {k: scaled(v, factor) for k, v in value.items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value * factor
    return value


def summary_in_percent(summary: Mapping) -> dict:
    """A corruption summary computed from fractions, in percent (its ``preset`` name unchanged)."""
    return scaled(dict(summary), 100.0)


def entry_in_percent(entry: Mapping) -> dict:
    """One model's results in percent, whichever unit it was written in."""
    if entry.get("unit") == UNIT:
        return dict(entry)
    if entry.get("unit") is not None:
        raise ValueError(f"unknown accuracy unit {entry['unit']!r} (this version writes {UNIT!r})")
    rows = [dict(r, **{k: scaled(r[k], 100.0) for k in ROW_ACCURACIES if k in r}) for r in entry.get("rows", [])]
    summaries = {suite: summary_in_percent(s) for suite, s in (entry.get("summaries") or {}).items()}
    return dict(entry, unit=UNIT, rows=rows, summaries=summaries)


def in_percent(results: Mapping[str, Mapping]) -> Dict[str, dict]:
    """A whole results.json (``{label: entry}``) in percent."""
    return {label: entry_in_percent(entry) if isinstance(entry, Mapping) else entry
            for label, entry in results.items()}
