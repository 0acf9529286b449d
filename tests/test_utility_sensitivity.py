import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fcl
from timm_fcl import contextual_sensitivity, contextual_utility, embedding


def small_model():
    torch.manual_seed(0)
    return timm.create_model("lenet_mnist", num_classes=5).double().eval()


def test_utility_matches_finite_differences_and_leaves_no_parameter_grad():
    model = small_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 4])
    u = contextual_utility(model, x, y)
    assert u.shape == x.shape and (u >= 0).all()
    assert all(p.grad is None for p in model.parameters())
    eps = 1e-6
    idx = torch.randint(0, 784, (40,), generator=g)
    for i in range(3):
        for j in idx.tolist():
            xp, xm = x.clone(), x.clone()
            xp.view(3, -1)[i, j] += eps
            xm.view(3, -1)[i, j] -= eps
            # the per-sample loss l(y_i, f(x_i)): Definition 1
            fd = (F.cross_entropy(model(xp[i:i + 1]), y[i:i + 1]) - F.cross_entropy(model(xm[i:i + 1]), y[i:i + 1]))
            assert u.view(3, -1)[i, j].item() == pytest.approx(abs(fd.item()) / (2 * eps), rel=1e-4, abs=1e-9)


def test_utility_leaves_batchnorm_running_stats_alone():
    model = timm.create_model("resnet18", num_classes=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    contextual_utility(model, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def naive_sensitivity(model, x):
    """||d phi(x_i) / d x_ij|| from the full Jacobian of one sample at a time."""
    out = []
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: embedding(model, v)[0], x[i:i + 1])  # [E, 1, C, H, W]
        out.append(jac.pow(2).sum(0).sqrt())
    return torch.cat(out)


def test_exact_sensitivity_matches_full_jacobian():
    model = small_model()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    s = contextual_sensitivity(model, x)
    assert torch.allclose(s, naive_sensitivity(model, x), rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_projection_estimate_is_unbiased_for_squared_sensitivity():
    model = small_model()
    x = torch.rand(1, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact_sq = contextual_sensitivity(model, x, squared=True)
    g = torch.Generator().manual_seed(4)
    m = 400
    est_sq = contextual_sensitivity(model, x, num_projections=m, generator=g, squared=True)
    # the relative std of each element's estimate is <= sqrt(2/m) = 7%; its mean over elements is much tighter
    mask = exact_sq > exact_sq.max() * 1e-3
    ratio = est_sq[mask] / exact_sq[mask]
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.02)
    assert ratio.std().item() < 2 * (2 / m) ** 0.5
    est = contextual_sensitivity(model, x, num_projections=m, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(est, est_sq.sqrt())
