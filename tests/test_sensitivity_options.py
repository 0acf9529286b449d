"""Per-class results of the synthetic MNIST benchmark, and the FCL options for rare classes in the regularizer."""
import importlib.util
import statistics
from pathlib import Path

import pytest
import timm
import torch

from timm_fcl import FCLConfig, FeatureContrastiveRegularizer


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic_mnist.py"
    spec = importlib.util.spec_from_file_location("synthetic_mnist_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_class_accuracy_matches_a_loop(bench):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(15, (500,), generator=g)
    pred = torch.where(torch.rand(500, generator=g) < 0.6, labels, torch.randint(15, (500,), generator=g))
    got = bench.class_accuracy(pred, labels)
    for c in range(15):
        rows = [i for i in range(500) if labels[i] == c]
        assert got[c] == pytest.approx(sum(int(pred[i] == c) for i in rows) / len(rows))


def test_per_class_accuracy_averages_back_to_bal(bench, synthetic_mnist):
    """On the balanced validation split, the mean of the 15 per-class accuracies (and of the three group means) is the
    overall accuracy, for BAL and both noisy copies, with a briefly trained model whose classes differ."""
    train, val = synthetic_mnist["train"], synthetic_mnist["val"]
    torch.manual_seed(0)
    model = timm.create_model("lenet5_mnist", num_classes=15)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = train.float_images()[:2048], train.labels[:2048]
    for xb, yb in zip(x.split(128), y.split(128)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    vx = val.float_images()
    sets = bench.make_eval_sets(vx, bench.pixel_std(train.float_images()), noise_seed=0)
    overall, per_class = bench.score(model, sets, val.labels)
    for s in bench.SETS:
        assert overall[s] == pytest.approx(bench.accuracy(model, sets[s], val.labels))
        assert statistics.fmean(per_class[s]) == pytest.approx(overall[s], abs=1e-12)
        groups = bench.group_accuracy(per_class[s])
        assert statistics.fmean(groups.values()) == pytest.approx(overall[s], abs=1e-12)
    assert max(per_class["bal"]) - min(per_class["bal"]) > 0.2  # rare classes lag: the check is not 15 equal numbers


def test_balanced_class_weights(bench):
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    assert bench.balanced_class_weights(labels, 0.0, 3) == pytest.approx((1.0, 1.0, 1.0))
    w = bench.balanced_class_weights(labels, 1.0, 3)
    assert [w[c] * n for c, n in enumerate((90, 9, 1))] == pytest.approx([100 / 3] * 3)  # same total per class
    w = torch.tensor(bench.balanced_class_weights(labels, 0.5, 3))
    assert (w[labels].mean()).item() == pytest.approx(1.0)  # mean 1 over the samples
    assert w[2] / w[0] == pytest.approx(90 ** 0.5)


def _fcl_term(config, x, y, seed=0):
    torch.manual_seed(0)
    model = timm.create_model("lenet5_mnist", num_classes=8)
    reg = FeatureContrastiveRegularizer(model, config).train()
    return reg(x, y, generator=torch.Generator().manual_seed(seed)).fcl.item()


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_regularizer_passes_the_options_to_the_loss(fraction):
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    distinct, repeated = torch.arange(8), torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    base = dict(k=64, fraction=fraction)
    plain = _fcl_term(FCLConfig(**base), x, repeated)
    # per-class weights: a common factor scales the term; a weight of 0 on every class removes it
    assert _fcl_term(FCLConfig(**base, class_weights=(2.5,) * 8), x, repeated) == pytest.approx(2.5 * plain, rel=1e-5)
    assert _fcl_term(FCLConfig(**base, class_weights=(0.0,) * 8), x, repeated) == 0.0
    # other-class negatives: the same as "all" when no two samples share a label, different when some do
    other = FCLConfig(**base, negatives="other_class")
    assert _fcl_term(other, x, distinct) == pytest.approx(_fcl_term(FCLConfig(**base), x, distinct), rel=1e-6)
    assert _fcl_term(other, x, repeated) != pytest.approx(plain, rel=1e-3)


@pytest.fixture(scope="module")
def probe():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rare_class_probe.py"
    spec = importlib.util.spec_from_file_location("rare_class_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_placement_against_a_loop(probe):
    g = torch.Generator().manual_seed(2)
    utility = torch.rand(3, 1, 6, 6, generator=g)
    images = torch.rand(3, 1, 6, 6, generator=g)
    corners = torch.tensor([0, 3, 1])
    square = probe.corner_squares(corners, 3, image=6)
    assert square[0, :3, :3].all() and square[1, 3:, 3:].all() and square[2, :3, 3:].all()
    assert square.flatten(1).sum(1).tolist() == [9, 9, 9]
    low, high = probe.selection_masks(utility, 5)
    for i in range(3):
        order = utility[i].flatten().argsort()
        assert set(low[i].flatten().nonzero().flatten().tolist()) == set(order[:5].tolist())
        assert set(high[i].flatten().nonzero().flatten().tolist()) == set(order[-5:].tolist())
    got = probe.placement(utility, images, square, 5)
    ink = square & (images[:, 0] > probe.INK)
    want = sum(float((low[i] & ink[i]).sum()) / max(int(ink[i].sum()), 1) for i in range(3)) / 3
    assert got["ink_in_bottom"] == pytest.approx(want)
    # flipped to top-left: every corner square lands on the top-left one
    assert probe.to_top_left(square.float(), corners)[:, :3, :3].all()
