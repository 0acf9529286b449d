"""train_fcl.py --crop-pad: CIFAR's pad + random crop + flip, checked on a planted image."""
import numpy as np
import torch
from PIL import Image

from timm_fcl.training.build import build_transforms, pad_crop_transform
from train_fcl import parse_args

CONFIG = {"input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def planted() -> np.ndarray:
    """32x32 RGB with every pixel distinct and none black, so a crop's place and a flip are unambiguous."""
    rng = np.random.default_rng(0)
    return rng.integers(1, 256, size=(32, 32, 3), dtype=np.uint8)


def where_cropped(out: np.ndarray, image: np.ndarray, pad: int):
    """(dy, dx, flipped) such that ``out`` is the zero-padded image's 32x32 window at (pad + dy, pad + dx)."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    found = []
    for flipped in (False, True):
        view = out[:, ::-1] if flipped else out
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                if np.array_equal(padded[pad + dy:pad + dy + 32, pad + dx:pad + dx + 32], view):
                    found.append((dy, dx, flipped))
    return found


def test_pads_by_4_crops_32_and_flips():
    image = planted()
    tf = pad_crop_transform(CONFIG, pad=4, hflip=0.5)
    seen = []
    torch.manual_seed(0)
    for _ in range(300):
        out = tf(Image.fromarray(image))
        assert out.shape == (3, 32, 32)
        pixels = np.rint(out.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        found = where_cropped(pixels, image, pad=4)
        assert len(found) == 1, "the output is not one window of the zero-padded image, flipped or not"
        seen.append(found[0])
    dys, dxs, flips = zip(*seen)
    assert {min(dys), max(dys), min(dxs), max(dxs)} == {-4, 4}, "the crop never reached the padding's edge"
    assert 0.35 < np.mean(flips) < 0.65
    assert len(set(seen)) > 100  # 81 places x 2 flips, drawn uniformly


def test_flag_replaces_the_random_resized_crop_and_keeps_patch_gaussian():
    from timm_fcl import PatchGaussian
    from torchvision import transforms

    args = parse_args(["--data-dir", "x", "--crop-pad", "4", "--patch-gaussian"])
    train_tf, _ = build_transforms(args, dict(CONFIG, crop_pct=1.0, interpolation="bilinear"))
    kinds = [type(t) for t in train_tf.transforms]
    assert kinds == [transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.ToTensor, PatchGaussian,
                     transforms.Normalize]
    assert train_tf.transforms[0].padding == 4
    default_tf, _ = build_transforms(parse_args(["--data-dir", "x"]), dict(CONFIG, crop_pct=1.0,
                                                                           interpolation="bilinear"))
    assert not any(isinstance(t, transforms.RandomCrop) for t in default_tf.transforms)
