"""Feature Contrastive Loss, Definition 4 of the paper: Eq. 4 (margin) and Eq. 5 (cross-entropy, SimCLR-like).

For sample i the positive pair is (z_i, z_i^+) and the negatives are (z_i, z_i^-) and (z_i, z_j) for j != i,
with dist(a, b) = 1 - cos(a, b). The loss can be taken for a subset of the batch's samples (the cheaper
``FCLConfig.fraction`` mode), each still against every other clean embedding of the batch.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = ("xe", "margin")


def fcl_loss(
        z: torch.Tensor,
        z_pos: torch.Tensor,
        z_neg: Optional[torch.Tensor] = None,
        tau: float = 0.1,
        variant: str = "xe",
        margin: float = 1.0,
        neg_mask: Optional[torch.Tensor] = None,
        anchor_index: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean over the anchors (the batch, or ``anchor_index``) of l_xe^i (Eq. 5) or l_margin^i (Eq. 4).

    Args:
        z: clean embeddings [B, E].
        z_pos: low-utility-perturbed embeddings z^+ [M, E] (positives) of the M anchors (M = B without anchor_index).
        z_neg: high-utility-perturbed embeddings z^- [M, E], or None for no perturbed negative (CL+Gaussian).
        tau: temperature of Eq. 5.
        variant: "xe" or "margin".
        margin: gamma of Eq. 4.
        neg_mask: bool [M]; False drops anchor i's negative z_i^- (the 1e-12 utility guard).
        anchor_index: long [M] of distinct rows of ``z``: the loss of those samples only, each against all B - 1 other
            clean embeddings (the negative set it has in the full loss). None: every sample is an anchor.
        labels: long [B], the labels of the rows of ``z``: given, the other samples sharing anchor i's label are left
            out of its negatives (``FCLConfig.negatives = "other_class"``); z_i^- stays a negative. None: all are.
        weights: [M] non-negative factor on each anchor's term (``FCLConfig.class_weights``); the loss is then
            sum_i w_i l^i / M, so all-ones weights give the plain mean.
    """
    rows = z.shape[0] if anchor_index is None else anchor_index.shape[0]
    if z.dim() != 2 or z_pos.shape != (rows, z.shape[1]) or (z_neg is not None and z_neg.shape != z_pos.shape):
        raise ValueError(f"expected [B, E] clean and [M, E] perturbed embeddings (M = {rows} anchors), got "
                         f"{tuple(z.shape)}, {tuple(z_pos.shape)}"
                         f"{'' if z_neg is None else ', ' + str(tuple(z_neg.shape))}")
    dtype = torch.promote_types(z.dtype, torch.float32)  # low-precision embeddings are compared in float32
    z_all = F.normalize(z.to(dtype), dim=-1)
    zn = z_all if anchor_index is None else z_all[anchor_index]                 # [M, E] the anchors
    eye = _not_negatives(z.shape[0], z.device, anchor_index, labels)             # [M, B]
    sim_pos = (zn * F.normalize(z_pos.to(dtype), dim=-1)).sum(-1)                # [M] cos(z_i, z_i^+)
    sim_others = zn @ z_all.t()                                                  # [M, B] cos(z_i, z_j)
    if z_neg is not None:
        sim_neg = (zn * F.normalize(z_neg.to(dtype), dim=-1)).sum(-1)              # [M] cos(z_i, z_i^-)
        keep_neg = torch.ones_like(sim_neg, dtype=torch.bool) if neg_mask is None else neg_mask.to(z.device)
    if weights is not None and weights.shape != (rows,):
        raise ValueError(f"expected one weight per anchor ({rows}), got shape {tuple(weights.shape)}")

    if variant == "xe":
        # 1 - dist = cos; the denominator holds the positive and every negative.
        others = (sim_others / tau).masked_fill(eye, float("-inf"))
        cols = [(sim_pos / tau)[:, None], others]
        if z_neg is not None:
            cols.append((sim_neg / tau).masked_fill(~keep_neg, float("-inf"))[:, None])
        logits = torch.cat(cols, dim=1)                                          # [M, 1 + B (+ 1)]
        return _anchor_mean(torch.logsumexp(logits, dim=1) - logits[:, 0], weights)
    if variant == "margin":
        hinge = F.relu(margin - (1.0 - sim_others)).pow(2).masked_fill(eye, 0.0).sum(1)
        if z_neg is not None:
            hinge = hinge + F.relu(margin - (1.0 - sim_neg)).pow(2) * keep_neg
        return _anchor_mean((1.0 - sim_pos).pow(2) + hinge, weights)
    raise ValueError(f"unknown FCL loss variant {variant!r}; choose 'xe' or 'margin'")


class FeatureContrastiveLoss(nn.Module):
    """:func:`fcl_loss` as a module, in the shape of timm's losses: the settings at construction, the embeddings at
    the call. ``FeatureContrastiveLoss(tau=0.5)(z, z_pos, z_neg)`` is the mean over the batch of Eq. 5 with the other
    samples and each sample's own z^- as negatives; the keyword arguments of the call are :func:`fcl_loss`'s."""

    def __init__(self, tau: float = 0.1, variant: str = "xe", margin: float = 1.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown FCL loss variant {variant!r}; choose 'xe' or 'margin'")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau, self.variant, self.margin = float(tau), variant, float(margin)

    def forward(self, z: torch.Tensor, z_pos: torch.Tensor, z_neg: Optional[torch.Tensor] = None,
                **options) -> torch.Tensor:
        return fcl_loss(z, z_pos, z_neg, tau=self.tau, variant=self.variant, margin=self.margin, **options)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, variant={self.variant!r}" + (f", margin={self.margin}" if self.variant == "margin" else "")


def _not_negatives(n: int, device: torch.device, anchor_index: Optional[torch.Tensor],
                   labels: Optional[torch.Tensor]) -> torch.Tensor:
    """[M, n] True where clean row j is no negative of anchor i: the anchor itself (column ``anchor_index[i]``) and,
    with ``labels``, the rows sharing its label."""
    if anchor_index is None:
        excluded = torch.eye(n, dtype=torch.bool, device=device)
    else:
        excluded = anchor_index[:, None] == torch.arange(n, device=device)
    if labels is not None:
        if labels.shape != (n,):
            raise ValueError(f"expected labels of the {n} clean rows, got shape {tuple(labels.shape)}")
        labels = labels.to(device)
        anchor_labels = labels if anchor_index is None else labels[anchor_index]
        excluded = excluded | (anchor_labels[:, None] == labels[None, :])
    return excluded


def _anchor_mean(per_anchor: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    if weights is None:
        return per_anchor.mean()
    return (per_anchor * weights.to(per_anchor)).sum() / per_anchor.shape[0]


def anchor_options(config, y: torch.Tensor, anchor_index: Optional[torch.Tensor] = None) -> dict:
    """The ``labels`` and ``weights`` arguments of :func:`fcl_loss` that ``config`` (an FCLConfig) asks for, given the
    batch's labels ``y`` [B] and the anchors (None: all): same-class samples dropped from the negatives when
    ``config.negatives == "other_class"``, and each anchor's term times ``config.class_weights[label]``."""
    options = {}
    if config.negatives == "other_class":
        options["labels"] = y
    if config.class_weights is not None:
        table = torch.as_tensor(config.class_weights, dtype=torch.float32, device=y.device)
        anchors = y if anchor_index is None else y[anchor_index]
        if int(anchors.max()) >= table.numel():
            raise ValueError(f"class_weights has {table.numel()} entries but the batch holds label {int(anchors.max())}")
        options["weights"] = table[anchors]
    return options
