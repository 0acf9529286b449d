import math

import pytest
import torch

from timm_fcl import fcl_loss


def dist(a, b):
    return 1.0 - float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def naive(z, zp, zn, tau, variant, margin, keep, anchors=None):
    """Eq. 5 / Eq. 4 sample by sample, with negatives {z_i^-} (where kept) and {z_j : j != i}; with ``anchors`` only
    for those rows of z (zp, zn, keep then hold one row per anchor), still against every other row of z."""
    b = z.shape[0]
    anchors = list(range(b)) if anchors is None else anchors
    total = 0.0
    for a, i in enumerate(anchors):
        negs = [z[j] for j in range(b) if j != i]
        if zn is not None and keep[a]:
            negs.append(zn[a])
        if variant == "xe":
            pos = math.exp((1 - dist(z[i], zp[a])) / tau)
            den = pos + sum(math.exp((1 - dist(z[i], n)) / tau) for n in negs)
            total += -math.log(pos / den)
        else:
            total += dist(z[i], zp[a]) ** 2 + sum(max(0.0, margin - dist(z[i], n)) ** 2 for n in negs)
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
