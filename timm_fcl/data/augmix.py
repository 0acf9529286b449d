"""timm's AugMix split for streamed images: the clean view and the augmented ones of one image."""
from __future__ import annotations

from typing import Callable, Optional, Sequence


class _OneImage:
    """A stand-in data set whose item is the image it is indexed with, so that timm's AugMixDataset, which splits
    items of a map-style data set, can split the images of a stream one at a time."""
    transform: Optional[Callable] = None

    def __getitem__(self, image):
        return self.transform(image), None


class AugMixViews:
    """Transform an image into ``num_splits`` views as timm's AugMixDataset does: the clean view (the primary
    transform: crop and flip) and ``num_splits`` - 1 augmented ones (the secondary transform, e.g. AugMix), each
    normalized. ``transforms`` is the (primary, secondary, final) tuple of ``create_transform(..., separate=True)``."""

    def __init__(self, transforms: Sequence[Callable], num_splits: int):
        from timm.data import AugMixDataset

        self.views = AugMixDataset(_OneImage(), num_splits=num_splits)
        self.views.transform = tuple(transforms)

    def __call__(self, image) -> tuple:
        return self.views[image][0]
