"""timm_fcl.patch_gaussian: the Patch Gaussian transform (Lopes et al. 2019)."""
import pytest
import torch

from timm_fcl import PatchGaussian


def test_patch_gaussian_noise_stays_in_a_clipped_patch():
    img = torch.full((3, 32, 32), 0.5)
    pg = PatchGaussian(patch_size=9, max_sigma=0.2, generator=torch.Generator().manual_seed(0))
    sizes = set()
    for _ in range(200):
        out = pg(img)
        assert out.shape == img.shape and out.dtype == img.dtype
        assert out.min() >= 0 and out.max() <= 1
        changed = (out != img).any(0)
        if changed.any():
            rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
            h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert h <= 9 and w <= 9
            # every channel of every pixel inside the bounding box is noisy: a solid patch, not scattered pixels
            assert changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].float().mean() > 0.95
            sizes.add((int(h), int(w)))
            # the noise std never exceeds max_sigma (3-sigma bound on the patch's spread)
            assert (out - img)[:, changed].std() < 0.2 * 1.5
    assert (9, 9) in sizes and any(h < 9 or w < 9 for h, w in sizes)  # full patches, and patches clipped at borders


def test_patch_gaussian_sigma_is_uniform_up_to_max():
    img = torch.full((1, 64, 64), 0.5)
    pg = PatchGaussian(patch_size=64, max_sigma=0.1, generator=torch.Generator().manual_seed(1))
    stds = []
    for _ in range(300):
        delta = pg(img) - img
        stds.append(delta[delta != 0].std().item() if (delta != 0).sum() > 100 else 0.0)
    stds = torch.tensor(stds)
    assert stds.max() <= 0.1 * 1.1 and stds.min() < 0.01
    assert stds.mean().item() == pytest.approx(0.05, abs=0.006)   # E[U(0, 0.1)]


def test_patch_gaussian_refuses_uint8_images():
    with pytest.raises(TypeError, match="Normalize"):
        PatchGaussian()(torch.zeros(3, 8, 8, dtype=torch.uint8))
