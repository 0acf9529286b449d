"""The FCL regularizer: cross-entropy plus the FCL term (Algorithm 1) or a baseline's term (section 4.2),
around any timm classification model, in one module forward so DDP sees one forward and one backward.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .batchnorm import frozen_bn_stats
from .config import FCLConfig
from .heads import head_mode, logits_from_embedding
from .losses import anchor_options, fcl_loss
from .perturbations import gaussian_perturbation, perturbed_batch
from .schedule import fcl_weight
from .utility import utility_from_loss


@dataclass
class FCLOutput:
    """What one forward returns: ``loss`` to back-propagate and the parts to log."""
    loss: torch.Tensor      # ce + weight * scale * fcl
    logits: torch.Tensor    # clean logits, exactly the plain model's
    ce: torch.Tensor        # the classification loss on the clean batch
    fcl: torch.Tensor       # the method's extra term before weighting, mean per sample of the subset (0 when off)
    weight: float           # lambda at this step (times config.every on the steps that carry the term)
    scale: float = 1.0      # loss = ce + weight * scale * fcl: the global batch size for reduction "sum", else 1


class FeatureContrastiveRegularizer(nn.Module):
    """Wraps a timm model; ``forward(x, y, step)`` returns an :class:`FCLOutput`.

    The clean pass is the plain model's pass. Before ``config.start_step``, on the steps ``config.every`` skips (and for
    method "xe", and in eval mode) nothing else runs. Otherwise, for "fcl": the utility |d ce / d x| from the clean
    pass's graph (input gradient only), x_low / x_high from the k lowest / highest utilities, one batched embedding pass
    over [x_low; x_high] that leaves BatchNorm running statistics alone, and l_FCL on (z, z^+, z^-) with the other
    samples as negatives. The input of such a step requires grad (for the utility), so a plain ``loss.backward()`` also
    computes the first layer's unused input gradient; ``loss.backward(inputs=trainable_parameters)`` skips it
    (train_fcl.py does; ~2.5 % of a resnet18 FCL step at 64 px, ~1 % for vit_tiny at 224 px).

    With ``config.fraction`` < 1 the extra term covers a random subset of m samples (drawn with ``generator`` before
    the perturbation noise, on the device): anchors are the subset's rows of the clean z, negatives every other clean
    embedding of the batch. The subset's utility comes from a separate forward and input-only backward over the m
    samples (BatchNorm with the subset's batch statistics, running statistics untouched), not from the clean graph: an
    input gradient of the clean graph costs half a backward over all B samples whatever the fraction, the subset pass a
    forward and half a backward over m. Measured at fraction 0.25 on the CPU (1 thread): 0.39 vs 0.21 of an XE step for
    resnet18 at 64 px batch 32, 0.44 vs 0.20 for vit_tiny_patch16_224 at 224 px batch 8.

    ``compile_backend`` (e.g. "inductor") compiles the two calls the regularizer makes, ``forward_features`` and
    ``forward_head`` (compiling ``model.forward`` would not reach them). The compiled functions are the model class's,
    called with the model as an argument, so copies of the model (EMA) never run through this instance. Compiling
    turns off AOTAutograd's donated buffers for the whole process (a memory saving that forbids the second backward
    through the clean graph, which the utility's input gradient needs).
    """

    def __init__(
            self,
            model: nn.Module,
            config: Optional[FCLConfig] = None,
            loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
            compile_backend: Optional[str] = None,
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
        self.compile_backend = compile_backend
        self._compiled = None
        if compile_backend is not None:
            # AOTAutograd's donated buffers forbid a second backward through a compiled graph, which the utility's
            # input gradient (retain_graph=True) needs; the switch is read at backward time, so it is process-wide
            torch._functorch.config.donated_buffer = False
            self._compiled = (torch.compile(type(model).forward_features, backend=compile_backend),
                              torch.compile(type(model).forward_head, backend=compile_backend))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            return self.model.forward_features(x)
        return self._compiled[0](self.model, x)

    def _head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self._compiled is None:
            return self.model.forward_head(features, pre_logits=pre_logits)
        return self._compiled[1](self.model, features, pre_logits=pre_logits)

    def scheduled_weight(self, step: int) -> float:
        """lambda of the schedule at ``step`` (0 for method "xe"), whatever ``every`` skips: the value to log."""
        cfg = self.config
        return 0.0 if cfg.method == "xe" else fcl_weight(step, cfg.weight, cfg.start_step, cfg.ramp_steps)

    def weight_at(self, step: int) -> float:
        """The factor on ``scale * fcl`` at ``step``: lambda, times ``every`` on the steps that carry the term (so the
        expected gradient over steps matches the term on every step) and 0 on the others."""
        cfg = self.config
        if step < cfg.start_step or (step - cfg.start_step) % cfg.every:
            return 0.0
        return cfg.every * self.scheduled_weight(step)

    def subset_size(self, batch: int) -> int:
        """m, the number of samples given the extra term in a batch of ``batch``."""
        return batch if self.config.fraction == 1.0 else max(1, round(self.config.fraction * batch))

    def _logits_and_embedding(self, features: torch.Tensor):
        if self.head_mode == "separate":
            logits = self._head(features)
            with frozen_bn_stats(self.model):
                z = self._head(features, pre_logits=True)
            return logits, z
        z = self._head(features, pre_logits=True)
        return logits_from_embedding(self.model, z, self.head_mode), z

    def _utility_scale(self, x: torch.Tensor) -> float:
        device = x.device.type
        fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
        return self.config.utility_grad_scale if fp16 else 1.0

    def _subset(self, batch: int, m: int, device: torch.device,
                generator: Optional[torch.Generator]) -> torch.Tensor:
        """m distinct sample indices, drawn on the generator's device (no host synchronisation)."""
        on = generator.device if generator is not None else device
        return torch.randperm(batch, generator=generator, device=on)[:m].to(device)

    def _subset_utility(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """|d ce / d x| of the subset from its own forward and input-only backward (graph freed right after)."""
        xs = xs.detach().requires_grad_(True)
        with frozen_bn_stats(self.model):
            ce = self.loss_fn(self._head(self._features(xs)), ys)
        return utility_from_loss(ce, xs, self._utility_scale(xs), retain_graph=False)

    def _frozen_pass(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        with frozen_bn_stats(self.model):  # entered here, so a checkpoint's recomputation in backward is frozen too
            return self._head(self._features(x), pre_logits=not logits)

    def _perturbed_pass(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        """The embeddings (or logits) of perturbed inputs, BatchNorm running statistics untouched; in
        ``config.perturbed_chunks`` checkpointed chunks, so the backward holds one chunk's activations at a time
        (BatchNorm then normalizes each chunk with that chunk's batch statistics)."""
        chunks = self.config.perturbed_chunks
        if chunks == 1:
            return self._frozen_pass(x, logits)
        return torch.cat([checkpoint(self._frozen_pass, part, logits, use_reentrant=False)
                          for part in x.chunk(chunks)])

    def forward(self, x: torch.Tensor, y: torch.Tensor, step: int = 0,
                generator: Optional[torch.Generator] = None) -> FCLOutput:
        cfg = self.config
        weight = self.weight_at(step) if self.training else 0.0
        if weight == 0.0:
            logits = self._head(self._features(x))
            ce = self.loss_fn(logits, y)
            return FCLOutput(loss=ce, logits=logits, ce=ce, fcl=ce.detach().new_zeros(()), weight=0.0)

        batch = x.shape[0]
        m = self.subset_size(batch)
        subset = None if m == batch else self._subset(batch, m, x.device, generator)  # None: the whole batch
        xs, ys = (x, y) if subset is None else (x[subset], y[subset])
        if cfg.method == "fcl" and subset is None:
            x = xs = x.detach().requires_grad_(True)  # a leaf, so the utility is an input gradient of the clean graph
        features = self._features(x)
        if cfg.method == "xe_gauss":
            logits = self._head(features)
            ce = self.loss_fn(logits, y)
            x_noisy = gaussian_perturbation(xs, cfg.sigma, generator, cfg.input_std)
            extra = self.loss_fn(self._perturbed_pass(x_noisy, logits=True), ys)
        else:
            logits, z = self._logits_and_embedding(features)
            ce = self.loss_fn(logits, y)
            if cfg.method == "cl_gauss":
                x_pos = gaussian_perturbation(xs, cfg.sigma, generator, cfg.input_std)
                extra = fcl_loss(z, self._perturbed_pass(x_pos), None, tau=cfg.tau, variant=cfg.variant,
                                 margin=cfg.margin, anchor_index=subset, **anchor_options(cfg, y, subset))
            else:
                if subset is None:
                    utility = utility_from_loss(ce, x, self._utility_scale(x))
                else:
                    utility = self._subset_utility(xs, ys)
                keep_neg = utility.flatten(1).amax(1) >= cfg.min_utility
                x_both = perturbed_batch(xs, utility, cfg.k, cfg.sigma, generator, cfg.input_std)  # [x_low; x_high]
                z_pos, z_neg = self._perturbed_pass(x_both).chunk(2)
                extra = fcl_loss(z, z_pos, z_neg, tau=cfg.tau, variant=cfg.variant, margin=cfg.margin,
                                 neg_mask=keep_neg, anchor_index=subset, **anchor_options(cfg, y, subset))
        # the subset's mean times the batch's scale: an unbiased estimate of the whole batch's term
        scale = self.reduction_scale(batch)
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
