"""Hyper-parameters of Feature Contrastive Learning and its baselines (paper sections 3, 4.1, 4.2, Appendix B)."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

METHODS = ("xe", "xe_gauss", "cl_gauss", "fcl")
VARIANTS = ("xe", "margin")
REDUCTIONS = ("sum", "mean")
NEGATIVES = ("all", "other_class")
SELECTIONS = ("utility", "random")


@dataclass
class FCLConfig:
    """Configuration of the extra loss term added to cross-entropy.

    Defaults are the paper's synthetic MNIST values (section 4.1): k=256, sigma=0.5, tau=0.1, lambda=0.001.
    The CIFAR / ImageNet values are in Appendix B (and in the recipes under configs/).

    Args:
        method: "xe" (plain cross-entropy), "xe_gauss" (+ lambda * CE on a Gaussian-perturbed copy),
            "cl_gauss" (+ lambda * contrastive loss with a Gaussian-perturbed positive), "fcl" (Algorithm 1).
        k: number of input elements (over C*H*W of one sample) perturbed in each utility-aware perturbation.
        sigma: std of the perturbation noise in [0, 1] pixel units (converted by ``input_std`` when inputs are normalized).
        tau: temperature of the cross-entropy contrastive loss (Eq. 5).
        weight: lambda, the weight of the extra term once fully ramped up.
        reduction: how the per-sample extra terms are combined. "sum" (default) is Algorithm 1's
            l_FCL = sum_i l^i over the (global) batch, beside the mean cross-entropy: the paper's lambdas (1e-3 on
            MNIST at batch 128, 1e-4 on CIFAR/ImageNet at batch 1024) are for that sum. Under DDP and gradient
            accumulation the local sum is multiplied by the world size and the accumulation group, so that gradient
            averaging gives lambda * sum over the images of the optimizer step.
            "mean" averages over the batch instead (lambda then weighs one sample's term).
        variant: "xe" (Eq. 5, the paper's choice for all experiments) or "margin" (Eq. 4).
        margin: gamma of Eq. 4, in cosine-distance units (distances lie in [0, 2]).
        start_step: optimizer step before which lambda is 0 and nothing extra is computed.
        ramp_steps: length of the linear ramp of lambda from 0 to ``weight`` after ``start_step`` (0: a step).
        min_utility: a sample whose largest utility is below this keeps no high-utility negative (paper sec. 4.1).
        input_std: per-channel std used to normalize inputs, or None when inputs are [0, 1] pixels.
        utility_grad_scale: factor on the loss before the utility gradient under float16 autocast, so small input
            gradients do not flush to zero (the utility is unscaled afterwards); ignored otherwise.
        every: the extra term only on every n-th step from ``start_step`` on, with lambda multiplied by n there so the
            expected gradient matches the term on every step; the other steps cost exactly an XE step. Cheaper by
            about n, noisier: the term's gradient arrives in n-times larger, n-times rarer kicks.
        fraction: the extra term on a random ``max(1, round(fraction * B))`` samples of each batch (their mean, scaled
            as the whole batch's term would be, so its expectation is unchanged); every clean embedding of the batch
            stays a negative. For FCL the subset's utility comes from a separate forward and input-only backward over
            the subset (see FeatureContrastiveRegularizer). Saves the extra passes' share of the step, not the clean
            pass.
        negatives: which clean samples of the batch are negatives of anchor i besides z_i^-: "all" (the paper: every
            other sample) or "other_class" (samples with i's label are left out, so the term no longer pushes apart
            what the cross-entropy pulls together; classification inputs only, the labels decide).
        selection: how FCL picks the k perturbed elements of a sample: "utility" (Algorithm 1: BOTTOM_k / TOP_k of the
            contextual utility |d loss / d x|) or "random" (a control: BOTTOM_k / TOP_k of uniform random scores, i.e.
            two disjoint random sets of k elements, drawn from the step's generator before the noise; everything else
            unchanged). "random" takes no input gradient, so its step is cheaper, and every sample keeps its negative
            (there is no utility for ``min_utility`` to test). Needs 2k <= C*H*W.
        class_weights: a factor per class (indexed by label) on each anchor's term, e.g. to give rare classes, whose
            few samples carry the high-utility negative that keeps their rare features, a larger share of the term;
            None: 1 for every class.
        perturbed_chunks: run the perturbed pass in this many chunks, each under activation checkpointing, so only one
            chunk's activations are kept for the backward (less memory, one more forward of the perturbed batch;
            BatchNorm then normalizes each chunk with its own batch statistics).
    """

    method: str = "fcl"
    k: int = 256
    sigma: float = 0.5
    tau: float = 0.1
    weight: float = 1e-3
    reduction: str = "sum"
    variant: str = "xe"
    margin: float = 1.0
    start_step: int = 0
    ramp_steps: int = 0
    min_utility: float = 1e-12
    input_std: Optional[Tuple[float, ...]] = None
    utility_grad_scale: float = 1024.0
    every: int = 1
    fraction: float = 1.0
    perturbed_chunks: int = 1
    negatives: str = "all"
    selection: str = "utility"
    class_weights: Optional[Tuple[float, ...]] = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{field.name} must be finite, got {value}")
        if self.method not in METHODS:
            raise ValueError(f"unknown FCL method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown contrastive variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.sigma < 0 or self.tau <= 0 or self.weight < 0:
            raise ValueError(f"need sigma >= 0, tau > 0, weight >= 0; got {self.sigma}, {self.tau}, {self.weight}")
        if self.start_step < 0 or self.ramp_steps < 0:
            raise ValueError("start_step and ramp_steps must be >= 0")
        if self.min_utility < 0 or self.utility_grad_scale <= 0:
            raise ValueError(f"need min_utility >= 0 and utility_grad_scale > 0; got {self.min_utility}, "
                             f"{self.utility_grad_scale}")
        for name in ("every", "perturbed_chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1] (the share of each batch given the extra term), "
                             f"got {self.fraction}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"unknown negatives {self.negatives!r}; choose one of {', '.join(NEGATIVES)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {', '.join(SELECTIONS)}")
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)
            if not self.class_weights or any(not w >= 0 for w in self.class_weights):
                raise ValueError(f"class_weights must be non-negative, one per class, got {self.class_weights}")
        if self.input_std is not None:
            self.input_std = tuple(float(s) for s in self.input_std)
            if any(s <= 0 for s in self.input_std):
                raise ValueError(f"input_std must be positive, got {self.input_std}")

    def subset_size(self, batch: int) -> int:
        """m, the number of samples of a batch of ``batch`` given the extra term."""
        return batch if self.fraction == 1.0 else max(1, round(self.fraction * batch))

    def check_input(self, input_size: Sequence[int], batch_size: int) -> None:
        """Raise ValueError where these settings cannot apply to batches of ``batch_size`` inputs shaped
        ``input_size`` (C, H, W), so a run learns it before its first step, not when the term starts."""
        if self.method == "xe":
            return
        channels, elements = input_size[0], math.prod(input_size)
        if self.method == "fcl" and self.k > elements:
            raise ValueError(f"k {self.k} exceeds the {elements} elements of one input "
                             f"({' x '.join(map(str, input_size))})")
        if self.method == "fcl" and self.selection == "random" and 2 * self.k > elements:
            raise ValueError(f"selection 'random' draws two disjoint sets of k {self.k}, more than the {elements} "
                             f"elements of one input ({' x '.join(map(str, input_size))}) hold; "
                             f"use k <= {elements // 2}")
        if self.input_std is not None and len(self.input_std) not in (1, channels):
            raise ValueError(f"input_std has {len(self.input_std)} values for {channels} input channels")
        if self.perturbed_chunks > self.subset_size(batch_size):
            raise ValueError(f"perturbed_chunks {self.perturbed_chunks} exceeds the {self.subset_size(batch_size)} "
                             f"samples per batch given the extra term")
