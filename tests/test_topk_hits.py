"""Top-k hit counts against a naive per-sample recount."""
import pytest
import torch

from timm_fcl.run.metrics import topk_hits


def naive_hits(logits, target, ks):
    counts = []
    for k in ks:
        hits = 0
        for row, label in zip(logits.tolist(), target.tolist()):
            ranked = sorted(range(len(row)), key=lambda c: -row[c])
            hits += label in ranked[:k]
        counts.append(hits)
    return counts


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("classes", [3, 10])
def test_topk_hits_match_a_naive_loop(dtype, classes):
    g = torch.Generator().manual_seed(classes)
    # distinct logits: a random permutation per row, so ties cannot make the two counts differ
    logits = torch.stack([torch.randperm(classes, generator=g) for _ in range(200)]).to(dtype)
    target = torch.randint(0, classes, (200,), generator=g)
    ks = (1, 2, 5)
    got = topk_hits(logits, target, ks)
    assert got.dtype == torch.int64 and got.tolist() == naive_hits(logits, target, ks)


def test_topk_above_the_class_count_counts_every_sample():
    logits, target = torch.randn(7, 3), torch.randint(0, 3, (7,))
    assert topk_hits(logits, target, (5,)).tolist() == [7]


def test_topk_hits_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="target"):
        topk_hits(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
