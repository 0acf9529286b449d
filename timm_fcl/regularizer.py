"""The FCL regularizer: cross-entropy plus the FCL term (Algorithm 1) or a baseline's term (section 4.2),
around any timm classification model, in one module forward so DDP sees one forward and one backward.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from .batchnorm import frozen_bn_stats
from .config import FCLConfig
from .heads import embedding, head_mode, logits_from_embedding
from .losses import fcl_loss
from .perturbations import gaussian_perturbation, perturbed_batch
from .schedule import fcl_weight
from .utility import utility_from_loss


@dataclass
class FCLOutput:
    """What one forward returns: ``loss`` to back-propagate and the parts to log."""
    loss: torch.Tensor      # ce + weight * fcl
    logits: torch.Tensor    # clean logits, exactly the plain model's
    ce: torch.Tensor        # the classification loss on the clean batch
    fcl: torch.Tensor       # the method's extra term before weighting, mean per sample (0 when off)
    weight: float           # lambda at this step
    scale: float = 1.0      # loss = ce + weight * scale * fcl: the global batch size for reduction "sum", else 1


class FeatureContrastiveRegularizer(nn.Module):
    """Wraps a timm model; ``forward(x, y, step)`` returns an :class:`FCLOutput`.

    The clean pass is the plain model's pass. Before ``config.start_step`` (and for method "xe", and in eval mode)
    nothing else runs. Otherwise, for "fcl": the utility |d ce / d x| from the clean pass's graph (input gradient only),
    x_low / x_high from the k lowest / highest utilities, one batched embedding pass over [x_low; x_high] that leaves
    BatchNorm running statistics alone, and l_FCL on (z, z^+, z^-) with the other samples as negatives.
    """

    def __init__(
            self,
            model: nn.Module,
            config: Optional[FCLConfig] = None,
            loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    ):
        super().__init__()
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise TypeError(f"{type(model).__name__} has no forward_features / forward_head split; "
                            "FCL needs a timm classification model")
        if getattr(model, "num_classes", 1) == 0:
            raise ValueError("the model has no classifier (num_classes=0); create it with num_classes > 0")
        self.model = model
        self.config = config or FCLConfig()
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.head_mode = head_mode(model)

    def weight_at(self, step: int) -> float:
        cfg = self.config
        if cfg.method == "xe":
            return 0.0
        return fcl_weight(step, cfg.weight, cfg.start_step, cfg.ramp_steps)

    def _logits_and_embedding(self, features: torch.Tensor):
        if self.head_mode == "separate":
            logits = self.model.forward_head(features)
            with frozen_bn_stats(self.model):
                z = self.model.forward_head(features, pre_logits=True)
            return logits, z
        z = self.model.forward_head(features, pre_logits=True)
        return logits_from_embedding(self.model, z, self.head_mode), z

    def _utility_scale(self, x: torch.Tensor) -> float:
        device = x.device.type
        fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
        return self.config.utility_grad_scale if fp16 else 1.0

    def forward(self, x: torch.Tensor, y: torch.Tensor, step: int = 0,
                generator: Optional[torch.Generator] = None) -> FCLOutput:
        cfg = self.config
        weight = self.weight_at(step) if self.training else 0.0
        if weight == 0.0:
            logits = self.model.forward_head(self.model.forward_features(x))
            ce = self.loss_fn(logits, y)
            return FCLOutput(loss=ce, logits=logits, ce=ce, fcl=ce.detach().new_zeros(()), weight=0.0)

        if cfg.method == "fcl":
            x = x.detach().requires_grad_(True)  # a leaf, so the utility is an input gradient of the clean graph
        features = self.model.forward_features(x)
        if cfg.method == "xe_gauss":
            logits = self.model.forward_head(features)
            ce = self.loss_fn(logits, y)
            x_noisy = gaussian_perturbation(x, cfg.sigma, generator, cfg.input_std)
            with frozen_bn_stats(self.model):
                extra = self.loss_fn(self.model.forward_head(self.model.forward_features(x_noisy)), y)
        else:
            logits, z = self._logits_and_embedding(features)
            ce = self.loss_fn(logits, y)
            if cfg.method == "cl_gauss":
                x_pos = gaussian_perturbation(x, cfg.sigma, generator, cfg.input_std)
                with frozen_bn_stats(self.model):
                    z_pos = embedding(self.model, x_pos)
                extra = fcl_loss(z, z_pos, None, tau=cfg.tau, variant=cfg.variant, margin=cfg.margin)
            else:
                utility = utility_from_loss(ce, x, self._utility_scale(x))
                keep_neg = utility.flatten(1).amax(1) >= cfg.min_utility
                x_both = perturbed_batch(x, utility, cfg.k, cfg.sigma, generator, cfg.input_std)  # [x_low; x_high]
                with frozen_bn_stats(self.model):
                    z_pos, z_neg = embedding(self.model, x_both).chunk(2)
                extra = fcl_loss(z, z_pos, z_neg, tau=cfg.tau, variant=cfg.variant, margin=cfg.margin,
                                 neg_mask=keep_neg)
        scale = self.reduction_scale(x.shape[0])
        return FCLOutput(loss=ce + (weight * scale) * extra, logits=logits, ce=ce, fcl=extra.detach(), weight=weight,
                         scale=scale)

    def reduction_scale(self, local_batch: int) -> float:
        """Factor from the per-sample mean of the extra term to the configured reduction: for "sum", the global
        batch (local batch x world size, so DDP's gradient averaging yields the sum over all ranks' samples)."""
        if self.config.reduction == "mean":
            return 1.0
        world = torch.distributed.get_world_size() if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 1
        return float(local_batch * world)
