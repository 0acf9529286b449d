import math

import pytest
import torch

import timm_fcl
from timm_fcl import fcl_loss


def dist(a, b):
    return 1.0 - float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def naive(z, zp, zn, tau, variant, margin, keep, anchors=None, labels=None, weights=None):
    """Eq. 5 / Eq. 4 sample by sample, with negatives {z_i^-} (where kept) and {z_j : j != i}; with ``anchors`` only
    for those rows of z (zp, zn, keep then hold one row per anchor), still against every other row of z. With
    ``labels`` (one per row of z) the z_j of i's label are no negatives; ``weights`` (one per anchor) multiply the
    anchors' terms before the mean."""
    b = z.shape[0]
    anchors = list(range(b)) if anchors is None else anchors
    total = 0.0
    for a, i in enumerate(anchors):
        negs = [z[j] for j in range(b) if j != i and (labels is None or labels[j] != labels[i])]
        term = 0.0
        if zn is not None and keep[a]:
            negs.append(zn[a])
        if variant == "xe":
            pos = math.exp((1 - dist(z[i], zp[a])) / tau)
            den = pos + sum(math.exp((1 - dist(z[i], n)) / tau) for n in negs)
            term = -math.log(pos / den)
        else:
            term = dist(z[i], zp[a]) ** 2 + sum(max(0.0, margin - dist(z[i], n)) ** 2 for n in negs)
        total += term * (1.0 if weights is None else weights[a])
    return total / len(anchors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 2, 17])
@pytest.mark.parametrize("variant", ["xe", "margin"])
@pytest.mark.parametrize("with_neg", ["all", "masked", "none"])
def test_fcl_loss_matches_naive_loop(dtype, batch, variant, with_neg):
    g = torch.Generator().manual_seed(batch)
    z, zp, zn = (torch.randn(batch, 7, generator=g, dtype=dtype) for _ in range(3))
    keep = torch.rand(batch, generator=g) > 0.4 if with_neg == "masked" else torch.ones(batch, dtype=torch.bool)
    neg = None if with_neg == "none" else zn
    tau, margin = 0.3, 1.2
    got = fcl_loss(z, zp, neg, tau=tau, variant=variant, margin=margin,
                   neg_mask=keep if with_neg == "masked" else None)
    want = naive(z.double(), zp.double(), None if neg is None else zn.double(), tau, variant, margin, keep.tolist())
    assert got.dtype == dtype
    assert got.item() == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-12, abs=1e-6)


@pytest.mark.parametrize("variant", ["xe", "margin"])
@pytest.mark.parametrize("with_neg", ["masked", "none"])
@pytest.mark.parametrize("anchors", [[3], [5, 0, 9], list(range(11))[::-1]])
def test_fcl_loss_on_anchor_subset_keeps_every_clean_negative(variant, with_neg, anchors):
    g = torch.Generator().manual_seed(len(anchors))
    z = torch.randn(11, 6, generator=g, dtype=torch.float64)
    zp, zn = (torch.randn(len(anchors), 6, generator=g, dtype=torch.float64) for _ in range(2))
    keep = torch.rand(len(anchors), generator=g) > 0.4
    neg = None if with_neg == "none" else zn
    got = fcl_loss(z, zp, neg, tau=0.3, variant=variant, margin=1.2, neg_mask=keep if neg is not None else None,
                   anchor_index=torch.tensor(anchors))
    want = naive(z, zp, neg, 0.3, variant, 1.2, keep.tolist(), anchors=anchors)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # every anchor: the full loss's terms of those samples
    if len(anchors) == 11:
        order = torch.tensor(anchors).argsort()
        full = fcl_loss(z, zp[order], None if neg is None else zn[order], tau=0.3, variant=variant, margin=1.2,
                        neg_mask=None if neg is None else keep[order])
        assert got.item() == pytest.approx(full.item(), rel=1e-12)


def test_fcl_loss_gradient_flows_to_all_three_embeddings():
    z, zp, zn = (torch.randn(5, 4, requires_grad=True) for _ in range(3))
    fcl_loss(z, zp, zn, tau=0.5).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (z, zp, zn))


def test_fcl_loss_prefers_close_positive():
    z = torch.randn(8, 16)
    near = fcl_loss(z, z + 0.01 * torch.randn_like(z), torch.randn_like(z), tau=0.1)
    far = fcl_loss(z, torch.randn_like(z), z + 0.01 * torch.randn_like(z), tau=0.1)
    assert near < far


def test_fcl_loss_rejects_bad_shapes_and_variant():
    with pytest.raises(ValueError):
        fcl_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError):
        fcl_loss(torch.randn(4, 3), torch.randn(4, 3), variant="hinge")
    with pytest.raises(ValueError, match="2 anchors"):
        fcl_loss(torch.randn(4, 3), torch.randn(4, 3), anchor_index=torch.tensor([0, 2]))


@pytest.mark.parametrize("variant", ["xe", "margin"])
@pytest.mark.parametrize("anchors", [None, [4, 0, 9, 2]])
@pytest.mark.parametrize("with_labels, with_weights", [(True, False), (False, True), (True, True)])
def test_fcl_loss_other_class_negatives_and_anchor_weights_match_naive(variant, anchors, with_labels, with_weights):
    g = torch.Generator().manual_seed(7)
    b, m = 12, 12 if anchors is None else len(anchors)
    z = torch.randn(b, 5, generator=g, dtype=torch.float64)
    zp, zn = (torch.randn(m, 5, generator=g, dtype=torch.float64) for _ in range(2))
    keep = torch.rand(m, generator=g) > 0.3
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 2, 0, 1, 4])  # repeats, and a class with one sample (4)
    weights = torch.rand(m, generator=g, dtype=torch.float64) * 3
    got = fcl_loss(z, zp, zn, tau=0.2, variant=variant, margin=1.1, neg_mask=keep,
                   anchor_index=None if anchors is None else torch.tensor(anchors),
                   labels=labels if with_labels else None, weights=weights if with_weights else None)
    want = naive(z, zp, zn, 0.2, variant, 1.1, keep.tolist(), anchors=anchors,
                 labels=labels.tolist() if with_labels else None, weights=weights.tolist() if with_weights else None)
    assert got.item() == pytest.approx(want, rel=1e-12)
    # the options change the loss (so the comparison above is not trivially the plain loss)
    plain = fcl_loss(z, zp, zn, tau=0.2, variant=variant, margin=1.1, neg_mask=keep,
                     anchor_index=None if anchors is None else torch.tensor(anchors))
    assert abs(got.item() - plain.item()) > 1e-6


def test_fcl_loss_options_reduce_to_the_plain_loss():
    g = torch.Generator().manual_seed(3)
    z, zp, zn = (torch.randn(9, 4, generator=g) for _ in range(3))
    plain = fcl_loss(z, zp, zn, tau=0.1)
    # distinct labels leave every negative in; unit weights are the plain mean
    same = fcl_loss(z, zp, zn, tau=0.1, labels=torch.arange(9), weights=torch.ones(9))
    assert same.item() == pytest.approx(plain.item(), rel=1e-6)
    # one class everywhere: only z_i^- is left as a negative
    alone = fcl_loss(z, zp, zn, tau=0.1, labels=torch.zeros(9, dtype=torch.long))
    want = naive(z.double(), zp.double(), zn.double(), 0.1, "xe", 1.0, [True] * 9, labels=[0] * 9)
    assert alone.item() == pytest.approx(want, rel=1e-5)


def test_anchor_options_follow_the_config():
    from timm_fcl import FCLConfig
    from timm_fcl.losses import anchor_options

    y = torch.tensor([2, 0, 1, 2, 1])
    assert anchor_options(FCLConfig(), y) == {}
    opts = anchor_options(FCLConfig(negatives="other_class", class_weights=(0.5, 2.0, 4.0)), y,
                          anchor_index=torch.tensor([3, 1]))
    assert torch.equal(opts["labels"], y)                       # every row's label: negatives span the batch
    assert opts["weights"].tolist() == [4.0, 0.5]               # the anchors' classes, in anchor order
    with pytest.raises(ValueError, match="label 2"):
        anchor_options(FCLConfig(class_weights=(1.0, 1.0)), y)
    with pytest.raises(ValueError):
        FCLConfig(negatives="same_class")
    with pytest.raises(ValueError):
        FCLConfig(class_weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="one weight per anchor"):
        fcl_loss(torch.randn(4, 3), torch.randn(4, 3), weights=torch.ones(3))


@pytest.mark.parametrize("variant", ["xe", "margin"])
def test_loss_module_is_the_naive_loss_with_its_settings(variant):
    g = torch.Generator().manual_seed(3)
    z, zp, zn = (torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep = torch.rand(9, generator=g) > 0.3
    module = timm_fcl.FeatureContrastiveLoss(tau=0.4, variant=variant, margin=0.8)
    got = module(z, zp, zn, neg_mask=keep)
    want = naive(z.detach(), zp.detach(), zn.detach(), 0.4, variant, 0.8, keep.tolist())
    assert got.item() == pytest.approx(want, rel=1e-12)
    # the module's gradients are the function's
    grads = torch.autograd.grad(got, (z, zp, zn))
    ref = torch.autograd.grad(fcl_loss(z, zp, zn, tau=0.4, variant=variant, margin=0.8, neg_mask=keep), (z, zp, zn))
    assert all(torch.equal(a, b) for a, b in zip(grads, ref))
    # without the perturbed negative: CL+Gaussian's loss
    assert module(z, zp).item() == pytest.approx(naive(z.detach(), zp.detach(), None, 0.4, variant, 0.8, [True] * 9),
                                                 rel=1e-12)


def test_loss_module_refuses_bad_settings_when_built():
    with pytest.raises(ValueError, match="variant"):
        timm_fcl.FeatureContrastiveLoss(variant="hinge")
    with pytest.raises(ValueError, match="tau"):
        timm_fcl.FeatureContrastiveLoss(tau=0.0)
    assert "tau=0.5" in repr(timm_fcl.FeatureContrastiveLoss(tau=0.5))
