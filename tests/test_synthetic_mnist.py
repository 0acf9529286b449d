"""Synthetic MNIST (paper section 4.1) on the real MNIST: label rule, class counts, corners, seed, disjoint sources."""
import pytest
import torch

from timm_fcl.data.synthetic_mnist import (CORNERS, SyntheticMNISTDataset, build_synthetic_mnist, corner_slices,
                                      load_mnist)


@pytest.fixture(scope="module")
def mnist(mnist_root):
    return {True: load_mnist(mnist_root, train=True), False: load_mnist(mnist_root, train=False)}


def test_label_rule(synthetic_mnist, mnist):
    for name, split in synthetic_mnist.items():
        _, targets = mnist[split.mnist_train]
        assert torch.equal(split.digits, targets[split.sources]), name  # digits are the sources' MNIST labels
        has_corner = split.corners >= 0
        expected = torch.where(has_corner & (split.digits < 5), split.digits + 10, split.digits)
        assert torch.equal(split.labels, expected), name
        # every 5-9 carries a corner digit (uninformative), so classes 0-14 are exactly told apart by the rule above
        assert has_corner[split.digits >= 5].all(), name
        assert torch.equal(has_corner, split.corner_sources >= 0), name


def test_class_counts(synthetic_mnist):
    train = synthetic_mnist["train"].labels.bincount(minlength=15)
    assert len(synthetic_mnist["train"]) == 50_000
    assert ((train[:10] > 4_000) & (train[:10] < 6_000)).all(), train  # "about 5000 each"
    assert (train[10:] == 50).all(), train                            # "about 50 each", ratio ~1/100
    # uninformative corner digits: ~25k on 5-9 against 250 informative ones, i.e. about 100 out of 101
    corner_digits = synthetic_mnist["train"].digits[synthetic_mnist["train"].corners >= 0]
    assert 95 <= (corner_digits >= 5).sum() / (corner_digits < 5).sum() <= 105


@pytest.mark.parametrize("name, per_class", [("val", 1000), ("test", 892)])
def test_balanced_eval_splits(synthetic_mnist, name, per_class):
    counts = synthetic_mnist[name].labels.bincount(minlength=15)
    assert (counts == per_class).all(), counts  # t10k has only 892 fives, so test is 15 x 892
    assert synthetic_mnist[name].labels.max() == 14


def test_corner_digits_inside_corner_region(synthetic_mnist, mnist):
    for name, split in synthetic_mnist.items():
        images, _ = mnist[split.mnist_train]
        centers = images[split.sources]
        diff = split.images[:, 0].int() - centers.int()
        assert (diff >= 0).all(), name  # max-merge never erases the central digit
        plain = split.corners < 0
        assert not diff[plain].any(), name  # no corner digit: the MNIST image untouched
        s = split.corner_size
        for c in range(len(CORNERS)):
            sel = split.corners == c
            rows, cols = corner_slices(c, s)
            outside = diff[sel].clone()
            outside[:, rows, cols] = 0
            assert not outside.any(), (name, CORNERS[c])  # every change lies in the chosen s x s corner
            # ... and the corner digit is there: the region holds clearly more ink than the bare MNIST corner
            ink = split.images[sel, 0, rows, cols].float().mean((1, 2))
            bare = centers[sel][:, rows, cols].float().mean((1, 2))
            assert (ink > bare + 5).float().mean() > 0.99, (name, CORNERS[c])


def test_corners_uniform(synthetic_mnist, mnist):
    corners = synthetic_mnist["train"].corners
    counts = corners[corners >= 0].bincount(minlength=4).double()
    expected = counts.sum() / 4
    assert ((counts - expected) ** 2 / expected).sum() < 16.27  # chi-square, 3 dof, p = 0.001
    # corner digits are random MNIST digits of all ten kinds
    split = synthetic_mnist["train"]
    corner_digits = mnist[True][1][split.corner_sources[split.corner_sources >= 0]]
    assert (corner_digits.bincount(minlength=10) > 2000).all()


def test_sources_disjoint(synthetic_mnist):
    used = {}
    for name, split in synthetic_mnist.items():
        ids = torch.cat([split.sources, split.corner_sources[split.corner_sources >= 0]]).unique()
        used[name] = set((ids + (0 if split.mnist_train else 100_000)).tolist())
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    assert not synthetic_mnist["test"].mnist_train and synthetic_mnist["val"].mnist_train
    # train uses each central source once; val/test use a 0-4 source twice (plain, and with a corner as class c+10)
    assert synthetic_mnist["train"].sources.unique().numel() == len(synthetic_mnist["train"])
    for name in ("val", "test"):
        split = synthetic_mnist[name]
        _, uses = split.sources.unique(return_counts=True)
        assert uses.max() == 2 and (uses == 2).sum() == (split.labels >= 10).sum(), name


def test_deterministic_from_seed(synthetic_mnist, mnist_root):
    again = build_synthetic_mnist(mnist_root, seed=0)
    other = build_synthetic_mnist(mnist_root, seed=1)
    for name in synthetic_mnist:
        assert torch.equal(again[name].images, synthetic_mnist[name].images), name
        assert torch.equal(again[name].labels, synthetic_mnist[name].labels), name
        assert not torch.equal(other[name].sources, synthetic_mnist[name].sources), name
    # another seed moves sources between train and validation, but the counts stay
    assert not torch.equal(other["val"].sources.sort().values, synthetic_mnist["val"].sources.sort().values)
    assert torch.equal(other["val"].labels.bincount(), synthetic_mnist["val"].labels.bincount())


def test_dataset_wrapper(synthetic_mnist):
    split = synthetic_mnist["val"]
    ds = SyntheticMNISTDataset(split)
    x, y = ds[3]
    assert len(ds) == len(split) and x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y == int(split.labels[3]) and torch.allclose(x * 255, split.images[3].float())
    assert torch.equal(split.float_images()[3], x)
