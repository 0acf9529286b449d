"""Summaries of corruption accuracies: Table 3's group averages, the means over 19 / 15, mCE and relative mCE.

Paper section 4.2.2: "The average column is based on all 19 corruption patterns and the other columns averages each
corruption pattern group" (Table 3); the groups are Appendix C's columns, i.e. the 15 benchmark corruptions.
mCE and relative mCE are Hendrycks & Dietterich's (2019) ImageNet-C scores: a corruption's error averaged over the
five severities, divided by AlexNet's (relative: both minus their clean error), then averaged over the 15.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .corruptions import BENCHMARK_CORRUPTIONS, CORRUPTION_GROUPS, CORRUPTIONS

# AlexNet's ImageNet-C top-1 error per corruption, averaged over severities 1-5 (Hendrycks & Dietterich 2019,
# as used by their evaluation code and by AugMix, timm-style robustness tools and mmpretrain).
ALEXNET_ERRORS: Dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
# AlexNet's clean ImageNet validation error (43.5% in the paper's Table 1; 0.4348 in Google's robustness_metrics).
ALEXNET_CLEAN_ERROR = 0.4348


def corruption_errors(errors: Mapping[str, Sequence[float]]) -> Dict[str, float]:
    """CE per corruption: the model's error averaged over severities over AlexNet's (the 15 benchmark corruptions)."""
    return {name: float(np.mean(errors[name])) / ALEXNET_ERRORS[name] for name in BENCHMARK_CORRUPTIONS}


def relative_corruption_errors(errors: Mapping[str, Sequence[float]], clean_error: float) -> Dict[str, float]:
    """Relative CE per corruption: the degradation from the model's own clean error over AlexNet's degradation."""
    return {name: (float(np.mean(errors[name])) - clean_error) / (ALEXNET_ERRORS[name] - ALEXNET_CLEAN_ERROR)
            for name in BENCHMARK_CORRUPTIONS}


def summarize_corruptions(
        accuracy: Mapping[Tuple[str, int], float],
        *,
        clean_accuracy: Optional[float] = None,
        with_mce: bool = False,
) -> Dict[str, object]:
    """Summarize accuracies keyed by (corruption, severity).

    Returns ``per_corruption`` (mean over the severities present), ``groups`` (noise / blur / weather / digital, when
    all their corruptions are present), ``mean_19`` and ``mean_15`` (when all are present), ``mean_all`` (over whatever
    corruptions are present) and, with ``with_mce`` and all 15 at all five severities, ``mce`` / ``ce`` and (given the
    clean accuracy) ``relative_mce`` / ``relative_ce``.
    """
    by_name: Dict[str, Dict[int, float]] = {}
    for (name, severity), value in accuracy.items():
        by_name.setdefault(name, {})[severity] = value
    per_corruption = {name: float(np.mean(list(by_name[name].values()))) for name in CORRUPTIONS if name in by_name}
    summary: Dict[str, object] = {"per_corruption": per_corruption}
    summary["groups"] = {group: float(np.mean([per_corruption[n] for n in names]))
                         for group, names in CORRUPTION_GROUPS.items() if all(n in per_corruption for n in names)}
    summary["mean_all"] = float(np.mean(list(per_corruption.values()))) if per_corruption else None
    summary["mean_19"] = (float(np.mean([per_corruption[n] for n in CORRUPTIONS]))
                          if all(n in per_corruption for n in CORRUPTIONS) else None)
    summary["mean_15"] = (float(np.mean([per_corruption[n] for n in BENCHMARK_CORRUPTIONS]))
                          if all(n in per_corruption for n in BENCHMARK_CORRUPTIONS) else None)
    complete = all(set(by_name.get(n, {})) == {1, 2, 3, 4, 5} for n in BENCHMARK_CORRUPTIONS)
    if with_mce and complete:
        errors = {n: [1.0 - by_name[n][s] for s in range(1, 6)] for n in BENCHMARK_CORRUPTIONS}
        ce = corruption_errors(errors)
        summary["ce"], summary["mce"] = ce, float(np.mean(list(ce.values())))
        if clean_accuracy is not None:
            rce = relative_corruption_errors(errors, 1.0 - clean_accuracy)
            summary["relative_ce"], summary["relative_mce"] = rce, float(np.mean(list(rce.values())))
    return summary
