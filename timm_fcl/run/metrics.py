"""Top-k accuracy counts: the one way training, evaluation and the benchmarks count correct predictions."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def topk_hits(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """How many samples have their target among the ``k`` largest logits, for each ``k`` in ``ks``.

    Args:
        logits: [N, C] scores.
        target: [N] class indices.
        ks: the k values; a k above C counts as C (top-5 of a 3-class problem is every sample).

    Returns:
        int64 [len(ks)] counts on ``logits``' device; sums over batches (and ranks) give exact totals.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, C] and target [N], got {tuple(logits.shape)} and {tuple(target.shape)}")
    ks = [min(k, logits.shape[1]) for k in ks]
    # [N, max k]; a target appears at most once in a row, so hits within the first k count each sample once
    hits = logits.topk(max(ks), dim=1).indices == target[:, None]
    return torch.stack([hits[:, :k].sum() for k in ks]).long()
