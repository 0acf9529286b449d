"""Patch Gaussian augmentation (Lopes et al., 2019, "Improving robustness without sacrificing accuracy with Patch
Gaussian augmentation"), the data-augmentation baseline of section 4.2, composable with every method.

A W x W patch whose centre is uniform over the image (the patch is clipped at the image borders) receives
N(0, sigma^2) noise with sigma ~ U(0, max_sigma) drawn per image; the result is clipped to [0, 1].
Apply it to [0, 1] tensors before normalization.
"""
from typing import Optional

import torch
import torch.nn as nn


class PatchGaussian(nn.Module):
    def __init__(self, patch_size: int = 25, max_sigma: float = 0.1, p: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if patch_size < 1 or max_sigma < 0 or not 0.0 <= p <= 1.0:
            raise ValueError(f"need patch_size >= 1, max_sigma >= 0, 0 <= p <= 1; got {patch_size}, {max_sigma}, {p}")
        self.patch_size = patch_size
        self.max_sigma = max_sigma
        self.p = p
        self.generator = generator

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img: float [C, H, W] in [0, 1] -> same shape and dtype."""
        if not img.is_floating_point() or img.dim() != 3:
            raise TypeError(f"PatchGaussian expects a float [C, H, W] tensor in [0, 1], got {img.dtype} "
                            f"{tuple(img.shape)}; place it after ToTensor and before Normalize")
        if self.p < 1.0 and self._rand(1).item() >= self.p:
            return img
        _, h, w = img.shape
        cy, cx = int(self._rand(1).item() * h), int(self._rand(1).item() * w)
        half = self.patch_size // 2
        top, bottom = max(cy - half, 0), min(cy - half + self.patch_size, h)
        left, right = max(cx - half, 0), min(cx - half + self.patch_size, w)
        sigma = self._rand(1).item() * self.max_sigma
        noise = torch.randn((img.shape[0], bottom - top, right - left), generator=self.generator) * sigma
        out = img.clone()
        out[:, top:bottom, left:right] += noise.to(img)
        return out.clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, max_sigma={self.max_sigma}, p={self.p}"
