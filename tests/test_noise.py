"""UN / NUN noise (paper section 4.1): replaced fraction, where NUN puts the noise, uniform gray levels."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import timm_fcl

from timm_fcl.robustness.noise import nonuniform_noise, nonuniform_noise_probability, pixel_std, uniform_noise


def replaced(clean, noisy):
    """[N, H, W] locations changed in any channel (a U[0,1) draw equals the old value with probability ~0)."""
    return (clean != noisy).any(1)


def ks_uniform(values):
    """Kolmogorov-Smirnov distance between the sample and U[0, 1]."""
    v = values.double().sort().values
    n = v.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - v).max().item(), (v - (i - 1) / n).max().item())


@pytest.fixture(scope="module")
def mnist_sets(synthetic_mnist):
    train = synthetic_mnist["train"].float_images()
    test = synthetic_mnist["test"].float_images()[:4000]
    return train, test, pixel_std(train)


def test_uniform_noise_fraction_and_locations(mnist_sets):
    _, test, _ = mnist_sets
    noisy = uniform_noise(test, 0.15, generator=torch.Generator().manual_seed(0))
    mask = replaced(test, noisy)
    per_image = mask.float().mean((1, 2))
    assert (per_image - 0.15).abs().max() < 0.01  # round(0.15 * 784) = 118 locations in every image
    assert torch.equal(noisy[~mask[:, None].expand_as(test)], test[~mask[:, None].expand_as(test)])
    # locations uniform: per-location rates over 4000 images, chi-square against the 15% expectation (783 dof)
    hits = mask.sum(0).double()
    expected = 0.15 * len(test)
    chi2 = (((hits - expected) ** 2) / (expected * 0.85)).sum().item()
    assert chi2 < 783 + 4 * math.sqrt(2 * 783)


def test_nonuniform_noise_fraction(mnist_sets):
    _, test, std = mnist_sets
    noisy = nonuniform_noise(test, std, 0.15, generator=torch.Generator().manual_seed(0))
    assert abs(replaced(test, noisy).float().mean().item() - 0.15) < 0.01


def test_nonuniform_noise_prefers_low_variance_pixels(mnist_sets):
    _, test, std = mnist_sets
    mask = replaced(test, nonuniform_noise(test, std, 0.15, generator=torch.Generator().manual_seed(1)))
    rate = mask.float().mean(0).flatten()  # measured replacement rate per location
    s = std.flatten()
    varying = s > 0
    order = s[varying].argsort()
    quarter = order.numel() // 4
    low, high = rate[varying][order[:quarter]], rate[varying][order[-quarter:]]
    assert low.mean() > 3 * high.mean(), (low.mean(), high.mean())
    # constant pixels (never-inked borders) are the least informative: always replaced
    assert (rate[~varying] == 1).all()
    # inversely proportional: where not clipped at 1, rate * std is one constant c (up to sampling noise)
    unclipped = varying & (rate < 0.5)
    c = (rate[unclipped] * s[unclipped])
    assert c.std() / c.mean() < 0.35
    # rank correlation between std and rate is strongly negative
    r_s = s[varying].argsort().argsort().double()
    r_rate = rate[varying].argsort().argsort().double()
    assert torch.corrcoef(torch.stack([r_s, r_rate]))[0, 1] < -0.8


@pytest.mark.parametrize("noise", ["uniform", "nonuniform"])
def test_replacement_values_uniform(mnist_sets, noise):
    _, test, std = mnist_sets
    g = torch.Generator().manual_seed(2)
    noisy = uniform_noise(test, generator=g) if noise == "uniform" else nonuniform_noise(test, std, generator=g)
    values = noisy[:, 0][replaced(test, noisy)]
    n = values.numel()
    assert n > 100_000
    assert ks_uniform(values) < 1.95 / math.sqrt(n)  # KS critical value at alpha = 0.001
    counts = torch.histc(values, bins=20, min=0, max=1).double()
    assert ((counts - n / 20) ** 2 / (n / 20)).sum() < 43.82  # chi-square, 19 dof, p = 0.001


def test_rgb_gets_one_gray_level_per_location():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 16, 16, generator=g)
    original = images.clone()
    std = torch.rand(16, 16, generator=g) + 0.1
    for noisy in (uniform_noise(images, 0.15, generator=g), nonuniform_noise(images, std, 0.15, generator=g)):
        assert torch.equal(images, original)  # input untouched
        changed = (noisy != images)
        assert torch.equal(changed.any(1), changed.all(1))  # a location changes in all channels or none
        mask = changed.all(1)
        assert torch.equal(noisy[:, 0][mask], noisy[:, 1][mask]) and torch.equal(noisy[:, 0][mask], noisy[:, 2][mask])


def test_noise_deterministic_from_generator():
    images = torch.rand(8, 1, 28, 28)
    std = torch.rand(28, 28)
    for fn in (lambda g: uniform_noise(images, generator=g), lambda g: nonuniform_noise(images, std, generator=g)):
        a, b = fn(torch.Generator().manual_seed(5)), fn(torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and not torch.equal(a, fn(torch.Generator().manual_seed(6)))


def test_probability_by_hand():
    # std 1, 2, 4, 8 and fraction 0.25 (budget one pixel): c / std with c * (1 + 1/2 + 1/4 + 1/8) = 1
    std = torch.tensor([[1.0, 2.0], [4.0, 8.0]])
    c = 1 / 1.875
    assert torch.allclose(nonuniform_noise_probability(std, 0.25), torch.tensor([[c, c / 2], [c / 4, c / 8]]))
    # fraction 0.75 (budget 3): c = 3 / 1.875 gives c/1 > 1, clip it; c = 2 / 0.875 gives c/2 > 1, clip it;
    # the last two share the remaining 1: c = 1 / (1/4 + 1/8)
    p = nonuniform_noise_probability(std, 0.75)
    c = 1 / 0.375
    assert torch.allclose(p, torch.tensor([[1.0, 1.0], [c / 4, c / 8]]))
    assert abs(p.mean().item() - 0.75) < 1e-6


def test_probability_clipping_keeps_the_budget():
    std = torch.cat([torch.zeros(30), torch.full((30,), 1e-4), torch.rand(940) + 0.01]).view(25, 40)
    p = nonuniform_noise_probability(std, 0.15)
    assert abs(p.mean().item() - 0.15) < 1e-6 and p.max() <= 1
    assert (p.flatten()[:60] == 1).all()  # constant and near-constant pixels clipped to 1
    # more constant pixels than the budget: they share it, varying pixels get nothing
    std = torch.cat([torch.zeros(200), torch.rand(800) + 0.01]).view(25, 40)
    p = nonuniform_noise_probability(std, 0.15).flatten()
    assert torch.allclose(p[:200], torch.full((200,), 0.75)) and (p[200:] == 0).all()


def test_pixel_std_streaming_matches_torch():
    x = torch.rand(100, 3, 5, 7, dtype=torch.float64).float() * torch.linspace(0, 1, 7)
    expected = x.double().std(0).mean(0).float()
    assert torch.allclose(pixel_std(x), expected, atol=1e-6)
    assert torch.allclose(pixel_std(iter(x.split(13))), expected, atol=1e-6)
    assert pixel_std(torch.ones(5, 1, 4, 4)).eq(0).all()


def test_noise_is_public_and_the_robustness_package_imports_without_opencv():
    assert timm_fcl.robustness.uniform_noise is uniform_noise and timm_fcl.robustness.pixel_std is pixel_std
    code = ("import sys, timm_fcl.robustness; "
            "print(sorted(m for m in ('cv2', 'imagecorruptions', 'numba') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
