"""The 19 common corruptions of Hendrycks & Dietterich (2019), severities 1-5, for 32 px and 224 px images.

The paper evaluates on CIFAR-10-C, CIFAR-100-C and ImageNet-C (section 4.2.2, Table 3, Appendix C): the 15 benchmark
corruptions in four groups (noise, blur, weather, digital) plus the four held-out ones (speckle noise, Gaussian blur,
spatter, saturate) that the "all average" of Table 3 also counts.

Parameters are those of the official generators (hendrycks/robustness, ``make_cifar_c.py`` for the ``"cifar"`` preset,
``make_imagenet_c.py`` for ``"imagenet"``), so a generated set matches the released data sets in distribution.
Where each piece comes from:

- imagecorruptions (the ``imagecorruptions-imaug`` package): the defocus disk kernel, the diamond-square plasma of fog,
  the numba pixel shuffle of glass blur, the frost textures, and ``_motion_blur``, its NumPy stand-in for ImageMagick's
  motion blur (the official generators call ImageMagick through Wand) used by motion_blur and snow.
  With the ``"imagenet"`` preset, gaussian/shot/speckle noise, gaussian/glass/defocus/motion/zoom blur, fog, brightness,
  contrast, saturate, pixelate and JPEG give exactly that package's output for the same random state, spatter within
  one grey level (tested).
- written here, because the package hard-codes the ImageNet values or departs from the official generators:
  the CIFAR tables; elastic_transform (the official affine + elastic warp, which the package replaced by another one);
  pixelate (box up-sampling, the package uses nearest); frost (official crop sizes; CIFAR shrinks the textures 5x);
  snow (the official centred zoom and 8-bit snow layer); the RNG plumbing (one ``RandomState`` per call, so results
  are reproducible and independent of the global NumPy state).

Images are uint8 HxWx3 arrays; the output is uint8 of the same shape, truncated like the official ``np.uint8(...)``.
"""
import importlib.resources
from contextlib import contextmanager
from functools import lru_cache
from io import BytesIO
from typing import Dict, Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np
from imagecorruptions.corruptions import disk, plasma_fractal
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scipy_zoom
from skimage import color as sk_color
from skimage.filters import gaussian
from skimage.util import random_noise

from .._compat import imagecorruptions_parts

_shifted_motion_blur, _shuffle_pixels_njit_glass_blur = imagecorruptions_parts()

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
BENCHMARK_CORRUPTIONS = CORRUPTIONS[:15]
EXTRA_CORRUPTIONS = CORRUPTIONS[15:]
# Table 3's groups hold the 15 benchmark corruptions only: its numbers are the means of Appendix C's columns.
CORRUPTION_GROUPS: Dict[str, Tuple[str, ...]] = {
    "noise": CORRUPTIONS[0:3], "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11], "digital": CORRUPTIONS[11:15],
}
SEVERITIES = (1, 2, 3, 4, 5)

# Severity 1..5 parameters, copied value by value from the official generators (pixel units of 32 / 224 px images).
PRESETS: Dict[str, Dict[str, Sequence]] = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
        "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        "zoom_blur": ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)),
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "elastic_transform": tuple((32 * a, 32 * s, 32 * m) for a, s, m in (
            (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
        "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                    (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
        "frost_texture_scale": 0.2,
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
        "gaussian_blur": (1, 2, 3, 4, 6),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
        "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        # The official file multiplies by 244 ("should have been 224, but ultimately nothing is incorrect"): kept.
        "elastic_transform": tuple((244 * a, 244 * s, 244 * m) for a, s, m in (
            (2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))),
        "spatter": ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                    (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)),
        "frost_texture_scale": 1.0,
    },
}


def preset_for_size(height: int, width: int) -> str:
    """The official parameter set nearest to this image size: "cifar" (32 px) below 128 px, else "imagenet" (224 px)."""
    return "cifar" if max(height, width) < 128 else "imagenet"


@contextmanager
def _global_numpy_rng(rng: np.random.RandomState) -> Iterator[None]:
    """Let helpers that draw from the global NumPy RNG draw from ``rng`` instead, leaving the global state untouched."""
    saved = np.random.get_state()
    np.random.set_state(rng.get_state())
    try:
        yield
    finally:
        rng.set_state(np.random.get_state())
        np.random.set_state(saved)


def _clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom into the centre by ``zoom_factor`` and crop back to the input size (official version: centred trim)."""
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / zoom_factor)), int(np.ceil(w / zoom_factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    img = scipy_zoom(img[top:top + ch, left:left + cw], (zoom_factor, zoom_factor, 1), order=1)
    trim_top, trim_left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[trim_top:trim_top + h, trim_left:trim_left + w]


@lru_cache(maxsize=None)
def _frost_texture(index: int, scale: float) -> np.ndarray:
    """Frost texture ``index`` (0-5) of the imagecorruptions package as RGB uint8, resized by ``scale``."""
    name = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")[index]
    with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as path:
        texture = cv2.imread(str(path))
    if scale != 1.0:
        texture = cv2.resize(texture, (0, 0), fx=scale, fy=scale)
    return texture[..., ::-1]  # BGR -> RGB


def _gaussian_noise(x, c, rng):
    x = x / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def _shot_noise(x, c, rng):
    x = x / 255.0
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def _impulse_noise(x, c, rng):
    x = random_noise(x / 255.0, mode="s&p", rng=int(rng.randint(2**31 - 1)), amount=c)
    return np.clip(x, 0, 1) * 255


def _speckle_noise(x, c, rng):
    x = x / 255.0
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1) * 255


def _gaussian_blur(x, c, rng):
    return np.clip(gaussian(x / 255.0, sigma=c, channel_axis=-1), 0, 1) * 255


def _glass_blur(x, c, rng):
    sigma, max_delta, iterations = c
    x = np.uint8(gaussian(x / 255.0, sigma=sigma, channel_axis=-1) * 255)
    x = _shuffle_pixels_njit_glass_blur(x.shape[0], x.shape[1], x, c, int(rng.randint(2**31 - 1)))
    return np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255


def _defocus_blur(x, c, rng):
    kernel = disk(radius=c[0], alias_blur=c[1])
    x = x / 255.0
    channels = np.stack([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)], axis=-1)
    return np.clip(channels, 0, 1) * 255


def _motion_blur(x, c, rng):
    return np.clip(_shifted_motion_blur(x, radius=c[0], sigma=c[1], angle=rng.uniform(-45, 45)), 0, 255)


def _zoom_blur(x, c, rng):
    x = (x / 255.0).astype(np.float32)
    factors = np.arange(1, c[0], c[1])
    out = np.zeros_like(x)
    for factor in factors:
        out += _clipped_zoom(x, factor)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def _snow(x, c, rng):
    x = np.asarray(x, dtype=np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    # The official snow layer goes through ImageMagick as an 8-bit image: quantize before and after the blur.
    layer = (np.clip(layer.squeeze(-1), 0, 1) * 255).astype(np.uint8)
    layer = _shifted_motion_blur(layer, radius=c[4], sigma=c[5], angle=rng.uniform(-135, -45))
    layer = (np.round(np.clip(layer, 0, 255)) / 255.0)[..., np.newaxis]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., np.newaxis]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _frost(x, c, rng, texture_scale):
    # The official generators draw from the first five textures only (randint(5)); kept for fidelity.
    texture = _frost_texture(int(rng.randint(5)), texture_scale)
    h, w = x.shape[:2]
    if texture.shape[0] <= h or texture.shape[1] <= w:  # only for images larger than the textures (not 32 / 224 px)
        grow = 1.1 * max(h / texture.shape[0], w / texture.shape[1])
        texture = cv2.resize(np.ascontiguousarray(texture), (0, 0), fx=grow, fy=grow, interpolation=cv2.INTER_CUBIC)
    top, left = rng.randint(0, texture.shape[0] - h), rng.randint(0, texture.shape[1] - w)
    return np.clip(c[0] * np.asarray(x, dtype=np.float64) + c[1] * texture[top:top + h, left:left + w], 0, 255)


def _fog(x, c, rng):
    h, w = x.shape[:2]
    x = x / 255.0
    max_val = x.max()
    map_size = 1 << (max(h, w) - 1).bit_length()
    with _global_numpy_rng(rng):
        fractal = plasma_fractal(mapsize=map_size, wibbledecay=c[1])
    x = x + c[0] * fractal[:h, :w][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def _brightness(x, c, rng):
    x = sk_color.rgb2hsv(x / 255.0)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(sk_color.hsv2rgb(x), 0, 1) * 255


def _contrast(x, c, rng):
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _saturate(x, c, rng):
    x = sk_color.rgb2hsv(x / 255.0)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(sk_color.hsv2rgb(x), 0, 1) * 255


def _jpeg_compression(x, c, rng):
    buffer = BytesIO()
    Image.fromarray(x).save(buffer, "JPEG", quality=c)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _pixelate(x, c, rng):
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((int(w * c), int(h * c)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def _elastic_transform(x, c, rng):
    alpha, sigma, affine_max = c
    image = np.asarray(x, dtype=np.float32) / 255.0
    shape = image.shape
    # random affine: move three points around the centre by up to affine_max pixels
    center = np.float32(shape[:2]) // 2
    square = min(shape[:2]) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    pts2 = pts1 + rng.uniform(-affine_max, affine_max, size=pts1.shape).astype(np.float32)
    image = cv2.warpAffine(image, cv2.getAffineTransform(pts1, pts2), shape[1::-1], borderMode=cv2.BORDER_REFLECT_101)
    # elastic: a smoothed random displacement field scaled by alpha
    dx = (gaussian(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    xx, yy, zz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (np.reshape(yy + dy[..., None], (-1, 1)), np.reshape(xx + dx[..., None], (-1, 1)),
               np.reshape(zz, (-1, 1)))
    return np.clip(map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255


def _spatter(x, c, rng):
    x = np.asarray(x, dtype=np.float32) / 255.0
    liquid = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    liquid = gaussian(liquid, sigma=c[2])
    liquid[liquid < c[3]] = 0
    if c[5] == 0:  # water: pale turquoise drops with shaded rims
        liquid = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= c[4]
        water = np.concatenate([v / 255.0 * np.ones_like(m[..., :1]) for v in (175, 238, 238)], axis=2)
        water = cv2.cvtColor(water, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + m * water, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    # mud: opaque brown blobs
    m = gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), sigma=c[4])
    m[m < 0.8] = 0
    mud = np.concatenate([v / 255.0 * np.ones_like(x[..., :1]) for v in (63, 42, 20)], axis=2) * m[..., np.newaxis]
    return np.clip(x * (1 - m[..., np.newaxis]) + mud, 0, 1) * 255


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion_blur, "zoom_blur": _zoom_blur,
    "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness, "contrast": _contrast,
    "elastic_transform": _elastic_transform, "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
    "speckle_noise": _speckle_noise, "gaussian_blur": _gaussian_blur, "spatter": _spatter, "saturate": _saturate,
}


def corrupt(
        image: np.ndarray,
        *,
        corruption: str,
        severity: int,
        preset: Optional[str] = None,
        rng: Optional[np.random.RandomState] = None,
) -> np.ndarray:
    """Apply one corruption at one severity to a uint8 HxWx3 image; returns uint8 HxWx3.

    Args:
        corruption: one of ``CORRUPTIONS``.
        severity: 1 (mild) to 5 (strong).
        preset: "cifar" or "imagenet" parameters; None picks by image size (``preset_for_size``).
        rng: the random state to draw from (a fixed seed gives a fixed output); None draws a fresh one.
    """
    if corruption not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    preset = preset or preset_for_size(*image.shape[:2])
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    rng = rng if rng is not None else np.random.RandomState()
    params = PRESETS[preset]
    c = params[corruption][severity - 1]
    if corruption == "frost":
        out = _frost(image, c, rng, params["frost_texture_scale"])
    else:
        out = _FUNCTIONS[corruption](image, c, rng)
    # Truncation (not rounding) as in the official generators' np.uint8(...).
    return np.uint8(np.clip(out, 0, 255))
