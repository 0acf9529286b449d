"""Contextual feature sensitivity, Definition 2 of the paper: s_ij = || d phi(x_i) / d x_ij ||_2.

Exact: one backward pass per embedding dimension e (E passes), s_ij^2 = sum_e (d z_ie / d x_ij)^2.

Estimate (``num_projections=M``): for Rademacher vectors v (entries +-1, E[v v^T] = I),
g = v^T J is one backward pass and E[g_j^2] = sum_e J_ej^2 = s_j^2, so the mean of g_j^2 over M projections is an
unbiased estimate of s_j^2. One projection has variance 2 (s_j^4 - sum_e J_ej^4) <= 2 s_j^4, so the relative standard
deviation of the M-projection estimate of s_j^2 is at most sqrt(2 / M) (about 14% for M = 100). The square root of that
estimate (what is returned unless ``squared=True``) is slightly biased low by Jensen's inequality.
"""
from typing import Optional

import torch
import torch.nn as nn

from .batchnorm import frozen_bn_stats
from .heads import embedding
from .perturbations import generator_device


def contextual_sensitivity(
        model: nn.Module,
        x: torch.Tensor,
        num_projections: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        squared: bool = False,
) -> torch.Tensor:
    """Sensitivity of the embedding to every input element, shaped like ``x``.

    Args:
        model: a timm model (forward_features / forward_head split).
        x: inputs [B, ...].
        num_projections: None for the exact Jacobian norms (E backward passes), or M random projections
            (M backward passes; see the module docstring for the estimator and its variance).
        generator: for reproducible projections.
        squared: return s^2 (the quantity the projection estimate is unbiased for).

    The model keeps its mode (use eval mode for per-sample values: train-mode BatchNorm couples a batch); running
    statistics and parameter gradients are left untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), frozen_bn_stats(model):
        z = embedding(model, x)                                              # [B, E]
    b, e = z.shape
    total = torch.zeros_like(x)
    passes = e if num_projections is None else int(num_projections)
    if passes < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    for i in range(passes):
        if num_projections is None:
            v = torch.zeros_like(z)
            v[:, i] = 1.0
        else:
            on = generator_device(generator, z.device)
            v = torch.randint(0, 2, (b, e), generator=generator, device=on).to(z) * 2 - 1
        (g,) = torch.autograd.grad(z, x, grad_outputs=v, retain_graph=i + 1 < passes)
        total += g.detach() ** 2
    if num_projections is not None:
        total /= passes
    return total if squared else total.sqrt()
