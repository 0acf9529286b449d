"""Keeping BatchNorm running statistics out of the extra passes.

DESIGN: the perturbed passes (and any analysis pass) normalize with their own batch statistics in train mode, exactly
like the clean pass, but must not move the running statistics: after a step they equal those of the clean pass alone.
"""
from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm (torch's, timm's BatchNormAct2d, SyncBatchNorm) uses batch statistics in
    train mode without updating running_mean / running_var / num_batches_tracked. The model's own gradient
    checkpointing (timm's set_grad_checkpointing, --grad-checkpointing) is off within the block: its recomputation in
    the backward would run outside the block, the statistics tracked again (torch's CheckpointError)."""
    switched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    checkpointed = [m for m in model.modules() if getattr(m, "grad_checkpointing", False) is True] if switched else []
    for m in switched:
        m.track_running_stats = False  # train mode then passes no running buffers to F.batch_norm
    for m in checkpointed:
        m.grad_checkpointing = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True
        for m in checkpointed:
            m.grad_checkpointing = True
