"""The FCL regularizer: cross-entropy plus the FCL term (Algorithm 1) or a baseline's term (section 4.2),
around any timm classification model, in one module forward so DDP sees one forward and one backward.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ._compat import double_backward_through_compiled_graphs
from .batchnorm import frozen_bn_stats
from .config import FCLConfig
from .heads import head_mode, logits_from_embedding
from .losses import anchor_options, fcl_loss
from .perturbations import gaussian_perturbation, generator_device, perturbed_batch, random_scores
from .schedule import scheduled_weight, step_weight
from .utility import utility_from_loss


@dataclass
class FCLOutput:
    """What one forward returns: ``loss`` to back-propagate and the parts to log."""
    loss: torch.Tensor      # ce + weight * scale * fcl
    logits: torch.Tensor    # clean logits, exactly the plain model's
    ce: torch.Tensor        # the classification loss (loss_fn) on the clean pass
    fcl: torch.Tensor       # the method's extra term before weighting, mean per sample of the subset (0 when off)
    weight: float           # the factor on the term at this step: lambda (x config.every on the steps that carry it)
    scale: float = 1.0      # loss = ce + weight * scale * fcl: for reduction "sum" the images of the optimizer step
    #                         over all ranks (local batch x world size x accumulation group), else 1
    scheduled_weight: float = 0.0  # lambda of the schedule at this step, whether or not this step carries the term
    pull: Optional[torch.Tensor] = None  # when asked for: the median over anchors of |d(weight * scale * fcl)/dz_i|
    #                                      / |d ce/dz_i| (0-dim, detached); None when not measured


@dataclass
class _Batch:
    """The samples given the extra term: the whole batch (``index`` None) or a random subset of it."""
    x: torch.Tensor
    y: torch.Tensor
    index: Optional[torch.Tensor]
    batch_y: Optional[torch.Tensor] = None  # the labels of the whole clean batch (the negatives' labels)


class FeatureContrastiveRegularizer(nn.Module):
    """Wraps a timm model; ``forward(x, y, step)`` returns an :class:`FCLOutput`.

    A step is: the clean pass (the plain model's pass) -> the weight of the step -> the method's extra term -> the
    combined loss. Before ``config.start_step``, on the steps ``config.every`` skips (and for method "xe", and in eval
    mode) nothing but the clean pass runs. Otherwise, for "fcl": the utility |d ce / d x| from the clean pass's graph
    (input gradient only), x_low / x_high from the k lowest / highest utilities, one batched embedding pass over
    [x_low; x_high] that leaves BatchNorm running statistics alone, and l_FCL on (z, z^+, z^-) with the other samples
    as negatives. The input of such a step requires grad (for the utility), so a plain ``loss.backward()`` also
    computes the first layer's unused input gradient; ``loss.backward(inputs=trainable_parameters)`` skips it.

    With ``config.fraction`` < 1 the extra term covers a random subset of m samples (drawn with ``generator`` before
    the perturbation noise, on the device): anchors are the subset's rows of the clean z, negatives every other clean
    embedding of the batch. The subset's utility comes from a separate forward and input-only backward over the m
    samples (BatchNorm with the subset's batch statistics, running statistics untouched), not from the clean graph,
    whose input gradient would cost half a backward over all B samples whatever the fraction.

    ``loss_fn`` is the classification loss of the clean pass (e.g. timm's LabelSmoothingCrossEntropy, or
    SoftTargetCrossEntropy for mixup / cutmix soft targets: the utility is then the gradient of that loss at the mixed
    images). With ``num_splits`` > 1 the batch holds that many views of the same images stacked as timm's AugMix
    splits are ([clean; augmented 1; ...], labels repeated); ``loss_fn`` sees all of them (JsdCrossEntropy), while the
    extra term is taken on the clean view only: its anchors and negatives are the clean embeddings, its utility (and
    XE+Gaussian's loss) is ``label_loss_fn`` of the clean view, which defaults to ``loss_fn`` and must be a per-view
    label loss (JsdCrossEntropy's ``cross_entropy_loss``) when ``loss_fn`` couples the views.

    ``compile_backend`` (e.g. "inductor") compiles the two calls the regularizer makes, ``forward_features`` and
    ``forward_head`` (compiling ``model.forward`` would not reach them). The compiled functions are the model class's,
    called with the model as an argument, so copies of the model (EMA) never run through this instance. They are
    compiled without AOTAutograd's donated buffers (the utility's input gradient is a second backward through the
    clean graph), a setting changed only during the regularizer's forward (where the graphs compile and the utility's
    backward runs) and restored after.

    ``world_size``: the processes whose gradients are averaged (DDP), which ``reduction="sum"`` multiplies in so that
    lambda weighs the sum over the global batch; train_fcl.py passes its accelerator's. None: the default process
    group's size when one is initialized, else 1.
    """

    def __init__(
            self,
            model: nn.Module,
            config: Optional[FCLConfig] = None,
            loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
            compile_backend: Optional[str] = None,
            *,
            num_splits: int = 1,
            label_loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
            world_size: Optional[int] = None,
    ):
        super().__init__()
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise TypeError(f"{type(model).__name__} has no forward_features / forward_head split; "
                            "FCL needs a timm classification model")
        if getattr(model, "num_classes", 1) == 0:
            raise ValueError("the model has no classifier (num_classes=0); create it with num_classes > 0")
        self.model = model
        self.config = config or FCLConfig()
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int)
                                       or world_size < 1):
            raise ValueError(f"world_size must be an integer >= 1 (the processes averaging gradients), "
                             f"got {world_size!r}")
        self.world_size = world_size
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.label_loss_fn = label_loss_fn or self.loss_fn
        self.num_splits = num_splits
        self.head_mode = head_mode(model)
        self.compile_backend = compile_backend
        self._compiled = None
        if compile_backend is not None:
            self._compiled = (torch.compile(type(model).forward_features, backend=compile_backend),
                              torch.compile(type(model).forward_head, backend=compile_backend))

    # ---------------------------------------------------------------------------------------- model calls
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            return self.model.forward_features(x)
        return self._compiled[0](self.model, x)

    def _head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self._compiled is None:
            return self.model.forward_head(features, pre_logits=pre_logits)
        return self._compiled[1](self.model, features, pre_logits=pre_logits)

    def _logits_and_embedding(self, features: torch.Tensor):
        if self.head_mode == "separate":
            logits = self._head(features)
            with frozen_bn_stats(self.model):
                z = self._head(features, pre_logits=True)
            return logits, z
        z = self._head(features, pre_logits=True)
        return logits_from_embedding(self.model, z, self.head_mode), z

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

    def _utility_scale(self, x: torch.Tensor) -> float:
        device = x.device.type
        fp16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
        return self.config.utility_grad_scale if fp16 else 1.0

    # ---------------------------------------------------------------------------------------- the batch's subset
    def subset_size(self, batch: int) -> int:
        """m, the number of samples given the extra term in a batch of ``batch``."""
        return self.config.subset_size(batch)

    def _draw_subset(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator]) -> _Batch:
        """The subset of ``config.fraction`` of the batch: m distinct indices drawn on the generator's device (no host
        synchronisation); the whole batch when the fraction is 1."""
        batch = x.shape[0]
        m = self.subset_size(batch)
        if m == batch:
            return _Batch(x, y, None, y)
        index = torch.randperm(batch, generator=generator, device=generator_device(generator, x.device))
        index = index[:m].to(x.device)
        return _Batch(x[index], y[index], index, y)

    def _subset_utility(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """|d ce / d x| of the subset from its own forward and input-only backward (graph freed right after)."""
        xs = xs.detach().requires_grad_(True)
        with frozen_bn_stats(self.model):
            ce = self.label_loss_fn(self._head(self._features(xs)), ys)
        return utility_from_loss(ce, xs, self._utility_scale(xs), retain_graph=False)

    # ---------------------------------------------------------------------------------------- the methods' terms
    def _xe_gauss_term(self, part: _Batch, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Cross-entropy on an all-pixel Gaussian copy of the samples, same labels."""
        cfg = self.config
        x_noisy = gaussian_perturbation(part.x, cfg.sigma, generator, cfg.input_std)
        return self.label_loss_fn(self._perturbed_pass(x_noisy, logits=True), part.y)

    def _cl_gauss_term(self, part: _Batch, z: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """The contrastive loss with an all-pixel Gaussian positive and the other samples as negatives."""
        cfg = self.config
        x_pos = gaussian_perturbation(part.x, cfg.sigma, generator, cfg.input_std)
        return fcl_loss(z, self._perturbed_pass(x_pos), None, tau=cfg.tau, variant=cfg.variant, margin=cfg.margin,
                        anchor_index=part.index, **self._anchor_options(part))

    def _fcl_term(self, part: _Batch, z: torch.Tensor, ce: Optional[torch.Tensor],
                  generator: Optional[torch.Generator]) -> torch.Tensor:
        """Algorithm 1: the utility, x_low / x_high from its BOTTOM_k / TOP_k, and l_FCL on (z, z+, z-). With
        ``selection="random"`` random scores stand in for the utility (no input gradient is taken) and every sample
        keeps its negative."""
        cfg = self.config
        if cfg.selection == "random":
            utility, keep_neg = random_scores(part.x, generator), None
        else:
            if part.index is None:  # the clean pass's input is a leaf: its input gradient is the utility
                utility = utility_from_loss(ce, part.x, self._utility_scale(part.x))
            else:
                utility = self._subset_utility(part.x, part.y)
            keep_neg = utility.flatten(1).amax(1) >= cfg.min_utility
        x_both = perturbed_batch(part.x, utility, cfg.k, cfg.sigma, generator, cfg.input_std)  # [x_low; x_high]
        z_pos, z_neg = self._perturbed_pass(x_both).chunk(2)
        return fcl_loss(z, z_pos, z_neg, tau=cfg.tau, variant=cfg.variant, margin=cfg.margin, neg_mask=keep_neg,
                        anchor_index=part.index, **self._anchor_options(part))

    def _anchor_options(self, part: _Batch) -> dict:
        """fcl_loss's per-label options (config.negatives, config.class_weights); soft targets (mixup, cutmix) count
        as their largest class."""
        labels = part.batch_y if part.batch_y.dim() == 1 else part.batch_y.argmax(dim=1)
        return anchor_options(self.config, labels, part.index)

    # ---------------------------------------------------------------------------------------- one step
    def forward(self, x: torch.Tensor, y: torch.Tensor, step: int = 0,
                generator: Optional[torch.Generator] = None, group_size: int = 1,
                measure_pull: bool = False) -> FCLOutput:
        """One step's loss. ``group_size``: the micro-batches accumulated into this optimizer step (each loss divided
        by it before backward), so that lambda keeps weighing the sum of the term over all the step's images.
        ``measure_pull``: on a step that carries an embedding term (FCL, CL+Gaussian), also return ``pull`` (see
        :meth:`pull_ratio`); it costs two gradients from the losses back to the embedding only."""
        if self._compiled is None:
            return self._step(x, y, step, generator, group_size, measure_pull)
        with double_backward_through_compiled_graphs():  # compiling, and the utility's backward, in the regularizer
            return self._step(x, y, step, generator, group_size, measure_pull)

    def _step(self, x: torch.Tensor, y: torch.Tensor, step: int, generator: Optional[torch.Generator],
              group_size: int, measure_pull: bool) -> FCLOutput:
        cfg = self.config
        lam = scheduled_weight(cfg, step)
        weight = step_weight(cfg, step) if self.training else 0.0
        if weight == 0.0:
            logits = self._head(self._features(x))
            ce = self.loss_fn(logits, y)
            return FCLOutput(loss=ce, logits=logits, ce=ce, fcl=ce.detach().new_zeros(()), weight=0.0,
                             scheduled_weight=lam)

        images = x.shape[0] // self.num_splits  # the clean view's rows come first
        part = self._draw_subset(x[:images], y[:images], generator)
        if cfg.method == "fcl" and cfg.selection == "utility" and part.index is None:
            # a leaf, so the utility is an input gradient of the clean graph
            x_clean = x[:images].detach().requires_grad_(True)
            x = x_clean if self.num_splits == 1 else torch.cat([x_clean, x[images:]])
            part = _Batch(x_clean, y[:images], None, y[:images])
        features = self._features(x)
        if cfg.method == "xe_gauss":
            logits = self._head(features)
            ce = self.loss_fn(logits, y)
            extra = self._xe_gauss_term(part, generator)
        else:
            logits, z_all = self._logits_and_embedding(features)
            ce = self.loss_fn(logits, y)
            z = z_all[:images]
            if cfg.method == "cl_gauss":
                extra = self._cl_gauss_term(part, z, generator)
            else:
                label_loss = self._label_loss(logits, y, ce, images) if cfg.selection == "utility" else None
                extra = self._fcl_term(part, z, label_loss, generator)
        # the subset's mean times the batch's scale: an unbiased estimate of the whole batch's term
        scale = self.reduction_scale(images, group_size)
        pull = None
        if measure_pull and cfg.method != "xe_gauss":
            # where both losses meet: the embedding when the logits are computed from it, else the features
            meet = z_all if self.head_mode != "separate" else features
            anchors = torch.arange(images, device=x.device) if part.index is None else part.index.to(x.device)
            pull = self.pull_ratio((weight * scale) * extra, ce, meet, anchors)
        return FCLOutput(loss=ce + (weight * scale) * extra, logits=logits, ce=ce, fcl=extra.detach(), weight=weight,
                         scale=scale, scheduled_weight=lam, pull=pull)

    @staticmethod
    def pull_ratio(term: torch.Tensor, ce: torch.Tensor, z: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """The median over the ``anchors`` rows of |d term / d z_i| / |d ce / d z_i|: how hard the weighted extra
        term pulls on a sample's embedding against the classification loss (1: as hard). ``term`` is the weighted
        term as it enters the loss (lambda x the batch sum); both graphs are kept for the step's backward."""
        g_term, g_ce = (torch.autograd.grad(loss, z, retain_graph=True, allow_unused=True)[0] for loss in (term, ce))
        if g_term is None or g_ce is None:
            raise RuntimeError("the extra term or the classification loss does not reach the embedding")
        g_term, g_ce = (g[anchors].float().flatten(1).norm(dim=1) for g in (g_term, g_ce))
        return (g_term / g_ce.clamp_min(torch.finfo(torch.float32).tiny)).median().detach()

    def _label_loss(self, logits: torch.Tensor, y: torch.Tensor, ce: torch.Tensor, images: int) -> torch.Tensor:
        """The clean view's label loss, which the utility differentiates: the classification loss itself when the
        batch is a single view and no separate label loss was given."""
        if self.num_splits == 1 and self.label_loss_fn is self.loss_fn:
            return ce
        return self.label_loss_fn(logits[:images], y[:images])

    def reduction_scale(self, local_batch: int, group_size: int = 1) -> float:
        """Factor from the per-sample mean of the extra term to the configured reduction: for "sum", the images of the
        optimizer step (local batch x world size x accumulated micro-batches, so that DDP's gradient averaging and the
        division of each micro-batch's loss by ``group_size`` yield lambda x the sum over all of them)."""
        if self.config.reduction == "mean":
            return 1.0
        world = self.world_size
        if world is None:
            world = torch.distributed.get_world_size() if torch.distributed.is_available() and \
                torch.distributed.is_initialized() else 1
        return float(local_batch * world * group_size)
