"""Which images a model got right, kept small enough to store beside every result: one bit per image.

A result row of ``python -m timm_fcl.eval`` carries ``"hits"``: the top-1 correctness of each image of its set, in
the set's order, as base64 text of the bits packed eight to a byte (numpy's ``packbits``, little bit order). 10,000
images take 1,668 characters. With the same images in the same order for two models, the bits pair them image by
image, which is what a paired bootstrap over test images needs (:func:`paired_bootstrap`).
"""
from __future__ import annotations

import base64

import numpy as np

BIT_ORDER = "little"


def pack_hits(correct) -> str:
    """Base64 text of a 1-D boolean array (one entry per image)."""
    bits = np.asarray(correct, dtype=bool).reshape(-1)
    return base64.b64encode(np.packbits(bits, bitorder=BIT_ORDER).tobytes()).decode("ascii")


def unpack_hits(text: str, count: int) -> np.ndarray:
    """The ``count`` booleans that :func:`pack_hits` wrote into ``text``."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if count < 0 or not (count + 7) // 8 == raw.size:
        raise ValueError(f"{raw.size} bytes of hits cannot hold exactly {count} images")
    return np.unpackbits(raw, count=count, bitorder=BIT_ORDER).astype(bool)


def pack_counts(counts) -> str:
    """Base64 text of per-image counts in [0, 255] (e.g. how many corrupted versions of each image a model got
    right), one byte each."""
    values = np.asarray(counts).reshape(-1)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("per-image counts must lie in [0, 255]")
    return base64.b64encode(values.astype(np.uint8).tobytes()).decode("ascii")


def unpack_counts(text: str) -> np.ndarray:
    """The per-image counts that :func:`pack_counts` wrote into ``text``."""
    return np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8).astype(np.int64)


def paired_bootstrap(a, b, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """The mean of ``a - b`` and its ``level`` interval from a paired two-level bootstrap: each resample draws the
    seeds with replacement and, within each drawn seed, the images with replacement (the same images for both), and
    takes the mean difference; the interval is the resamples' percentiles.

    Args:
        a, b: per-image scores (0/1 hits, or fractions such as the share of an image's corrupted versions right) of two
            methods, shaped [seeds, images]; row s of both comes from seed s (the same start and data order), column i
            from image i.
    Returns:
        {"mean", "low", "high", "seeds", "images", "resamples", "level"}; with one seed only the images are resampled.
    """
    a, b = (np.asarray(v, dtype=np.float64) for v in (a, b))
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"need two equal [seeds, images] arrays, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    diff = a - b
    seeds, images = diff.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        rows = rng.integers(0, seeds, seeds)
        cols = rng.integers(0, images, (seeds, images))
        means[r] = diff[rows[:, None], cols].mean()
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high), "seeds": seeds, "images": images,
            "resamples": resamples, "level": level}
