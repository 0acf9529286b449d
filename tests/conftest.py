"""Shared fixtures: small real subsets of ../shared/data (override the folder with TIMM_FCL_DATA)."""
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

# the shared data folder: $TIMM_FCL_DATA, else shared/data beside the repository (the checkout layout)
DATA_DIR = Path(os.environ.get("TIMM_FCL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# Every family the project claims, small enough for a CPU test at 32 px (28 px grey for the LeNet).
FAMILIES = {
    "resnet18": dict(),
    "resnetv2_18": dict(),
    "vit_tiny_patch16_224": dict(img_size=32),
    "convnext_atto": dict(),
    "efficientnet_b0": dict(),
    "mobilenetv3_small_100": dict(),
    "swin_tiny_patch4_window7_224": dict(img_size=32, window_size=4, embed_dim=32, depths=(1, 1), num_heads=(1, 2)),
    "deit_tiny_distilled_patch16_224": dict(img_size=32),
    "lenet_mnist": dict(),
    "lenet5_mnist": dict(),
}


def create(name, num_classes=10, **extra):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=num_classes, **FAMILIES[name], **extra)


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores for torch: two workers of torch's default (every
    core each) oversubscribe the machine, and OpenMP threads that wait for each other ran the in-process training tests
    three times slower. The processes the tests start get OMP_NUM_THREADS=1 of their own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set TIMM_FCL_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA_DIR)


def _class_coloured(n: int, channels: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images whose colour (or grey level) depends on the class, plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    base = torch.rand(10, channels, 1, 1, generator=g)[y]
    x = (base + 0.25 * torch.randn(n, channels, size, size, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="session")
def cifar_like():
    """64 fake CIFAR images, float [64, 3, 32, 32] in [0, 1], and labels: for the algorithm's tests, no data set."""
    return _class_coloured(64, 3, 32, seed=0)


@pytest.fixture(scope="session")
def mnist_like():
    """64 fake MNIST images, float [64, 1, 28, 28] in [0, 1], and labels."""
    return _class_coloured(64, 1, 28, seed=1)


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    """Toy WebDataset shards (train 192, validation 64 images of 16 px, 10 classes) for training runs."""
    from train_helpers import make_shards
    return make_shards(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def cifar_test_shard() -> Path:
    """The first CIFAR-10 test shard (its images are in class order)."""
    return _need(DATA_DIR / "cifar10-wds" / "cifar10-test-000000.tar.gz")


@pytest.fixture(scope="session")
def cifar_subset():
    """The first 64 images of the first CIFAR-10 train shard: float [64, 3, 32, 32] in [0, 1] and labels."""
    from PIL import Image
    shard = _need(DATA_DIR / "cifar10-wds" / "cifar10-train-000000.tar.gz")
    images, labels = {}, {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, ext = member.name.rsplit(".", 1)
            data = tar.extractfile(member).read()
            if ext == "png":
                images[key] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            elif ext == "cls":
                labels[key] = int(data)
            if len(labels) >= 64 and len(images) >= 64 and set(labels) <= set(images):
                break
    keys = sorted(set(images) & set(labels))[:64]
    x = torch.from_numpy(np.stack([images[k] for k in keys])).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor([labels[k] for k in keys])


@pytest.fixture(scope="session")
def mnist_subset():
    """The first 64 MNIST training images: float [64, 1, 28, 28] in [0, 1] and labels."""
    raw = _need(DATA_DIR / "MNIST" / "raw")
    images = np.fromfile(raw / "train-images-idx3-ubyte", dtype=np.uint8, count=64 * 784, offset=16)
    labels = np.fromfile(raw / "train-labels-idx1-ubyte", dtype=np.uint8, count=64, offset=8)
    x = torch.from_numpy(images.reshape(64, 1, 28, 28).copy()).float() / 255
    return x, torch.from_numpy(labels.astype(np.int64))


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding MNIST/raw in torchvision's layout (what torchvision.datasets.MNIST(root) reads)."""
    _need(DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte")
    return DATA_DIR


@pytest.fixture(scope="session")
def synthetic_mnist(mnist_root):
    """The three synthetic MNIST splits of section 4.1 (seed 0), built once a session (~5 s)."""
    from timm_fcl.data.synthetic_mnist import build_synthetic_mnist
    return build_synthetic_mnist(mnist_root, seed=0)


@pytest.fixture
def fresh_accelerate():
    """Accelerate's process-wide state reset before and after a test that builds an Accelerator in-process."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
