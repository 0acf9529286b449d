"""Per-image hits and the paired bootstrap that turns two methods' hits into a difference with an interval."""
import numpy as np
import pytest

from timm_fcl.robustness.hits import pack_hits, paired_bootstrap, unpack_hits


def test_pack_round_trips_any_length():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 10_000):
        bits = rng.random(n) < 0.5
        assert np.array_equal(unpack_hits(pack_hits(bits), n), bits)
    assert len(pack_hits(np.ones(10_000, bool))) == 1668


def test_bootstrap_of_one_seed_matches_the_normal_interval_of_a_paired_mean():
    rng = np.random.default_rng(1)
    a = rng.random(4000) < 0.62
    b = rng.random(4000) < 0.55
    got = paired_bootstrap(a, b, resamples=4000, seed=3)
    d = a.astype(float) - b
    se = d.std(ddof=1) / np.sqrt(d.size)
    assert got["mean"] == pytest.approx(d.mean())
    assert got["low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.15 * 1.96 * se)
    assert got["high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.15 * 1.96 * se)


def test_bootstrap_resamples_seeds_too_and_an_equal_pair_has_a_zero_interval():
    a = np.ones((3, 50))
    assert paired_bootstrap(a, a)["low"] == paired_bootstrap(a, a)["high"] == 0.0
    # the methods differ by a per-seed offset only: the interval is the spread of the seeds' means, not of images
    b = a - np.array([[0.1], [0.2], [0.3]])
    got = paired_bootstrap(a, b, resamples=3000)
    assert got["mean"] == pytest.approx(0.2)
    assert 0.1 - 1e-9 <= got["low"] < 0.15 and 0.25 < got["high"] <= 0.3 + 1e-9
    assert got["seeds"] == 3 and got["images"] == 50


def test_bootstrap_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap(np.ones((2, 5)), np.ones((3, 5)))
