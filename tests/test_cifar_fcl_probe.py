"""benchmarks/cifar_fcl_probe.py: its measures against naive computations on a small random model."""
import importlib.util
import sys
from types import SimpleNamespace

import pytest
import timm
import torch

import timm_fcl  # noqa: F401  (registers resnet20_cifar)
from timm_fcl.utility import contextual_utility
from train_helpers import ROOT

spec = importlib.util.spec_from_file_location("cifar_fcl_probe", ROOT / "benchmarks" / "cifar_fcl_probe.py")
probe = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
spec.loader.exec_module(probe)


@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    x01, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, -1, 1, 1), torch.tensor([0.25, 0.2, 0.3]).view(1, -1, 1, 1)

    def normalize(images):
        return (images - mean) / std

    normalize.std = [0.25, 0.2, 0.3]
    args = SimpleNamespace(k=100, sigmas=[0.0, 0.5], gauss_sigma=0.3)
    out = probe.probe_batch(model, x01, y, normalize, args, torch.Generator().manual_seed(3))
    return model, x01, y, normalize, args, out


def test_utility_shares_and_where_un_lands_match_a_naive_count(measured):
    model, x01, y, normalize, args, out = measured
    utility = contextual_utility(model, normalize(x01), y).flatten(1)
    ranked = [sorted(range(utility.shape[1]), key=lambda i: float(u[i])) for u in utility]
    top_share = sum(float(u[r[-args.k:]].sum() / u.sum()) for u, r in zip(utility, ranked))
    bottom_share = sum(float(u[r[:args.k]].sum() / u.sum()) for u, r in zip(utility, ranked))
    assert out["sums"]["utility_share_top"] == pytest.approx(top_share, rel=1e-5)
    assert out["sums"]["utility_share_bottom"] == pytest.approx(bottom_share, rel=1e-4)
    mask = probe.un_mask(x01, torch.Generator().manual_seed(3))  # UN's mask is the generator's first draw
    assert mask.view(6, 3, -1).all(1).eq(mask.view(6, 3, -1).any(1)).all()  # a location: all of its channels
    assert int(mask[0].sum()) == 3 * round(0.15 * 32 * 32)
    for key, ends in (("un_in_bottom", slice(None, args.k)), ("un_in_top", slice(-args.k, None))):
        naive = sum(len(set(r[ends]) & set(m.nonzero().flatten().tolist())) / int(m.sum())
                    for r, m in zip(ranked, mask))
        assert out["sums"][key] == pytest.approx(naive, rel=1e-6)


def test_noise_of_zero_leaves_the_embedding_and_the_predictions(measured):
    _, _, _, _, _, out = measured
    sums = out["sums"]
    for kind in ("low", "high", "random"):
        assert sums[f"dist_{kind}@0.0"] == pytest.approx(0.0, abs=1e-5)
        assert sums[f"acc_{kind}@0.0"] == sums["acc_clean"]
    assert sums["dist_un"] > 0 and sums["dist_gaussian"] > 0 and sums["dist_high@0.5"] > 0


def test_location_maps_count_the_chosen_elements(measured):
    model, x01, y, normalize, args, out = measured
    utility = contextual_utility(model, normalize(x01), y)
    top = torch.zeros(6, 3 * 32 * 32, dtype=torch.bool)
    top.scatter_(1, utility.flatten(1).topk(args.k, dim=1).indices, True)
    assert torch.equal(out["maps"]["top"], top.view(6, 3, 32, 32).any(1).float().sum(0))
    assert out["maps"]["utility"].mean() == pytest.approx(6.0, rel=1e-4)  # each image's map averages 1


def test_the_contrast_is_eq5_as_the_regularizer_computes_it(measured):
    import math

    from timm_fcl.losses import fcl_loss
    from timm_fcl.perturbations import perturbed_batch

    model, x01, y, normalize, _, _ = measured
    args = SimpleNamespace(k=100, fcl_sigma=0.5, weight=8e-4)
    stats = probe.contrast(model, x01, y, normalize, args, 2.0, torch.Generator().manual_seed(5))
    x = normalize(x01)
    both = perturbed_batch(x, contextual_utility(model, x, y), 100, 0.5, torch.Generator().manual_seed(5),
                           normalize.std)
    with torch.no_grad():
        z, z_both = probe.embed(model, x)[0], probe.embed(model, both)[0]
    assert stats["term"] == pytest.approx(fcl_loss(z, *z_both.chunk(2), tau=2.0).item(), rel=1e-5)
    assert stats["floor"] == pytest.approx(-0.5 + math.log(math.exp(0.5) + 6))
    assert 0 < stats["p_pos"] < 1 and 0 < stats["p_xneg"] < 1
    double = probe.contrast(model, x01, y, normalize, SimpleNamespace(k=100, fcl_sigma=0.5, weight=1.6e-3), 2.0,
                            torch.Generator().manual_seed(5))
    assert double["pull_vs_ce"] == pytest.approx(2 * stats["pull_vs_ce"], rel=1e-5)
