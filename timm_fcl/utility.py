"""Contextual feature utility, Definition 1 of the paper: u_i = |d l(y_i, f(x_i)) / d x_i|."""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batchnorm import frozen_bn_stats


def utility_from_loss(loss: torch.Tensor, x: torch.Tensor, scale: float = 1.0,
                      retain_graph: bool = True) -> torch.Tensor:
    """|d loss_i / d x_i| from a batch-mean ``loss`` whose graph reaches ``x`` (a tensor that requires grad).

    Only the input gradient is computed (no parameter gradients are accumulated, no graph is created); the graph is
    kept for the caller's backward unless ``retain_graph`` is False. The mean is multiplied by the batch size so each
    sample gets the gradient of its own loss. ``scale`` multiplies the loss before the gradient and divides the result
    (for float16 autocast).
    """
    (grad,) = torch.autograd.grad(loss * (x.shape[0] * scale), x, retain_graph=retain_graph)
    # a non-finite gradient (float16 overflow) must not decide TOP_k / BOTTOM_k: NaN counts as no utility
    utility = torch.nan_to_num(grad.detach().abs(), nan=0.0)
    return utility if scale == 1.0 else utility / scale


def contextual_utility(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """The contextual utility of every input element of every sample, shaped like ``x``.

    The model keeps its mode (call ``model.eval()`` for per-sample utilities independent of the batch: in train mode
    BatchNorm couples the samples of a batch); running statistics and parameter gradients are left untouched.
    """
    loss_fn = loss_fn or F.cross_entropy
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), frozen_bn_stats(model):
        loss = loss_fn(model(x), y)
    return utility_from_loss(loss, x)
