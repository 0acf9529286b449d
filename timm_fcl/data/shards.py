"""Write WebDataset shards and the `_info.json` timm's and timm_fcl's readers expect, from an image folder or a
torchvision data set, so that `train_fcl.py --dataset wds/NAME --data-dir OUT` can stream them.

    python -m timm_fcl.shards --source folder --root IMAGES --split train --output OUT --name mydata
    python -m timm_fcl.shards --source torch/mnist --root ../shared/data --split train --output OUT --name mnist
    python -m timm_fcl.shards --source synthetic-mnist --root ../shared/data --split train,val,test \
        --output OUT --name synthetic_mnist        # the paper's section 4.1 set (timm_fcl.data.synthetic_mnist)

Each sample is `<key>.<ext>` (the image: a folder's files keep their bytes, torchvision images are stored as
lossless PNG) and `<key>.cls` (the class index as text). Shards are `NAME-SPLIT-000000.tar`, the training split
shuffled with a fixed seed (so any shard is a fair sample); `_info.json` gains the split's `num_samples`,
`filenames` and `shard_lengths` next to the other splits already written there.
"""
from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from ..run.atomic import atomic_write_text
from ..run.cli import OneLineParser, UsageError


def write_shards(samples: Iterable[tuple[bytes, str, int]], *, output: str | os.PathLike, name: str, split: str,
                 shard_size: int, num_classes: Optional[int], class_names: Optional[Sequence[str]] = None) -> dict:
    """Write (image bytes, extension, label) samples to tar shards and record the split in output/_info.json."""
    import webdataset as wds

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    pattern = str(output / f"{name}-{split}-%06d.tar")
    lengths: list[int] = []
    # only maxcount may start a new shard (the lengths below count by it), so no byte limit
    with wds.ShardWriter(pattern, maxcount=shard_size, maxsize=float("inf"), verbose=0) as sink:
        for i, (data, ext, label) in enumerate(samples):
            if i % shard_size == 0:
                lengths.append(0)
            sink.write({"__key__": f"{split}-{i:08d}", ext: data, "cls": str(int(label)).encode()})
            lengths[-1] += 1
    filenames = [Path(pattern % k).name for k in range(len(lengths))]
    info_path = output / "_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["name"] = name
    if num_classes:
        info["num_classes"] = num_classes
    if class_names:
        info["class_names"] = list(class_names)
    info.setdefault("splits", {})[split] = {"name": split, "num_samples": sum(lengths), "filenames": filenames,
                                            "shard_lengths": lengths}
    atomic_write_text(info_path, json.dumps(info, indent=2))
    return info


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _folder_samples(dataset, order: np.ndarray):
    """Image-folder samples with their original bytes (no re-encoding)."""
    reader = dataset.reader
    for i in order:
        path, label = reader.samples[i]
        ext = Path(path).suffix.lower().lstrip(".") or "jpg"
        yield Path(path).read_bytes(), "jpeg" if ext == "jpeg" else ext, int(label)


def _pil_samples(dataset, order: np.ndarray):
    for i in order:
        img, label = dataset[int(i)]
        yield _png(img), "png", int(label)


class _SyntheticPIL:
    """A synthetic MNIST split as (PIL grey image, label) pairs."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        from PIL import Image
        return Image.fromarray(self.split.images[index, 0].numpy(), mode="L"), int(self.split.labels[index])


def _open(args, split: str):
    from timm.data import create_dataset

    try:
        dataset = create_dataset("" if args.source == "folder" else args.source, root=args.root, split=split,
                                 search_split=True, download=args.download)
    except (RuntimeError, FileNotFoundError, ValueError) as exn:
        raise UsageError(f"cannot read {args.source} split {split} from {args.root}: {exn}") from None
    if args.source == "folder":
        class_to_idx = dataset.reader.class_to_idx
        return dataset, sorted(class_to_idx, key=class_to_idx.get)
    return dataset, list(getattr(dataset, "classes", []) or [])


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Write WebDataset shards + _info.json for train_fcl.py")
    parser.add_argument("--source", required=True, help="'folder' (class subfolders), torch/NAME (torchvision) "
                        "or synthetic-mnist (section 4.1; splits train, val, test)")
    parser.add_argument("--root", required=True, help="image folder, or torchvision / MNIST root")
    parser.add_argument("--split", default="train", help="split name, or several separated by commas")
    parser.add_argument("--output", required=True, help="shard folder (gets _info.json)")
    parser.add_argument("--name", required=True, help="data set name (shard prefix, --dataset wds/NAME)")
    parser.add_argument("--shard-size", type=int, default=10000, help="samples per shard")
    parser.add_argument("--limit", type=int, default=None, help="write only the first N (after shuffling)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed of a training split")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the source order")
    parser.add_argument("--download", action="store_true", help="let torchvision download the source")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)

    if args.source not in ("folder", "synthetic-mnist") and not args.source.startswith("torch/"):
        raise UsageError(f"--source {args.source}: use 'folder', torch/NAME or synthetic-mnist")
    if not args.download and not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root} does not exist")
    splits = args.split.split(",")
    synthetic = None
    if args.source == "synthetic-mnist":
        from .synthetic_mnist import NUM_CLASSES, build_synthetic_mnist
        synthetic = build_synthetic_mnist(args.root, seed=args.seed, download=args.download)
        unknown = set(splits) - set(synthetic)
        if unknown:
            raise UsageError(f"synthetic-mnist has splits {', '.join(synthetic)}, not {', '.join(sorted(unknown))}")
    for split in splits:
        if synthetic is not None:
            dataset, names = _SyntheticPIL(synthetic[split]), [str(c) for c in range(NUM_CLASSES)]
        else:
            dataset, names = _open(args, split)
        n = len(dataset)
        shuffle = split == "train" and not args.no_shuffle
        order = np.random.default_rng(args.seed).permutation(n) if shuffle else np.arange(n)
        order = order[: args.limit] if args.limit else order
        samples = _folder_samples(dataset, order) if args.source == "folder" else _pil_samples(dataset, order)
        info = write_shards(samples, output=args.output, name=args.name, split=split, shard_size=args.shard_size,
                            num_classes=len(names) if names else None, class_names=names)
        written = info["splits"][split]
        print(f"{split}: wrote {written['num_samples']} samples in {len(written['filenames'])} shard(s) "
              f"to {args.output}")
    return 0
