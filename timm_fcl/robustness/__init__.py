"""Robustness evaluation (paper sections 4.1-4.2): noisy and corrupted test sets, their summaries, and the command
``python -m timm_fcl.eval`` that evaluates timm models on them.

- ``noise``: the UN / NUN pixel-noise test sets (light: torch only; re-exported by ``timm_fcl``).
- ``corruptions``: the 19 common corruptions (OpenCV, imagecorruptions, numba).
- ``datasets``: clean sets, the CIFAR-C / ImageNet-C layouts, generated and cached corruption suites.
- ``metrics``: Table 3's group means, the means over 19 / 15, mCE and relative mCE.
- ``evaluation``: models x test sets; ``reports``: table, CSV, plot; ``cli``: the command.
- ``units``: every accuracy is in percent; a results.json in another unit is refused (light: no imports).

Only ``noise`` is imported here: the other modules pull in OpenCV and numba, so they are imported on use.
"""
from .noise import nonuniform_noise, nonuniform_noise_probability, pixel_std, uniform_noise

__all__ = ["nonuniform_noise", "nonuniform_noise_probability", "pixel_std", "uniform_noise"]
