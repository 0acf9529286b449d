"""timm-fcl: Feature Contrastive Learning for timm models."""
from .config import FCLConfig
from .heads import embedding
from .losses import fcl_loss
from .models import LeNet
from .patch_gaussian import PatchGaussian
from .perturbations import gaussian_perturbation, utility_perturbations
from .regularizer import FCLOutput, FeatureContrastiveRegularizer
from .schedule import fcl_weight
from .sensitivity import contextual_sensitivity
from .utility import contextual_utility

__version__ = "0.1.0"
__all__ = [
    "FCLConfig", "FCLOutput", "FeatureContrastiveRegularizer", "LeNet", "PatchGaussian", "contextual_sensitivity",
    "contextual_utility", "embedding", "fcl_loss", "fcl_weight", "gaussian_perturbation", "utility_perturbations",
]
