"""Robustness evaluation of timm models (paper sections 4.2.1-4.2.2, Tables 2-3, Appendix C).

    python -m timm_fcl.eval --model output/quickstart --data-dir ../shared/data/cifar10-wds --dataset wds/cifar10 \
        --suites clean un nun generated --output output/eval/quickstart

Models: a timm name (``--checkpoint`` a safetensors / .pth file), an ``hf-hub:`` / ``local-dir:`` name, or a training
output folder (``model.safetensors`` + ``config.json``, or a train_fcl.py ``--output`` with them in ``model/``).
Repeat ``--model`` (and ``--checkpoint``) to compare models.
Suites: ``clean``, ``un`` / ``nun`` (the noisy test sets of sections 4.1 / 4.2.1), ``cifar-c`` (a CIFAR-10-C or
CIFAR-100-C folder), ``imagenet-c`` (an ImageNet-C tree), ``generated`` (the 19 corruptions applied to the clean test
set, cached). Inputs are scaled to [0, 1] and normalized with the model's own mean / std
(``timm.data.resolve_model_data_config``); corrupted images are never resized.
Writes ``results.json``, ``results.csv`` (one row per model x set) and ``corruptions.png`` into ``--output``.
"""
import argparse
import csv
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .corruptions import CORRUPTIONS, PRESETS, SEVERITIES, preset_for_size
from .robustness_data import (ArrayDataset, cifar_c_sets, generated_suite_dir, imagenet_c_sets, iter_clean_images,
                              load_clean_images)
from .robustness_metrics import summarize_corruptions

SUITES = ("clean", "un", "nun", "cifar-c", "imagenet-c", "generated")
CORRUPTION_SUITES = ("cifar-c", "imagenet-c", "generated")


def _classes_in_checkpoint(model: torch.nn.Module, checkpoint: Path) -> Optional[int]:
    """Number of classes of a safetensors checkpoint, read from the shape of the model's classifier weight."""
    from safetensors import safe_open

    classifier = model.pretrained_cfg.get("classifier")
    if checkpoint.suffix != ".safetensors" or not isinstance(classifier, str):
        return None
    with safe_open(str(checkpoint), framework="pt") as f:
        key = f"{classifier}.weight"
        return f.get_slice(key).get_shape()[0] if key in f.keys() else None


def load_model(spec: str, *, checkpoint: Optional[str] = None, num_classes: Optional[int] = None) -> torch.nn.Module:
    """A timm model in eval mode from a name (+ checkpoint), an ``hf-hub:`` / ``local-dir:`` name or a run folder."""
    import timm

    path = Path(spec)
    if path.is_dir() and not (path / "model.safetensors").exists() and (path / "model" / "model.safetensors").exists():
        path = path / "model"  # a train_fcl.py output folder: its exported model
    if path.is_dir():
        missing = [f for f in ("model.safetensors", "config.json") if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a training output folder: {', '.join(missing)} missing")
        spec = f"local-dir:{path}"
    if spec.startswith(("hf-hub:", "local-dir:")):
        if checkpoint:
            raise ValueError(f"--checkpoint is for timm model names; {spec} carries its own weights")
        kwargs = {"num_classes": num_classes} if num_classes else {}
        return timm.create_model(spec, pretrained=True, **kwargs).eval()
    if spec not in timm.list_models():
        raise ValueError(f"{spec!r} is neither a timm model name, an hf-hub:/local-dir: name, nor a folder")
    if checkpoint is not None:
        checkpoint_path = Path(checkpoint)
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint_path} does not exist")
        if num_classes is None:
            num_classes = _classes_in_checkpoint(timm.create_model(spec, pretrained=False), checkpoint_path)
    model = timm.create_model(spec, pretrained=False, **({"num_classes": num_classes} if num_classes else {}))
    if checkpoint is not None:
        timm.models.load_checkpoint(model, checkpoint)
    return model.eval()


@torch.no_grad()
def evaluate_accuracy(
        model: torch.nn.Module,
        dataset: Dataset,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 256,
        workers: int = 0,
        device: str = "cpu",
) -> Tuple[int, int]:
    """(correct, total) top-1 of ``model`` on (image, label) pairs; uint8 images are scaled to [0, 1] first."""
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        images, labels = images.to(device), labels.to(device)
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        logits = model((images - mean_t) / std_t)
        correct += int((logits.argmax(dim=-1) == labels).sum())
        total += len(labels)
    return correct, total


def noisy_test_sets(images: np.ndarray, labels: np.ndarray, *, suites: Sequence[str], pixel_std: Optional[torch.Tensor],
                    seed: int) -> List[Tuple[str, str, Dataset]]:
    """(suite, name, dataset) for the UN / NUN versions of the clean test set (section 4.1: 15% of the pixels
    replaced by a random grey level, anywhere for UN, preferring pixels of low training std for NUN)."""
    from . import noise

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    out = []
    if "un" in suites:
        out.append(("un", "uniform_noise", ArrayDataset(
            noise.uniform_noise(x, generator=torch.Generator().manual_seed(seed)), labels)))
    if "nun" in suites:
        out.append(("nun", "nonuniform_noise", ArrayDataset(noise.nonuniform_noise(
            x, pixel_std, generator=torch.Generator().manual_seed(seed + 1)), labels)))
    return out


def _train_pixel_std(args: argparse.Namespace, size: int, crop_pct: float) -> torch.Tensor:
    """[H, W] per-location std over (up to ``--std-samples``) training images: NUN puts its noise where it is low."""
    from . import noise

    def batches() -> Iterator[torch.Tensor]:
        stream = iter_clean_images(dataset=args.dataset, root=args.data_dir, split=args.train_split,
                                   max_samples=args.std_samples, seed=args.seed, size=size, crop_pct=crop_pct)
        while chunk := [image for image, _ in itertools.islice(stream, 512)]:
            yield torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 255.0

    return noise.pixel_std(batches())


def _model_label(spec: str, checkpoint: Optional[str]) -> str:
    """A short name for tables: the run folder's name for exported models, else the timm name (+ checkpoint)."""
    if checkpoint:
        return f"{spec}:{Path(checkpoint).stem}"
    if not (Path(spec).is_dir() or spec.startswith("local-dir:")):
        return spec
    path = Path(spec.split(":", 1)[-1] if spec.startswith("local-dir:") else spec).resolve()
    return path.parent.name if path.name in ("model", "model_ema") else path.name


def build_sets(args: argparse.Namespace, data_config: dict) -> Tuple[List[Tuple[str, str, int, Dataset]], dict]:
    """Every requested (suite, corruption, severity, dataset), and the parameter preset of each corruption suite.

    The clean-derived suites share one read of the clean set, brought to the (first) model's input size.
    """
    suites = args.suites
    sets: List[Tuple[str, str, int, Dataset]] = []
    suite_presets: Dict[str, Optional[str]] = {}
    if {"clean", "un", "nun", "generated"} & set(suites):
        if not args.data_dir:
            raise ValueError("the clean / un / nun / generated suites need --data-dir (and --dataset)")
        size, crop_pct = data_config["input_size"][-1], data_config["crop_pct"]
        images, labels = load_clean_images(dataset=args.dataset, root=args.data_dir, split=args.split,
                                           max_samples=args.max_samples, seed=args.seed, size=size, crop_pct=crop_pct)
        print(f"clean set: {len(images)} images of {images.shape[1]}x{images.shape[2]} from {args.data_dir}")
        if "clean" in suites:
            sets.append(("clean", "clean", 0, ArrayDataset(images, labels)))
        if "un" in suites or "nun" in suites:
            pixel_std = _train_pixel_std(args, size, crop_pct) if "nun" in suites else None
            sets += [(suite, name, 0, data) for suite, name, data in
                     noisy_test_sets(images, labels, suites=suites, pixel_std=pixel_std, seed=args.seed)]
        if "generated" in suites:
            preset = args.preset or preset_for_size(*images.shape[1:3])
            suite_presets["generated"] = preset
            folder = generated_suite_dir(images, labels, cache_dir=args.cache_dir, preset=preset, seed=args.seed,
                                         corruptions=args.corruptions or CORRUPTIONS, workers=args.gen_workers)
            print(f"generated corruptions ({preset} parameters): {folder}")
            sets += [("generated", c, s, d) for c, s, d in cifar_c_sets(folder, corruptions=args.corruptions)]
    if "cifar-c" in suites:
        if not args.cifar_c_dir:
            raise ValueError("the cifar-c suite needs --cifar-c-dir (the folder with gaussian_noise.npy, labels.npy)")
        suite_presets["cifar-c"] = "cifar"
        sets += [("cifar-c", c, s, d) for c, s, d in cifar_c_sets(args.cifar_c_dir, corruptions=args.corruptions)]
    if "imagenet-c" in suites:
        if not args.imagenet_c_dir:
            raise ValueError("the imagenet-c suite needs --imagenet-c-dir (the folder with gaussian_noise/1/<wnid>/)")
        suite_presets["imagenet-c"] = "imagenet"
        sets += [("imagenet-c", c, s, d) for c, s, d in
                 imagenet_c_sets(args.imagenet_c_dir, corruptions=args.corruptions, class_map=args.class_map)]
    return sets, suite_presets


def run(args: argparse.Namespace) -> Dict[str, dict]:
    """Evaluate every model on every requested suite; returns {label: {"spec", "rows", "summaries"}}."""
    import timm.data

    suites = args.suites
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    checkpoints = args.checkpoint or []
    if checkpoints and len(checkpoints) != len(args.model):
        raise ValueError("give one --checkpoint per --model (use 'none' for models that need none)")
    checkpoints = [None if c in (None, "none") else c for c in checkpoints] or [None] * len(args.model)
    overrides = {k: getattr(args, k) for k in ("mean", "std", "crop_pct", "interpolation") if getattr(args, k)}
    if args.img_size:
        overrides["img_size"] = args.img_size
    models = []
    for spec, ckpt in zip(args.model, checkpoints):
        model = load_model(spec, checkpoint=ckpt, num_classes=args.num_classes).to(args.device)
        config = timm.data.resolve_model_data_config(model, args=overrides)
        models.append((_model_label(spec, ckpt), spec, model, config))
    sets, suite_presets = build_sets(args, models[0][3])

    results = {}
    for label, spec, model, config in models:
        rows = []
        for suite, corruption, severity, data in tqdm(sets, desc=f"evaluating {label}"):
            correct, total = evaluate_accuracy(model, data, mean=config["mean"], std=config["std"],
                                               batch_size=args.batch_size, workers=args.workers, device=args.device)
            rows.append({"model": label, "suite": suite, "corruption": corruption, "severity": severity,
                         "accuracy": correct / total, "correct": correct, "total": total})
        clean = next((r["accuracy"] for r in rows if r["suite"] == "clean"), None)
        summaries = {}
        for suite in CORRUPTION_SUITES:
            acc = {(r["corruption"], r["severity"]): r["accuracy"] for r in rows if r["suite"] == suite}
            if acc:
                # AlexNet's errors are ImageNet-C numbers: mCE only means something with the ImageNet parameters
                summaries[suite] = summarize_corruptions(acc, clean_accuracy=clean,
                                                         with_mce=suite_presets[suite] == "imagenet")
                summaries[suite]["preset"] = suite_presets[suite]
        results[label] = {"spec": spec, "rows": rows, "summaries": summaries}
    return results


def format_table(results: Dict[str, dict]) -> str:
    """Plain-text tables: the plain test sets, then corruption x severity per suite with Table 3's summaries."""
    lines = []
    for label, result in results.items():
        lines.append(f"== {label}")
        plain = [r for r in result["rows"] if r["severity"] == 0]
        if plain:
            lines.append("  ".join(f"{r['suite']}: {r['accuracy']:.4f}" for r in plain))
        for suite, summary in result["summaries"].items():
            lines.append(f"-- {suite} ({summary['preset']} parameters)")
            lines.append(f"{'corruption':<18}" + "".join(f"{'s' + str(s):>8}" for s in SEVERITIES) + f"{'mean':>8}")
            acc = {(r["corruption"], r["severity"]): r["accuracy"] for r in result["rows"] if r["suite"] == suite}
            for name, mean in summary["per_corruption"].items():
                cells = "".join(f"{acc[(name, s)]:8.4f}" if (name, s) in acc else f"{'-':>8}" for s in SEVERITIES)
                lines.append(f"{name:<18}{cells}{mean:8.4f}")
            parts = [f"{g} {v:.4f}" for g, v in summary["groups"].items()]
            parts += [f"{k} {summary[k]:.4f}" for k in ("mean_19", "mean_15", "mce", "relative_mce")
                      if summary.get(k) is not None]
            if summary.get("mean_19") is None:
                parts.append(f"mean over {len(summary['per_corruption'])} {summary['mean_all']:.4f}")
            lines.append("   ".join(parts))
    return "\n".join(lines)


def write_csv(results: Dict[str, dict], path: Path) -> None:
    fields = ["model", "suite", "corruption", "severity", "accuracy", "correct", "total"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for result in results.values():
            writer.writerows(result["rows"])


def plot_comparison(results: Dict[str, dict], path: Path) -> None:
    """Bars per corruption (mean over severities), one colour per model, one panel per suite (plus the test sets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in ("plain",) + CORRUPTION_SUITES if any(
        (s == "plain" and any(r["severity"] == 0 for r in res["rows"])) or s in res["summaries"]
        for res in results.values())]
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 3.6 * len(panels)), squeeze=False)
    width = 0.8 / max(len(results), 1)
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "plain":
            names = list(dict.fromkeys(
                r["suite"] for res in results.values() for r in res["rows"] if r["severity"] == 0))
            values = {label: {r["suite"]: r["accuracy"] for r in res["rows"] if r["severity"] == 0}
                      for label, res in results.items()}
        else:
            names = [c for c in CORRUPTIONS if any(c in res["summaries"].get(panel, {}).get("per_corruption", {})
                                                   for res in results.values())]
            values = {label: dict(res["summaries"][panel]["per_corruption"], mean=res["summaries"][panel]["mean_all"])
                      if panel in res["summaries"] else {} for label, res in results.items()}
            names.append("mean")
        for i, label in enumerate(results):
            ax.bar(np.arange(len(names)) + i * width, [values[label].get(n, np.nan) for n in names], width, label=label)
        ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2)
        ax.set_xticklabels(names, rotation=35, ha="right")
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title("clean and noisy test sets" if panel == "plain" else f"{panel}: mean accuracy over severities 1-5")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Robustness evaluation of timm models", add_help=add_help)
    p.add_argument("--model", action="append", required=True,
                   help="timm name, hf-hub:/local-dir: name or training output folder (repeat to compare)")
    p.add_argument("--checkpoint", action="append", help="weights for a timm-name --model (one per --model, or 'none')")
    p.add_argument("--num-classes", type=int, help="default: from the checkpoint / config")
    p.add_argument("--suites", nargs="+", default=["clean", "generated"], help=f"any of {', '.join(SUITES)}")
    p.add_argument("--data-dir", help="clean test set root (WebDataset shards or an image folder)")
    p.add_argument("--dataset", default="", help="timm dataset name, e.g. wds/cifar10 ('' for an image folder)")
    p.add_argument("--split", default="test")
    p.add_argument("--train-split", default="train", help="split whose per-pixel std places the NUN noise")
    p.add_argument("--std-samples", type=int, default=10000, help="training images used for that std")
    p.add_argument("--max-samples", type=int, help="evaluate a seeded random subset of the clean test set")
    p.add_argument("--cifar-c-dir", help="CIFAR-10-C / CIFAR-100-C folder (<corruption>.npy, labels.npy)")
    p.add_argument("--imagenet-c-dir", help="ImageNet-C folder (<corruption>/<severity>/<wnid>/*.JPEG)")
    p.add_argument("--class-map", help="ImageNet-C wnid -> index (.txt, one wnid per line); default: sorted wnids")
    p.add_argument("--corruptions", nargs="+", choices=CORRUPTIONS, help="default: all 19 (those present on disk)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="generated suite parameters; default by image size")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "timm-fcl" / "corruptions"))
    p.add_argument("--gen-workers", type=int, default=0, help="processes generating corruptions (0: in-process)")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset, the generated corruptions and UN / NUN")
    p.add_argument("--img-size", type=int, help="crop larger clean images to this size (default: the model's)")
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--interpolation")
    p.add_argument("--mean", type=float, nargs=3, help="override the model's normalization mean")
    p.add_argument("--std", type=float, nargs=3, help="override the model's normalization std")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a machine shared with other jobs)")
    p.add_argument("--compare", nargs="+", default=[], help="results.json files of earlier runs to add to the plot")
    p.add_argument("--output", default="output/eval", help="folder for results.json, results.csv, corruptions.png")
    return p


def main(args: argparse.Namespace) -> Dict[str, dict]:
    start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    for earlier in args.compare:
        path = Path(earlier)
        if not path.is_file():
            raise FileNotFoundError(f"--compare file {path} does not exist")
        results.update({k: v for k, v in json.loads(path.read_text()).items() if k not in results})
    print(format_table(results))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_csv(results, out / "results.csv")
    plot_comparison(results, out / "corruptions.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'corruptions.png'} "
          f"({time.time() - start:.0f} s)")
    return results


def cli() -> None:
    """Run main; bad paths, names or flags end with one error line (exit 2), not a traceback."""
    try:
        main(get_args_parser().parse_args())
    except (ValueError, FileNotFoundError, NotADirectoryError) as exn:
        sys.exit(f"timm_fcl.eval: error: {str(exn).splitlines()[0] if str(exn) else type(exn).__name__}")


if __name__ == "__main__":
    cli()
