"""The training transform for a timm recipe's augmentation flags is timm's train.py's: the transform train.py's
create_loader call builds (on the CPU path, --no-prefetcher) and train_fcl.py's are the same pipeline and give the
same tensor from the same image and seeds."""
from __future__ import annotations

import argparse
import functools
import random

import numpy as np
import pytest
import torch
from PIL import Image

import timm_fcl  # noqa: F401

# timm train.py's augmentation flags with its own defaults (timm 1.0.31), the reference train_fcl.py is held to
TIMM_AUG_FLAGS = {
    "--no-aug": dict(action="store_true"), "--train-crop-mode": dict(default=None),
    "--scale": dict(type=float, nargs="+", default=[0.08, 1.0]),
    "--ratio": dict(type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0]),
    "--hflip": dict(type=float, default=0.5), "--vflip": dict(type=float, default=0.0),
    "--color-jitter": dict(type=float, default=0.4), "--color-jitter-prob": dict(type=float, default=None),
    "--grayscale-prob": dict(type=float, default=None), "--gaussian-blur-prob": dict(type=float, default=None),
    "--aa": dict(default=None), "--aug-splits": dict(type=int, default=0), "--reprob": dict(type=float, default=0.0),
    "--remode": dict(default="pixel"), "--recount": dict(type=int, default=1), "--resplit": dict(action="store_true"),
    "--train-interpolation": dict(default="random"),
}

RECIPES = [
    [],
    ["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--remode", "pixel", "--train-interpolation", "random"],
    ["--aa", "rand-m7-mstd0.5", "--reprob", "0.5", "--remode", "const", "--recount", "2", "--scale", "0.35", "1.0",
     "--ratio", "0.5", "2.0", "--hflip", "0.3", "--vflip", "0.2", "--color-jitter", "0.3",
     "--train-interpolation", "bilinear"],
    ["--aa", "augmix-m3-w3", "--aug-splits", "3", "--reprob", "0.4", "--resplit", "--train-interpolation", "bicubic"],
    ["--no-aug"],
    ["--color-jitter-prob", "0.8", "--grayscale-prob", "0.2", "--gaussian-blur-prob", "0.1", "--aa", "",
     "--train-interpolation", ""],
    ["--train-crop-mode", "rkrr", "--scale", "0.5", "1.0"],
]


class _Images(torch.utils.data.Dataset):
    transform = None

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        return self.transform(Image.new("RGB", (8, 8))), 0


def timms_train_transform(argv: list[str], data_config: dict):
    """The transform timm's train.py gets from create_loader for these flags (CPU path: use_prefetcher=False)."""
    from timm.data import create_loader

    parser = argparse.ArgumentParser()
    for flag, kw in TIMM_AUG_FLAGS.items():
        parser.add_argument(flag, **kw)
    args = parser.parse_args(argv)
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config["interpolation"]
    dataset = _Images()
    create_loader(
        dataset, input_size=data_config["input_size"], batch_size=1, is_training=True, no_aug=args.no_aug,
        re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
        color_jitter=args.color_jitter, color_jitter_prob=args.color_jitter_prob, grayscale_prob=args.grayscale_prob,
        gaussian_blur_prob=args.gaussian_blur_prob, auto_augment=args.aa, num_aug_splits=args.aug_splits,
        interpolation=train_interpolation, mean=data_config["mean"], std=data_config["std"], num_workers=0,
        use_prefetcher=False, device=torch.device("cpu"), persistent_workers=False)
    return dataset.transform


def ours(argv: list[str], data_config: dict):
    from timm_fcl.training.build import build_transforms
    from train_fcl import parse_args

    return build_transforms(parse_args(["--model", "resnet18", *argv]), data_config)[0]


def _augmix_views(dataset, image) -> tuple:
    """timm AugMixDataset's views of one image: the clean one, then the augmented ones."""
    x = dataset.dataset.transform(image)
    return (dataset._normalize(x),) + tuple(dataset._normalize(dataset.augmentation(x))
                                            for _ in range(dataset.num_splits - 1))


def _seeded(fn, seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn()


@pytest.fixture(scope="module")
def data_config() -> dict:
    import timm
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=timm.create_model("resnet18", pretrained=False, num_classes=10))


@pytest.mark.parametrize("argv", RECIPES, ids=lambda a: " ".join(a) or "defaults")
def test_the_training_transform_is_timms_for_the_same_flags(argv, data_config):
    theirs, mine = timms_train_transform(argv, data_config), ours(argv, data_config)
    if "--aug-splits" in argv:  # timm's (primary, secondary, final) stages, as AugMixDataset takes them
        from timm.data import AugMixDataset

        views = mine.views
        assert [repr(views.dataset.transform), repr(views.augmentation), repr(views.normalize)] == \
            [repr(s) for s in theirs]
        reference = AugMixDataset(_Images(), num_splits=int(argv[argv.index("--aug-splits") + 1]))
        reference.transform = theirs
        theirs = functools.partial(_augmix_views, reference)
    else:
        assert repr(mine) == repr(theirs)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))
    for seed in range(4):
        a, b = _seeded(lambda: theirs(image), seed), _seeded(lambda: mine(image), seed)
        a, b = (a, b) if torch.is_tensor(a) else (torch.stack(list(a)), torch.stack(list(b)))
        assert torch.equal(a, b), f"seed {seed}: the two transforms gave different tensors"


def test_the_flags_change_the_transform(data_config):
    """The comparison can fail: train_fcl.py's transform follows each flag (a default would not match the recipes)."""
    base = repr(ours([], data_config))
    for argv in (["--reprob", "0.25", "--remode", "const"], ["--vflip", "0.5"], ["--train-interpolation", "bilinear"],
                 ["--reprob", "0.25", "--recount", "3"]):
        assert repr(ours(argv, data_config)) != base, argv
    assert "RandomErasing(p=0.25, mode=pixel" in repr(ours(["--reprob", "0.25"], data_config))
