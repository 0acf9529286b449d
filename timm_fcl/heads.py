"""The embedding phi and the discriminator h of the paper (section 2.1) on a timm model.

phi(x) = forward_head(forward_features(x), pre_logits=True), of width ``model.head_hidden_size``.
Where h is a single linear map (nn.Linear, or resnetv2's 1x1 Conv2d) applied directly to phi(x) and no dropout is active,
the logits come from the same head call as z: logits = h(z), exactly what forward_head computes. Otherwise (two
classifiers as in distilled DeiT, dropout between the embedding and the classifier, norm layers in h) the logits come
from the model's own forward_head and z from a second call of the pre-logits part.
"""
import torch
import torch.nn as nn


def embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """phi(x): the pre-logits embedding [B, E] of a timm model."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def head_mode(model: nn.Module) -> str:
    """How logits follow from the embedding: "linear" (h = Linear on z), "conv" (h = 1x1 Conv2d on z viewed as
    [B, E, 1, 1]) or "separate" (call forward_head for the logits and for z)."""
    clf = model.get_classifier()
    dropout = getattr(model, "drop_rate", 0) or any(
        isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
    if dropout:
        return "separate"
    if isinstance(clf, nn.Linear):
        return "linear"
    if isinstance(clf, nn.Conv2d) and clf.kernel_size == (1, 1) and clf.groups == 1:
        return "conv"
    return "separate"


def logits_from_embedding(model: nn.Module, z: torch.Tensor, mode: str) -> torch.Tensor:
    """h(z) for the "linear" and "conv" modes of :func:`head_mode`."""
    clf = model.get_classifier()
    if mode == "linear":
        return clf(z)
    if mode == "conv":
        return clf(z[:, :, None, None]).flatten(1)
    raise ValueError(f"the classifier of {type(model).__name__} cannot be applied to the embedding alone")
