import pytest
import torch

from timm_fcl import gaussian_perturbation, utility_perturbations


def make(b=4, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g), torch.rand(b, c, h, w, generator=g)


@pytest.mark.parametrize("k", [1, 17, 192])
def test_exactly_k_elements_change_at_top_and_bottom_utilities(k):
    x, u = make()
    x_low, x_high = utility_perturbations(x, u, k, sigma=0.5, generator=torch.Generator().manual_seed(1))
    for i in range(x.shape[0]):
        order = u[i].flatten().argsort()
        changed_low = (x_low[i] != x[i]).flatten().nonzero().flatten()
        changed_high = (x_high[i] != x[i]).flatten().nonzero().flatten()
        assert set(changed_low.tolist()) == set(order[:k].tolist())
        assert set(changed_high.tolist()) == set(order[-k:].tolist())


def test_noise_is_gaussian_with_sigma_in_pixel_units_and_reproducible():
    x, u = make(b=64, c=3, h=16, w=16)
    k, sigma, std = 300, 0.5, (0.2, 0.25, 0.5)
    a = utility_perturbations(x, u, k, sigma, torch.Generator().manual_seed(7), input_std=std)
    b = utility_perturbations(x, u, k, sigma, torch.Generator().manual_seed(7), input_std=std)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    c = utility_perturbations(x, u, k, sigma, torch.Generator().manual_seed(8), input_std=std)
    assert not torch.equal(a[1], c[1])
    for out in a:
        delta = (out - x)
        for ch, s in enumerate(std):
            d = delta[:, ch][delta[:, ch] != 0] * s  # back in pixel units
            assert d.numel() > 1000
            assert d.mean().item() == pytest.approx(0.0, abs=0.03)
            assert d.std().item() == pytest.approx(sigma, rel=0.05)


def test_bad_k_and_shapes_are_refused():
    x, u = make()
    with pytest.raises(ValueError):
        utility_perturbations(x, u, 0, 0.5)
    with pytest.raises(ValueError):
        utility_perturbations(x, u, 3 * 8 * 8 + 1, 0.5)
    with pytest.raises(ValueError):
        utility_perturbations(x, u[:, :1], 4, 0.5)


def test_gaussian_perturbation_covers_every_element_with_per_channel_std():
    x = torch.zeros(32, 3, 32, 32)
    out = gaussian_perturbation(x, 0.3, torch.Generator().manual_seed(0), input_std=(0.1, 0.3, 0.6))
    assert (out != 0).all()
    for ch, s in enumerate((0.1, 0.3, 0.6)):
        assert out[:, ch].std().item() * s == pytest.approx(0.3, rel=0.03)


def test_channels_last_inputs_keep_their_format_and_values():
    x, u = make(b=2, c=3, h=8, w=8)
    a = utility_perturbations(x, u, 20, 0.5, torch.Generator().manual_seed(3))
    b = utility_perturbations(x.contiguous(memory_format=torch.channels_last), u, 20, 0.5,
                              torch.Generator().manual_seed(3))
    for p, q in zip(a, b):
        assert q.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(p, q)
