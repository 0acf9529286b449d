"""Paired differences of the CIFAR-10 tables with a 95% interval from the runs' per-image results."""
import sys

import numpy as np
import pytest

from timm_fcl.robustness.hits import pack_counts, pack_hits, paired_bootstrap
from train_helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import cifar_common as common  # noqa: E402


def _entry(rng, p_clean, p_un, counts_mean):
    n = 400
    hits = {s: rng.random(n) < p for s, p in (("clean", p_clean), ("un", p_un), ("nun", p_un))}
    counts = rng.binomial(95, counts_mean, n)
    return {"hits": {s: pack_hits(h) for s, h in hits.items()}, "images": {s: n for s in hits},
            "c10c": {"hits_count": pack_counts(counts), "cells": 95}}, hits, counts


def test_interval_is_the_bootstrap_of_the_per_image_results_in_percent():
    rng = np.random.default_rng(0)
    runs, raw = {"fcl": {}, "xe": {}}, {"fcl": {}, "xe": {}}
    for seed in (0, 1, 2):
        runs["fcl"][seed], *raw["fcl"][seed] = _entry(rng, 0.89, 0.55, 0.74)
        runs["xe"][seed], *raw["xe"][seed] = _entry(rng, 0.89, 0.32, 0.67)
    got = common.paired_interval(runs, "fcl", "xe", "un")
    a = np.stack([raw["fcl"][s][0]["un"] for s in (0, 1, 2)]).astype(float)
    b = np.stack([raw["xe"][s][0]["un"] for s in (0, 1, 2)]).astype(float)
    want = paired_bootstrap(a, b)
    assert got["seeds"] == 3
    assert got["mean"] == pytest.approx(100 * (a.mean() - b.mean()))
    assert (got["low"], got["high"]) == pytest.approx((100 * want["low"], 100 * want["high"]))
    assert got["low"] > 0  # 23 points apart on 1,200 images: the interval excludes 0
    c = common.paired_interval(runs, "fcl", "xe", "mean")  # the C mean from the per-image counts of cells right
    fc = np.stack([raw["fcl"][s][1] for s in (0, 1, 2)]) / 95
    xc = np.stack([raw["xe"][s][1] for s in (0, 1, 2)]) / 95
    assert c["mean"] == pytest.approx(100 * (fc.mean() - xc.mean()))


def test_no_interval_without_per_image_results_for_every_shared_seed():
    rng = np.random.default_rng(1)
    runs = {"fcl": {s: _entry(rng, 0.9, 0.5, 0.7)[0] for s in (0, 1)}, "xe": {s: _entry(rng, 0.9, 0.3, 0.7)[0]
                                                                             for s in (0, 1)}}
    runs["xe"][1] = {"clean": 89.0, "un": 31.0, "nun": 30.0}  # an older run: numbers only
    assert common.paired_interval(runs, "fcl", "xe", "un") is None
    assert common.paired_interval(runs, "fcl", "xe", "noise") is None  # a group mean: no per-image scores
    assert common.paired_interval(runs, "fcl", "pg_xe", "un") is None  # no shared seed
