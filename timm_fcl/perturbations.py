"""Utility-aware perturbations, Definition 3 of the paper, and the all-pixel Gaussian perturbation of the baselines.

x_low = x + eps(BOTTOM_k(u)) and x_high = x + eps(TOP_k(u)), eps ~ N(0, sigma^2) on the k chosen elements of each
sample and 0 elsewhere. D is every input element (C*H*W); sigma is in [0, 1] pixel units and divided by the channel's
normalization std when inputs are normalized.
"""
from typing import Optional, Sequence, Tuple

import torch


def _noise_scale(x: torch.Tensor, sigma: float, input_std: Optional[Sequence[float]]) -> torch.Tensor:
    """sigma / std per channel, [C] (or [1] for raw pixels)."""
    if input_std is None:
        return torch.full((1,), float(sigma), device=x.device, dtype=x.dtype)
    std = torch.as_tensor(input_std, device=x.device, dtype=x.dtype).reshape(-1)
    if std.numel() not in (1, x.shape[1]):
        raise ValueError(f"input_std has {std.numel()} values for inputs with {x.shape[1]} channels")
    return sigma / std


def generator_device(generator: Optional[torch.Generator], default: torch.device) -> torch.device:
    """Where random numbers are drawn: on the generator's device when one is given (a CPU generator keeps noise
    reproducible across devices), else on ``default``."""
    return generator.device if generator is not None else default


def _randn(shape, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    on = generator_device(generator, x.device)
    return torch.randn(shape, generator=generator, device=on, dtype=x.dtype).to(x.device)


def random_scores(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample scores shaped like ``x`` that are a uniformly random ranking of each sample's elements (a random
    permutation of 0 .. C*H*W - 1): in place of the utility they make BOTTOM_k / TOP_k two disjoint uniformly random
    sets of k elements (no ties, unlike raw uniform draws). Drawn on the generator's device, float32."""
    b = x.shape[0]
    on = generator_device(generator, x.device)
    ranks = torch.rand((b, x[0].numel()), generator=generator, device=on).argsort(dim=1).argsort(dim=1)
    return ranks.to(device=x.device, dtype=torch.float32).view(x.shape)


def utility_perturbations(
        x: torch.Tensor,
        utility: torch.Tensor,
        k: int,
        sigma: float,
        generator: Optional[torch.Generator] = None,
        input_std: Optional[Sequence[float]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_low, x_high): Gaussian noise on the k lowest-utility / k highest-utility elements of each sample.

    Args:
        x: inputs [B, C, ...] (any trailing shape; channels on dim 1).
        utility: contextual utility shaped like ``x``.
        k: elements per sample, 1 <= k <= C*H*W.
        sigma: noise std in pixel units.
        generator: for reproducible noise.
        input_std: per-channel normalization std of ``x`` (None for raw pixels).
    """
    both = perturbed_batch(x, utility, k, sigma, generator, input_std)
    return both[:x.shape[0]], both[x.shape[0]:]


def perturbed_batch(
        x: torch.Tensor,
        utility: torch.Tensor,
        k: int,
        sigma: float,
        generator: Optional[torch.Generator] = None,
        input_std: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """[x_low; x_high] as one [2B, ...] tensor, built in a single buffer so the perturbed pass needs no concatenation;
    same arguments and noise as :func:`utility_perturbations`, in ``x``'s memory format."""
    if utility.shape != x.shape:
        raise ValueError(f"utility shape {tuple(utility.shape)} differs from input shape {tuple(x.shape)}")
    b = x.shape[0]
    flat_u = utility.detach().reshape(b, -1)
    d = flat_u.shape[1]
    if not 1 <= k <= d:
        raise ValueError(f"k={k} must lie in [1, {d}] (elements per sample)")
    high = flat_u.topk(k, dim=1).indices                                  # [B, k] TOP_k(u)
    low = flat_u.topk(k, dim=1, largest=False).indices                    # [B, k] BOTTOM_k(u)
    scale = _noise_scale(x, sigma, input_std)
    per_channel = d // scale.numel()                                      # elements per channel (flat NC... layout)
    noise = _randn((2, b, k), x, generator)
    flat = x.detach().reshape(b, -1).repeat(2, 1)                          # rows [0, B): x_low, [B, 2B): x_high
    flat[:b].scatter_add_(1, low, noise[0] * scale[low // per_channel])
    flat[b:].scatter_add_(1, high, noise[1] * scale[high // per_channel])
    both = flat.view(2 * b, *x.shape[1:])
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        both = both.contiguous(memory_format=torch.channels_last)
    return both


def gaussian_perturbation(
        x: torch.Tensor,
        sigma: float,
        generator: Optional[torch.Generator] = None,
        input_std: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """x + N(0, sigma^2) on every element (pixel units), for the XE+Gaussian and CL+Gaussian baselines."""
    scale = _noise_scale(x, sigma, input_std)
    scale = scale.reshape((1, -1) + (1,) * (x.dim() - 2)) if scale.numel() > 1 else scale
    return x.detach() + _randn(x.shape, x, generator) * scale
