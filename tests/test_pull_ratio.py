"""The pull ratio: the median over anchors of |d(lambda x term)/dz_i| / |d ce/dz_i|, measured on request by the
regularizer and logged by train_fcl.py once per log window (and as train_pull in summary.csv)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from timm_fcl import FCLConfig, FeatureContrastiveRegularizer, contextual_utility, embedding, fcl_loss
from timm_fcl.perturbations import utility_perturbations

from conftest import create


def _reference_pull(model, x, y, cfg: FCLConfig, seed: int) -> torch.Tensor:
    """The probe's computation: z a leaf, ce = CE(h(z)), the FCL term's batch sum from z and the perturbed embeddings,
    one gradient of each per anchor."""
    u = contextual_utility(model, x, y)
    x_low, x_high = utility_perturbations(x, u, cfg.k, cfg.sigma, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        z_pos, z_neg = embedding(model, x_low), embedding(model, x_high)
    z = embedding(model, x).detach().requires_grad_(True)
    ce = F.cross_entropy(model.get_classifier()(z), y)
    term = cfg.weight * len(y) * fcl_loss(z, z_pos, z_neg, tau=cfg.tau)  # lambda x the batch sum
    (g_term,) = torch.autograd.grad(term, z)
    (g_ce,) = torch.autograd.grad(ce, z)
    return (g_term.norm(dim=1) / g_ce.norm(dim=1)).median()


def test_pull_ratio_equals_the_per_anchor_reference_and_leaves_the_loss_alone(mnist_like):
    x, y = mnist_like[0][:12], mnist_like[1][:12]
    model = create("lenet_mnist").train()
    cfg = FCLConfig(k=100, sigma=0.5, tau=0.2, weight=3e-3)
    reg = FeatureContrastiveRegularizer(model, cfg).train()
    out = reg(x, y, generator=torch.Generator().manual_seed(5), measure_pull=True)
    plain = reg(x, y, generator=torch.Generator().manual_seed(5))
    assert plain.pull is None
    torch.testing.assert_close(out.loss, plain.loss)
    want = _reference_pull(model, x, y, cfg, seed=5)
    torch.testing.assert_close(out.pull, want)
    assert 0 < out.pull.item() < float("inf")
    out.loss.backward()  # the graph survived the measurement
    # lambda scales the pull linearly
    reg.config = FCLConfig(k=100, sigma=0.5, tau=0.2, weight=6e-3)
    doubled = reg(x, y, generator=torch.Generator().manual_seed(5), measure_pull=True)
    torch.testing.assert_close(doubled.pull, 2 * want)


@pytest.mark.parametrize("method", ["cl_gauss", "fcl"])
def test_pull_is_measured_for_embedding_terms_and_through_the_features_of_a_separate_head(method, cifar_like):
    x, y = cifar_like[0][:8], cifar_like[1][:8]
    model = create("resnet18", drop_rate=0.2)  # dropout before the classifier: logits and z are separate calls
    reg = FeatureContrastiveRegularizer(model, FCLConfig(method=method, k=64, weight=1e-3)).train()
    assert reg.head_mode == "separate"
    out = reg(x, y, generator=torch.Generator().manual_seed(0), measure_pull=True)
    assert out.pull is not None and torch.isfinite(out.pull) and out.pull > 0


def test_no_pull_without_an_embedding_term_or_on_a_step_without_the_term(mnist_like):
    x, y = mnist_like[0][:8], mnist_like[1][:8]
    model = create("lenet_mnist").train()
    for cfg, step in ((FCLConfig(method="xe_gauss"), 0), (FCLConfig(method="xe"), 0), (FCLConfig(every=4), 1)):
        out = FeatureContrastiveRegularizer(model, cfg).train()(x, y, step=step, measure_pull=True)
        assert out.pull is None, cfg.method


def test_pull_on_a_fraction_takes_the_median_over_the_subsets_anchors(mnist_like):
    x, y = mnist_like[0][:16], mnist_like[1][:16]
    reg = FeatureContrastiveRegularizer(create("lenet_mnist"), FCLConfig(k=50, fraction=0.25)).train()
    seen = {}
    real = FeatureContrastiveRegularizer.pull_ratio

    def spy(term, ce, z, anchors):
        seen["anchors"] = anchors
        return real(term, ce, z, anchors)

    reg.pull_ratio = spy
    out = reg(x, y, generator=torch.Generator().manual_seed(3), measure_pull=True)
    assert seen["anchors"].numel() == 4 and torch.isfinite(out.pull)
