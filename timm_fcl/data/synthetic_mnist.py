"""Synthetic MNIST with context-dependent corner digits (FCL paper, section 4.1, Figures 1-2).

A scaled-down MNIST digit is pasted into a random corner of some images. Digits 5-9 keep their label whether or not
they carry a corner digit; digits 0-4 that carry one become the new classes 10-14. Corner digits therefore matter only
in context: on a 0-4 they flip the class, on a 5-9 they are noise. The train split is unbalanced (classes 0-9 about
5000 each, classes 10-14 about 50 each), validation and test are balanced over the 15 classes.

Choices the paper leaves open, made here (all deterministic from ``seed``):

- Sources. Validation and train come from MNIST's 60k train images: ``val_per_digit`` (1000) images of each digit go to
  validation, the rest (4421-5742 per digit, 50,000 in all) to train. Test comes from the 10k t10k images. Corner
  digits are drawn (uniformly, with replacement) from the same split's source images, so no MNIST image is shared
  between splits, not even as a corner digit.
- Train: every source image is used once. Of each digit c in 0-4, ``rare_per_class`` (50) images get a corner digit and
  become class c+10; the rest stay class c with no corner digit. Every 5-9 image gets a corner digit: with 250 rare
  images against ~25,000 5-9 images, a corner digit is uninformative 100 times out of 101, as the paper says.
- Validation/test are balanced: n images per class, where n = ``eval_per_class`` (1000) capped by the rarest digit in
  the split's pool. Classes c and c+10 (c in 0-4) use the SAME n source images of digit c, once plain and once with a
  corner digit, because ~15k balanced images cannot come from ~10k distinct sources. The two then differ only in the
  corner, a controlled test of context sensitivity. Validation has n=1000 (15,000 images); the t10k pool has only 892
  fives, so test has n=892 (13,380 images) rather than reusing a five with a second corner digit.
  As in train, every 5-9 image carries a corner digit.
- Corner digit: the whole 28x28 source image area-downsampled to ``corner_size`` x ``corner_size`` (10x10 by default:
  the stroke covers ~7x7 pixels, MNIST's own 4-pixel padding shrinking with it), pasted flush into one of the 4 corners
  chosen uniformly, merged with the central digit by a pixel-wise max so neither erases the other. MNIST's 28x28
  corners are empty in almost every image (paper, section 4.1), so the corner digit rarely touches the central one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

NUM_CLASSES = 15
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class SyntheticMNISTSplit:
    """One split, all tensors in memory, aligned on the first dimension."""

    images: Tensor         # uint8 [N, 1, 28, 28]
    labels: Tensor         # int64 [N], 0-14
    digits: Tensor         # int64 [N], the central MNIST digit 0-9
    corners: Tensor        # int64 [N], index into CORNERS, -1 when there is no corner digit
    sources: Tensor        # int64 [N], index of the central image in its MNIST file (train or t10k)
    corner_sources: Tensor  # int64 [N], index of the corner digit's image in the same file, -1 when none
    mnist_train: bool      # True when the sources index MNIST's 60k train file, False for t10k
    corner_size: int

    def __len__(self) -> int:
        return self.labels.numel()

    def float_images(self) -> Tensor:
        """Float [N, 1, 28, 28] in [0, 1], the scale the paper's sigma=0.5 is given in."""
        return self.images.float().div_(255.0)


class SyntheticMNISTDataset(Dataset):
    """Map-style view of a split: (float [1, 28, 28] image in [0, 1], int label)."""

    def __init__(self, split: SyntheticMNISTSplit, *, transform=None):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image = self.split.images[index].float().div(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.split.labels[index])


def load_mnist(root: str | Path, *, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """uint8 [N, 28, 28] images and int64 labels of one MNIST file, via torchvision's reader (its folder layout)."""
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=train, download=download)
    return ds.data, ds.targets.long()


def corner_slices(corner: int, corner_size: int, image_size: int = 28) -> tuple[slice, slice]:
    """(rows, cols) of the corner_size x corner_size square at corner index ``corner`` (see CORNERS)."""
    top = slice(0, corner_size)
    bottom = slice(image_size - corner_size, image_size)
    return (top if corner < 2 else bottom), (top if corner % 2 == 0 else bottom)


def paste_corner_digits(centers: Tensor, tiles_from: Tensor, corners: Tensor, *, corner_size: int) -> Tensor:
    """uint8 [M, 28, 28] centers with each tiles_from[i] shrunk to corner_size^2 and max-merged at corners[i]."""
    tiles = F.interpolate(tiles_from[:, None].float(), size=(corner_size, corner_size), mode="area")[:, 0]
    canvas = torch.zeros(centers.shape, dtype=torch.float32)
    for corner in range(len(CORNERS)):
        rows, cols = corner_slices(corner, corner_size, centers.shape[-1])
        sel = corners == corner
        canvas[sel, rows, cols] = tiles[sel]
    return torch.maximum(centers, canvas.round_().to(torch.uint8))


def _by_digit(indices: Tensor, targets: Tensor) -> list[Tensor]:
    """indices split per digit, keeping their (already random) order."""
    return [indices[targets[indices] == d] for d in range(10)]


def _assemble(plan: list[tuple[Tensor, int, bool]], images: Tensor, targets: Tensor, corner_pool: Tensor,
              *, corner_size: int, mnist_train: bool, generator: torch.Generator) -> SyntheticMNISTSplit:
    """Render a split from (source indices, label, with_corner) groups, then shuffle it."""
    sources = torch.cat([src for src, _, _ in plan])
    labels = torch.cat([torch.full((len(src),), label, dtype=torch.long) for src, label, _ in plan])
    has_corner = torch.cat([torch.full((len(src),), flag, dtype=torch.bool) for src, _, flag in plan])
    m = int(has_corner.sum())
    corners = torch.full((len(sources),), -1, dtype=torch.long)
    corner_sources = torch.full((len(sources),), -1, dtype=torch.long)
    corners[has_corner] = torch.randint(len(CORNERS), (m,), generator=generator)
    corner_sources[has_corner] = corner_pool[torch.randint(len(corner_pool), (m,), generator=generator)]

    out = images[sources].clone()
    out[has_corner] = paste_corner_digits(out[has_corner], images[corner_sources[has_corner]],
                                          corners[has_corner], corner_size=corner_size)
    order = torch.randperm(len(sources), generator=generator)
    return SyntheticMNISTSplit(images=out[order, None], labels=labels[order], digits=targets[sources][order],
                               corners=corners[order], sources=sources[order],
                               corner_sources=corner_sources[order], mnist_train=mnist_train,
                               corner_size=corner_size)


def _balanced_plan(per_digit: list[Tensor], n: int) -> list[tuple[Tensor, int, bool]]:
    plan = []
    for d, src in enumerate(per_digit):
        if d < 5:
            plan += [(src[:n], d, False), (src[:n], d + 10, True)]  # same sources, plain and with a corner
        else:
            plan.append((src[:n], d, True))
    return plan


def build_synthetic_mnist(root: str | Path, *, seed: int = 0, corner_size: int = 10, rare_per_class: int = 50,
                          val_per_digit: int = 1000, eval_per_class: int = 1000,
                          download: bool = False) -> dict[str, SyntheticMNISTSplit]:
    """The three splits {"train", "val", "test"} of section 4.1, deterministic from ``seed`` (see module docstring)."""
    if not 0 < corner_size <= 14:
        raise ValueError(f"corner_size must be in 1..14 (a quarter of the image at most), got {corner_size}")
    g = torch.Generator().manual_seed(seed)
    train_images, train_targets = load_mnist(root, train=True, download=download)
    test_images, test_targets = load_mnist(root, train=False, download=download)

    per_digit = _by_digit(torch.randperm(len(train_targets), generator=g), train_targets)
    if min(len(p) for p in per_digit) <= val_per_digit + rare_per_class:
        raise ValueError("val_per_digit + rare_per_class leaves no plain train image for some digit")
    val_digits = [p[:val_per_digit] for p in per_digit]
    train_digits = [p[val_per_digit:] for p in per_digit]
    test_digits = _by_digit(torch.randperm(len(test_targets), generator=g), test_targets)

    train_plan = []
    for d, src in enumerate(train_digits):
        if d < 5:
            train_plan += [(src[rare_per_class:], d, False), (src[:rare_per_class], d + 10, True)]
        else:
            train_plan.append((src, d, True))
    n_val = min(eval_per_class, val_per_digit)
    n_test = min([eval_per_class] + [len(p) for p in test_digits])

    kw = dict(corner_size=corner_size, generator=g)
    return {
        "train": _assemble(train_plan, train_images, train_targets, torch.cat(train_digits), mnist_train=True, **kw),
        "val": _assemble(_balanced_plan(val_digits, n_val), train_images, train_targets, torch.cat(val_digits),
                         mnist_train=True, **kw),
        "test": _assemble(_balanced_plan(test_digits, n_test), test_images, test_targets,
                          torch.cat([p[:n_test] for p in test_digits]), mnist_train=False, **kw),
    }
