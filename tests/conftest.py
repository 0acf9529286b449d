"""Shared fixtures: the real MNIST from ../shared/data (or $TIMM_FCL_DATA), and synthetic MNIST built once a session."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = Path(os.environ.get("TIMM_FCL_DATA", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not found under {root}/MNIST/raw (set TIMM_FCL_DATA to a folder holding MNIST/raw)")
    return root


@pytest.fixture(scope="session")
def synthetic_mnist(mnist_root):
    from timm_fcl.synthetic_mnist import build_synthetic_mnist

    return build_synthetic_mnist(mnist_root, seed=0)
