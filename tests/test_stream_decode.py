"""An undecodable training sample keeps its batch's size: it is filled in by the nearest decodable sample of the batch
(a batch with none is an error). An undecodable validation sample is left out, never judged twice. Both are counted
apart from the repeats that refill a quota."""
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
    assert stream.skipped() == (0, 0, 2)  # replaced, counted as undecodable, not as repeats
    assert len(set(got)) == n - 2  # two decodable images of those batches stand in for the bad ones


def test_undecodable_validation_samples_are_left_out_and_counted():
    """Validation judges each decodable image once and no other: a batch with bad images is shorter, and a batch of
    which nothing decodes is dropped (the pass as a whole is judged by its sample count)."""
    n, bad = 14, [0, 4, 5, 6, 7, 13]  # batches of 4 in order: 0-3 lose one, 4-7 lose all, 12-13 lose one
    stream = EpochStream(MapSource(FlakyImages(n, bad)), transform=lambda im: torch.tensor(np.asarray(im))[0, 0, 0],
                         is_training=False, seed=0, batch_size=4, num_workers=1)
    batches = [[int(v) for v in xs] for xs, _ in stream]
    assert batches == [[1, 2, 3], [8, 9, 10, 11], [12]]
    assert stream.skipped() == (0, 0, len(bad))


def test_a_batch_without_a_decodable_sample_is_an_error():
    from timm_fcl.data import DataError

    stream = EpochStream(MapSource(FlakyImages(8, range(8))), transform=lambda im: torch.tensor(np.asarray(im)),
                         is_training=True, seed=0, batch_size=4, num_workers=1)
    with pytest.raises(DataError, match="none of the 4 samples of a batch decodes"):
        next(iter(stream))
