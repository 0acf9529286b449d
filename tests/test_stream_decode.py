"""An undecodable sample keeps its batch's size: it is filled in by the nearest decodable sample of the batch; a batch
with none is an error."""
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
    order = [int(v) for xs, _ in probe for v in xs]
    bad = order[:2] if bad_rank == "first" else order[5:7]     # the two first samples of the stream, or two later
    stream = EpochStream(MapSource(FlakyImages(n, bad)), transform=lambda im: torch.tensor(np.asarray(im))[0, 0, 0],
                         is_training=True, seed=0, batch_size=4, num_workers=1)
    got = [int(v) for xs, _ in stream for v in xs]
    assert len(got) == len(order) == n
    assert not set(bad) & set(got)
    assert stream.repeated.value == 2


def test_a_batch_without_a_decodable_sample_is_an_error():
    from timm_fcl.data import DataError

    stream = EpochStream(MapSource(FlakyImages(8, range(8))), transform=lambda im: torch.tensor(np.asarray(im)),
                         is_training=True, seed=0, batch_size=4, num_workers=1)
    with pytest.raises(DataError, match="none of the 4 samples of a batch decodes"):
        next(iter(stream))
