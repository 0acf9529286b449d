"""Uniform (UN) and non-uniform (NUN) pixel-noise test sets (FCL paper, section 4.1, Figure 3; reused in 4.2.1).

Both replace 15% of the pixels of each image by a uniformly random gray level. UN picks the locations uniformly; NUN
picks a location with probability inversely proportional to that pixel's standard deviation over the training images,
so the noise lands on the least informative pixels.

Conventions (the paper shows only grey MNIST):
- Images are float [N, C, H, W] in [0, 1]. A "pixel" is a spatial location: a replaced location gets ONE gray level
  drawn from U[0, 1), written to all C channels (a grey pixel on RGB images). The input is not modified.
- UN replaces exactly round(fraction * H * W) locations per image, chosen uniformly without replacement.
- NUN draws each location independently with probability p = min(1, c / std), c chosen so that mean(p) = fraction
  exactly: probabilities that would exceed 1 are clipped to 1 and their excess redistributed over the other pixels
  (water-filling), so the expected replaced fraction stays ``fraction``.
- Constant pixels (std 0, e.g. MNIST's always-black borders) have infinite inverse std: they are the least informative
  and get p = 1. Should they alone exceed the budget (more than fraction * H * W of them), they share it equally
  (p = fraction * H * W / n_constant) and every varying pixel gets p = 0 - the limit of the rule as c -> 0.
- ``pixel_std`` is the sample std (N - 1) over the training images per location, averaged over channels.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images [N, C, H, W] in [0, 1], got {tuple(images.shape)} {images.dtype}")


def _replace(images: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
    """images with the locations where mask [N, H, W] is True set to one U[0, 1) gray level across channels."""
    n, _, h, w = images.shape
    gray = torch.rand((n, 1, h, w), generator=generator, device=images.device, dtype=images.dtype)
    return torch.where(mask[:, None], gray, images)


def uniform_noise(images: Tensor, fraction: float = 0.15, generator: torch.Generator | None = None) -> Tensor:
    """BAL+UN: exactly round(fraction * H * W) uniformly chosen locations per image set to random gray levels."""
    _check_images(images)
    n, _, h, w = images.shape
    count = round(fraction * h * w)
    # ranking i.i.d. uniform keys picks a uniformly random subset of `count` locations per image
    keys = torch.rand((n, h * w), generator=generator, device=images.device)
    mask = torch.zeros((n, h * w), dtype=torch.bool, device=images.device)
    mask.scatter_(1, keys.argsort(dim=1)[:, :count], True)
    return _replace(images, mask.view(n, h, w), generator)


def nonuniform_noise_probability(pixel_std: Tensor, fraction: float = 0.15) -> Tensor:
    """Per-location replacement probability [H, W]: min(1, c / std) with mean exactly ``fraction`` (see module doc)."""
    if pixel_std.dim() != 2:
        raise ValueError(f"pixel_std must be [H, W], got {tuple(pixel_std.shape)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    std = pixel_std.double().flatten()
    budget = fraction * std.numel()  # expected number of replaced locations per image
    constant = std <= 0
    n_const = int(constant.sum())
    if n_const >= budget:
        return (constant.double() * (budget / max(n_const, 1))).view_as(pixel_std).float()

    inv = torch.where(constant, torch.zeros_like(std), 1.0 / std.clamp_min(torch.finfo(torch.float64).tiny))
    clipped, c = constant.clone(), 0.0
    # water-filling: clip the largest c/std to 1, re-solve c on the rest, until no new pixel exceeds 1 (<= H*W rounds)
    while not clipped.all():
        c = (budget - int(clipped.sum())) / inv[~clipped].sum()
        over = (c * inv > 1.0) & ~clipped
        if not over.any():
            break
        clipped |= over
    prob = torch.where(clipped, torch.ones_like(std), c * inv)
    return prob.view_as(pixel_std).float()


def nonuniform_noise(images: Tensor, pixel_std: Tensor, fraction: float = 0.15,
                     generator: torch.Generator | None = None) -> Tensor:
    """BAL+NUN: each location replaced independently with probability ~ 1 / pixel_std, ``fraction`` expected."""
    _check_images(images)
    n, _, h, w = images.shape
    prob = nonuniform_noise_probability(pixel_std, fraction).to(images.device)
    if prob.shape != (h, w):
        raise ValueError(f"pixel_std is {tuple(prob.shape)} but images are {h}x{w}")
    mask = torch.rand((n, h, w), generator=generator, device=images.device) < prob
    return _replace(images, mask, generator)


def pixel_std(images: Tensor | Iterable[Tensor]) -> Tensor:
    """[H, W] sample std over training images per location, averaged over channels.

    ``images`` is a float [N, C, H, W] tensor or an iterable of such batches (e.g. from a DataLoader, so large sets
    need not sit in memory); batches are merged in float64 with Chan et al.'s pairwise update.
    """
    batches = [images] if isinstance(images, Tensor) else images
    count, mean, m2 = 0, None, None
    for batch in batches:
        _check_images(batch)
        b = batch.double()
        nb = b.shape[0]
        b_mean = b.mean(0)
        b_m2 = ((b - b_mean) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = nb, b_mean, b_m2
            continue
        delta = b_mean - mean
        total = count + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + b_m2 + delta ** 2 * (count * nb / total)
        count = total
    if count < 2:
        raise ValueError("pixel_std needs at least two images")
    return (m2 / (count - 1)).sqrt().mean(0).float()
