"""The unit of every accuracy this project writes: percent, timm's unit (its train.py's summary.csv and validate.py's
top1 / top5), so an evaluation's results.json, a run's summary.csv, the benchmarks' JSONs and tables and a model card
read alike.

Each model's entry in a results.json says so itself (``"unit": "percent"``): its rows' ``accuracy`` (top-1) and
``top5``, and every number of its corruption summaries. A file in any other unit (or none) is refused, not converted.
"""
from __future__ import annotations

from typing import Mapping

UNIT = "percent"


def check_unit(entry: Mapping, where: str) -> None:
    """A ValueError, one line, unless ``entry`` says its accuracies are in percent."""
    if entry.get("unit") != UNIT:
        raise ValueError(f"{where}: accuracies in {entry.get('unit')!r}, not {UNIT!r} (this version reads percent only)")

