"""timm-fcl: Feature Contrastive Learning for timm models.

The robustness suite (``timm_fcl.robustness``: corruptions, test sets, metrics, ``python -m timm_fcl.eval``) needs
OpenCV and numba, so it is imported on use; only its light noise functions are re-exported here."""
from .config import FCLConfig
from .heads import embedding
from .losses import fcl_loss
from .models import LeNet
from .robustness.noise import nonuniform_noise, nonuniform_noise_probability, pixel_std, uniform_noise
from .patch_gaussian import PatchGaussian
from .perturbations import gaussian_perturbation, utility_perturbations
from .regularizer import FCLOutput, FeatureContrastiveRegularizer
from .schedule import fcl_weight
from .sensitivity import contextual_sensitivity
from .synthetic_mnist import SyntheticMNISTDataset, SyntheticMNISTSplit, build_synthetic_mnist
from .utility import contextual_utility

__version__ = "0.1.0"
__all__ = [
    "FCLConfig", "FCLOutput", "FeatureContrastiveRegularizer", "LeNet", "PatchGaussian", "SyntheticMNISTDataset",
    "SyntheticMNISTSplit", "build_synthetic_mnist", "contextual_sensitivity", "contextual_utility", "embedding",
    "fcl_loss", "fcl_weight", "gaussian_perturbation", "nonuniform_noise", "nonuniform_noise_probability",
    "pixel_std", "uniform_noise", "utility_perturbations",
]
