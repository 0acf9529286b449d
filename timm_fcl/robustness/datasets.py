"""Test sets for robustness evaluation (paper sections 4.2.1-4.2.2): clean images, the released corruption benchmarks
in their official layouts, and corruption suites generated from any clean test set and cached on disk.

- CIFAR-10-C / CIFAR-100-C: ``<corruption>.npy`` uint8 (50000, 32, 32, 3) = severities 1..5 x 10000 images in order,
  plus ``labels.npy`` (50000,) with the labels repeated per severity.
- ImageNet-C: ``<corruption>/<severity>/<wnid>/*.JPEG``, 224 px, read as is (no resize or crop). Class indices follow
  the sorted wnid folders, or a class map (timm's: a .txt with one wnid per line, or a dict).
- generated: the 19 corruptions of ``timm_fcl.robustness.corruptions`` applied to a clean set and written in the
  CIFAR-C layout, under a folder named by a hash of the clean images, labels, preset and seed, so a rerun only reads
  it back.
  Each image gets its own seed (base seed, corruption, severity, index): results do not depend on order or workers.
"""
import hashlib
import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, PILToTensor
from torchvision.transforms import functional as TF

from ..data import shard_hint
from ..run.progress import done_lines, note_done, progress_bar
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt

GENERATOR_VERSION = 1  # bump when a corruption's output changes, so old caches are not reused
CorruptionSet = Tuple[str, int, Dataset]  # (corruption, severity, dataset of (image, label))


class ArrayDataset(Dataset):
    """(image, label) pairs from an array: uint8 NHWC images become uint8 CHW tensors, float NCHW pass through."""

    def __init__(self, images: Union[np.ndarray, torch.Tensor], labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.array(image).transpose(2, 0, 1))  # a copy: memory-mapped arrays are read-only
        return image, int(self.labels[index])

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive (images, int64 labels) batches sliced from the arrays: what a DataLoader over this dataset
        yields, without indexing and collating image by image, or worker processes that would only copy."""
        for start in range(0, len(self), batch_size):
            images = self.images[start:start + batch_size]
            if isinstance(images, np.ndarray):
                images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            yield images, torch.as_tensor(np.asarray(self.labels[start:start + batch_size]), dtype=torch.long)


def fit_to_size(image: Image.Image, *, size: int, crop_pct: float, interpolation: str = "bilinear") -> Image.Image:
    """Bring a larger clean image to ``size`` as timm's eval transform does (resize to size / crop_pct, centre crop),
    as the official generators did before corrupting (Resize(256), CenterCrop(224)); never upsample."""
    if image.size == (size, size) or min(image.size) <= size:
        return image
    image = TF.resize(image, int(size / crop_pct), interpolation=InterpolationMode(interpolation))
    return TF.center_crop(image, size)


def iter_clean_images(
        *,
        dataset: str,
        root: str,
        split: str = "test",
        max_samples: Optional[int] = None,
        seed: int = 0,
        size: Optional[int] = None,
        crop_pct: float = 0.875,
        interpolation: str = "bilinear",
        class_map: Optional[Dict[str, int]] = None,
        unreadable: Optional[List[str]] = None,
) -> Iterator[Tuple[np.ndarray, int]]:
    """Stream a clean set with timm's readers as (uint8 HxWx3 image, label).

    An image file that cannot be decoded is left out, never replaced (timm's dataset would quietly give its neighbour
    instead): its name goes to ``unreadable`` and the count to the closing line.

    ``dataset`` and ``split`` are timm's (``"wds/cifar10"``, ``""`` for an image folder, ...). ``max_samples`` keeps a
    seeded random subset, in data set order (test sets are often ordered by class). Images larger than ``size`` are
    resized and centre-cropped to it (``fit_to_size``). ``class_map`` (class name -> index) replaces the sorted
    folder names of an image folder, every one of which it must name (timm would drop the others' images silently).
    """
    import timm.data

    if not Path(root).exists():
        raise FileNotFoundError(f"clean data folder {root} does not exist")
    try:
        data = timm.data.create_dataset(dataset, root=root, split=split, is_training=False, batch_size=1,
                                        class_map=class_map)
    except RuntimeError as exn:  # e.g. timm's 'Found 0 images in subfolders' of a shard folder read as images
        hint = shard_hint(root) if not dataset or dataset == "folder" else ""
        if not hint:
            raise
        raise ValueError(f"cannot read {root} as an image folder{hint}") from None
    folder = getattr(getattr(data, "reader", None), "root", None)  # the folder timm's image-folder reader walks
    if class_map is not None and folder is not None and Path(folder).is_dir():
        check_classes(folder, folder_classes(folder), class_map)
    keep = None
    if max_samples is not None and max_samples < len(data):
        keep = set(np.random.RandomState(seed).choice(len(data), max_samples, replace=False).tolist())
    desc, kept, left_out = f"reading {dataset or root} {split}", 0, []
    for index, (image, label) in enumerate(progress_bar(_decoded(data, left_out), desc=desc, leave=False)):
        if keep is not None and index not in keep or image is None:
            continue
        image = image.convert("RGB")
        if size is not None:
            image = fit_to_size(image, size=size, crop_pct=crop_pct, interpolation=interpolation)
        kept += 1
        yield np.asarray(image), int(label)
    if left_out:
        print(f"{desc}: {len(left_out)} image(s) cannot be decoded and are left out, e.g. {left_out[0]}",
              file=sys.stderr)
    if unreadable is not None:
        unreadable.extend(left_out)
    note_done(f"{desc}: {kept} images done" + (f", {len(left_out)} undecodable left out" if left_out else ""))


def _decoded(data, left_out: List[str]) -> Iterator[tuple]:
    """(PIL image, label) of each item of a timm dataset in order; for a map-style image dataset (an image folder)
    each file is decoded here, and one that fails gives (None, label) with its name in ``left_out``."""
    reader = getattr(data, "reader", None)
    if isinstance(data, torch.utils.data.IterableDataset) or reader is None or not hasattr(reader, "filename"):
        yield from data
        return
    for index in range(len(data)):
        item, label, *_ = reader[index]
        try:
            image = Image.open(item)
            image.load()
        except (OSError, ValueError, SyntaxError):  # PIL's errors for truncated and corrupt files
            left_out.append(str(reader.filename(index)))
            image = None
        yield image, (-1 if label is None else label)


def folder_classes(folder: Union[str, Path]) -> List[str]:
    """The class folder names of an image folder (``<class>/*.JPEG``), sorted."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir())


def check_classes(where: Union[str, Path], classes: Sequence[str], class_map: Dict[str, int]) -> None:
    """Refuse class folders the class map does not name: timm would skip their images without a word."""
    unknown = [c for c in classes if c not in class_map]
    if unknown:
        raise ValueError(f"{where}: class folder(s) {', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''} "
                         f"not in the class map ({len(unknown)} of {len(classes)})")


def check_labels(labels: Union[np.ndarray, Sequence[int]], num_classes: Optional[int], where: str) -> None:
    """Refuse labels outside [0, num_classes): the model would score those images as wrong, without a word."""
    labels = np.asarray(labels)
    if num_classes is None or not labels.size:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"{where}: label {labels[first]} (at index {first}; {int(bad.sum())} of {labels.size} are) is "
                         f"outside [0, {num_classes}), the model's classes")


def read_class_map(path: Union[str, Path]) -> Dict[str, int]:
    """A class map file (timm's: .txt with one class name per line, or .pkl of a dict) as {name: index}."""
    from timm.data.readers.class_map import load_class_map

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--class-map {path} does not exist")
    if path.suffix.lower() not in (".txt", ".pkl"):
        raise ValueError(f"--class-map {path}: expected a .txt (one class name per line) or a .pkl file")
    return load_class_map(str(path))


def load_clean_images(**kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """A clean set (arguments of ``iter_clean_images``) as uint8 (N, H, W, 3) images and int64 labels."""
    pairs = list(iter_clean_images(**kwargs))
    if not pairs:
        raise ValueError(f"no images found in {kwargs.get('root')} (dataset {kwargs.get('dataset')!r})")
    shapes = {image.shape for image, _ in pairs}
    if len(shapes) > 1:
        raise ValueError(f"clean images have different sizes {sorted(shapes)[:3]}...; pass an image size to crop to")
    return np.stack([image for image, _ in pairs]), np.asarray([label for _, label in pairs], dtype=np.int64)


def cifar_c_sets(
        root: Union[str, Path],
        *,
        corruptions: Optional[Sequence[str]] = None,
        severities: Sequence[int] = SEVERITIES,
        num_classes: Optional[int] = None,
) -> List[CorruptionSet]:
    """The (corruption, severity) sets of a CIFAR-10-C / CIFAR-100-C folder (memory-mapped, nothing copied).

    ``corruptions=None`` takes every one of the 19 whose ``.npy`` is present (at least one must be). With
    ``num_classes``, a label of labels.npy outside [0, num_classes) is refused.
    """
    root = Path(root)
    if not (root / "labels.npy").is_file():
        raise FileNotFoundError(f"{root} is not a CIFAR-C folder: labels.npy is missing")
    labels = np.load(root / "labels.npy")
    check_labels(labels, num_classes, str(root / "labels.npy"))
    if corruptions is None:
        corruptions = [c for c in CORRUPTIONS if (root / f"{c}.npy").is_file()]
        if not corruptions:
            raise FileNotFoundError(f"no <corruption>.npy files in {root} (expected e.g. gaussian_noise.npy)")
    sets = []
    for name in corruptions:
        path = root / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        images = np.load(path, mmap_mode="r")
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(f"{path}: expected uint8 (5 * N, H, W, 3) matching labels.npy ({len(labels)}), "
                             f"got {images.dtype} {images.shape}")
        if len(images) % 5:
            raise ValueError(f"{path}: {len(images)} images is not 5 severities x N")
        n = len(images) // 5
        for severity in severities:
            part = slice((severity - 1) * n, severity * n)
            sets.append((name, severity, ArrayDataset(images[part], labels[part])))
    return sets


def imagenet_c_sets(
        root: Union[str, Path],
        *,
        corruptions: Optional[Sequence[str]] = None,
        severities: Sequence[int] = SEVERITIES,
        class_map: Union[str, Dict[str, int], None] = None,
        num_classes: Optional[int] = None,
) -> List[CorruptionSet]:
    """The (corruption, severity) sets of an ImageNet-C tree ``<corruption>/<severity>/<wnid>/*.JPEG``, unresized.

    ``corruptions=None`` takes every one of the 19 with a folder. Every set must hold the same wnid folders (a set
    missing one would shift the indices of the others); without ``class_map`` the class index is the wnid's position
    among them, sorted. ``class_map`` (a dict, or a file for ``read_class_map``) must name every wnid. With
    ``num_classes``, a class index outside [0, num_classes) is refused.
    """
    import timm.data

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet-C folder {root} does not exist")
    if corruptions is None:
        corruptions = [c for c in CORRUPTIONS if (root / c).is_dir()]
        if not corruptions:
            raise FileNotFoundError(f"no <corruption>/ folders in {root} (expected e.g. gaussian_noise/1/<wnid>/)")
    folders = [(name, severity, root / name / str(severity)) for name in corruptions for severity in severities]
    missing = [str(f) for _, _, f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing")
    wnids = folder_classes(folders[0][2])
    for _, _, folder in folders[1:]:
        other = folder_classes(folder)
        if other != wnids:
            diff = [f"lacks {sorted(set(wnids) - set(other))[:3]}", f"adds {sorted(set(other) - set(wnids))[:3]}"]
            raise ValueError(f"ImageNet-C sets disagree on their classes: {folder} "
                             f"{' and '.join(d for d in diff if not d.endswith('[]'))} compared with {folders[0][2]}")
    where = f"--class-map {class_map}" if isinstance(class_map, (str, Path)) else f"the class map of {root}"
    if isinstance(class_map, (str, Path)):
        class_map = read_class_map(class_map)
    if class_map is None:
        class_map, where = {w: i for i, w in enumerate(wnids)}, f"{root} (its sorted wnid folders)"
    check_classes(root, wnids, class_map)
    check_labels([class_map[w] for w in wnids], num_classes, where)
    sets = []
    for name, severity, folder in folders:
        data = timm.data.create_dataset("", root=str(folder), class_map=class_map)
        data.transform = PILToTensor()
        sets.append((name, severity, data))
    return sets


def _image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, CORRUPTIONS.index(corruption), severity, index]).generate_state(1)[0])


def _corrupt_block(images: np.ndarray, corruption: str, severity: int, preset: Optional[str], seed: int) -> np.ndarray:
    return np.stack([
        corrupt(image, corruption=corruption, severity=severity, preset=preset,
                rng=np.random.RandomState(_image_seed(seed, corruption, severity, index)))
        for index, image in enumerate(images)])


def generated_suite_dir(
        images: np.ndarray,
        labels: np.ndarray,
        *,
        cache_dir: Union[str, Path],
        preset: Optional[str] = None,
        seed: int = 0,
        corruptions: Sequence[str] = CORRUPTIONS,
        workers: int = 0,
) -> Path:
    """Write (or find) the corrupted versions of ``images`` in the CIFAR-C layout; returns the folder for
    ``cifar_c_sets``. ``preset`` None picks the parameters by image size; ``workers`` > 0 uses that many processes.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    digest = hashlib.sha256()
    for part in (np.ascontiguousarray(images).tobytes(), np.asarray(labels, np.int64).tobytes(),
                 f"{preset}|{seed}|{GENERATOR_VERSION}".encode()):
        digest.update(part)
    folder = Path(cache_dir) / f"{preset or 'auto'}-seed{seed}-n{len(images)}-{digest.hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "labels.npy").exists():
        np.save(folder / "labels.tmp.npy", np.tile(np.asarray(labels, np.int64), len(SEVERITIES)))
        os.replace(folder / "labels.tmp.npy", folder / "labels.npy")
        (folder / "meta.json").write_text(json.dumps(
            {"preset": preset, "seed": seed, "num_images": len(images), "version": GENERATOR_VERSION}))
    todo = [c for c in corruptions if not (folder / f"{c}.npy").exists()]
    pool = multiprocessing.Pool(workers, initializer=_end_with_parent) if workers > 0 and todo else None
    finished = False
    try:
        for name in done_lines(todo, "generating corruptions", leave=False):
            jobs = [(images, name, severity, preset, seed) for severity in SEVERITIES]
            blocks = pool.starmap(_corrupt_block, jobs) if pool else [_corrupt_block(*j) for j in jobs]
            np.save(folder / f"{name}.tmp.npy", np.concatenate(blocks))
            os.replace(folder / f"{name}.tmp.npy", folder / f"{name}.npy")  # atomic: a killed run leaves no half file
        finished = True
    finally:
        if pool and finished:
            pool.close()
        elif pool:  # stopped (SIGTERM, Ctrl-C, an error): the workers' blocks are of no use, end them now
            pool.terminate()
        if pool:
            pool.join()
    return folder


def _end_with_parent() -> None:
    """A generation worker gets SIGTERM when the evaluation that started it dies, however it dies (Linux; elsewhere
    the evaluation's own ending ends them)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
