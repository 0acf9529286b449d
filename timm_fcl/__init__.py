"""timm-fcl: Feature Contrastive Learning for timm models.

This package's top level is the algorithm and its public API: the modules here import nothing of the trainer. The
rest lives in named subpackages: ``models`` (LeNet and CIFAR ResNets, registered in timm on import), ``data``
(training streams, shards, the carved validation split, synthetic MNIST), ``training`` (train_fcl.py's parts),
``run`` (the run folder's contract shared by training, evaluation and publishing) and ``robustness`` (noisy and
corrupted test sets and ``python -m timm_fcl.eval``)."""
from .config import FCLConfig
from .heads import embedding
from .losses import FeatureContrastiveLoss, fcl_loss
from .models import LeNet
from .patch_gaussian import PatchGaussian
from .perturbations import gaussian_perturbation, utility_perturbations
from .regularizer import FCLOutput, FeatureContrastiveRegularizer
from .schedule import fcl_weight
from .sensitivity import contextual_sensitivity
from .utility import contextual_utility

__version__ = "0.1.0"
__all__ = [
    "FCLConfig", "FCLOutput", "FeatureContrastiveLoss", "FeatureContrastiveRegularizer", "LeNet", "PatchGaussian", "contextual_sensitivity",
    "contextual_utility", "embedding", "fcl_loss", "fcl_weight", "gaussian_perturbation", "utility_perturbations",
]
