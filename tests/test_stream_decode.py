"""An undecodable sample keeps the worker's quota: a failure before any good sample is filled in by the first good one."""
import numpy as np
import pytest
import torch
from PIL import Image

from timm_fcl.data import EpochStream, MapSource


class FlakyImages:
    """A map-style data set whose listed indices raise on decode."""

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise OSError(f"image {i} is truncated")
        return Image.fromarray(np.full((4, 4, 3), i, dtype=np.uint8)), i


@pytest.mark.parametrize("bad_rank", ["first", "middle"])
def test_undecodable_samples_keep_the_quota(bad_rank):
    n = 12
    probe = EpochStream(MapSource(FlakyImages(n, [])), transform=lambda im: torch.tensor(np.asarray(im))[0, 0, 0],
                        is_training=True, seed=0, batch_size=4, num_workers=1)
    order = [int(v) for v, _ in probe]
    bad = order[:2] if bad_rank == "first" else order[5:7]     # the two first samples of the stream, or two later
    stream = EpochStream(MapSource(FlakyImages(n, bad)), transform=lambda im: torch.tensor(np.asarray(im))[0, 0, 0],
                         is_training=True, seed=0, batch_size=4, num_workers=1)
    got = [int(v) for v, _ in stream]
    assert len(got) == len(order) == n
    assert not set(bad) & set(got)
    assert stream.repeated.value == 2
