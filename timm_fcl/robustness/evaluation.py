"""Model x test set evaluation (paper sections 4.2.1-4.2.2, Tables 2-3, Appendix C): load the models, build the
requested test sets once, count top-1 and top-5 hits of every model on every set, and summarize the corruption suites
(top-1, the paper's measure).

Inputs are scaled to [0, 1], brought to the model's channel count (RGB to grey for ``in_chans=1`` models) and
normalized with each model's own mean / std (``timm.data.resolve_model_data_config``); corrupted images are never
resized. Results are plain dicts (they go to results.json as they are): ``{label: {"spec", "weights",
"weights_sha256" (of a local weights file, else None), "rows":
[{"model", "suite", "corruption", "severity", "accuracy", "top5", "correct", "correct_top5", "total", "hits"}],
"summaries": {suite: summarize_corruptions(...) + "preset"}, "unit": "percent"}}``; ``accuracy`` is top-1, and
every accuracy is in percent (``units``); ``hits`` says which images of the set were right at top-1 (``hits``
module), so two models evaluated on the same set can be compared image by image.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from ..run import folder as run_folder
from ..run import model_io
from ..run.atomic import file_sha256
from ..run.metrics import topk_hits
from ..run.progress import done_lines
from . import noise
from .corruptions import CORRUPTIONS, preset_for_size
from .datasets import (ArrayDataset, check_labels, cifar_c_sets, generated_suite_dir, imagenet_c_sets,
                       iter_clean_images, load_clean_images, read_class_map)
from .metrics import summarize_corruptions
from .hits import pack_hits
from .units import UNIT

SUITES = ("clean", "un", "nun", "cifar-c", "imagenet-c", "generated")
CORRUPTION_SUITES = ("cifar-c", "imagenet-c", "generated")
CLEAN_DERIVED_SUITES = ("clean", "un", "nun", "generated")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "timm-fcl" / "corruptions"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOPK = (1, 5)


def default_workers() -> int:
    """Loader workers as timm's validate.py (4), but no more than the CPU count."""
    return min(4, os.cpu_count() or 1)


@dataclass
class EvalModel:
    """A model ready for evaluation: its name in tables, how the user named it, the model, its data config and
    where its weights came from."""
    label: str
    spec: str
    model: torch.nn.Module
    data_config: dict
    weights: str = ""
    weights_sha256: Optional[str] = None  # of the local weights file (an export's model.safetensors, a checkpoint)


@dataclass
class EvalSet:
    """One test set of a suite: the clean set, a noisy copy, or one corruption at one severity."""
    suite: str
    corruption: str  # the suite's own name for the clean / UN / NUN sets
    severity: int  # 0 for the sets without severities
    data: Dataset
    unreadable: int = 0  # images of the source that could not be decoded and are left out of ``data``


def model_label(spec: str, checkpoint: Optional[str] = None) -> str:
    """A short name for tables: the run folder's name for exported models, else the timm name (+ checkpoint)."""
    if checkpoint:
        return f"{spec}:{Path(checkpoint).stem}"
    if spec.startswith("local-dir:"):
        return run_folder.run_name(spec[len("local-dir:"):])
    return run_folder.run_name(spec) if Path(spec).is_dir() else spec


def unique_labels(specs: Sequence[str], checkpoints: Sequence[Optional[str]]) -> List[str]:
    """Each model's label (``model_label``), made unique: a label two models share (model/ and model_best/ of one run,
    two checkpoints both named model.safetensors) becomes the folder and the export or file name, and one still
    shared (the same model named twice) is numbered. Results are keyed by label, so none may hide another."""
    def detailed(spec: str, checkpoint: Optional[str]) -> str:
        if checkpoint:
            return f"{spec}:{Path(checkpoint).parent.name}/{Path(checkpoint).name}"
        path = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec).resolve()
        return f"{path.parent.name}/{path.name}" if path.is_dir() else spec

    labels = [model_label(s, c) for s, c in zip(specs, checkpoints)]
    labels = [detailed(s, c) if labels.count(label) > 1 else label for s, c, label in zip(specs, checkpoints, labels)]
    counts: Dict[str, int] = {}
    numbered = []
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
        numbered.append(label if labels.count(label) == 1 else f"{label} ({counts[label]})")
    return numbered


def weights_source(spec: str, checkpoint: Optional[str], pretrained: bool) -> str:
    """Where a model's weights come from, for results.json; a bare timm name that would run with random weights
    is refused unless asked for with ``--checkpoint none`` (its numbers would look like any other model's)."""
    import timm

    if checkpoint not in (None, "none"):
        return f"checkpoint {checkpoint}"
    if spec.startswith(model_io.HUB_PREFIXES) or Path(spec).is_dir():
        return "own (hub / export folder)"
    if checkpoint == "none":
        return "random initialization (--checkpoint none)"
    if not timm.is_model(spec):
        return "unknown"  # model_io.create_model refuses it with its own message
    cfg = timm.models.get_pretrained_cfg(spec)
    source = cfg and (cfg.hf_hub_id or cfg.url or cfg.file)
    if pretrained and source:
        return f"timm pretrained {source}"
    if pretrained:
        raise model_io.ModelError(f"timm has no pretrained weights for '{spec}': give --checkpoint FILE")
    raise model_io.ModelError(f"'{spec}' has no weights: add --pretrained (timm's), --checkpoint FILE, or "
                              "--checkpoint none to evaluate random weights on purpose")


def data_config_source(spec: str) -> str:
    """Where a model's mean / std come from, for error messages: an export's config.json, else the model's name."""
    resolved = model_io.resolve_spec(spec)
    if resolved.startswith("local-dir:"):
        return str(Path(resolved[len("local-dir:"):]) / run_folder.CONFIG)
    return f"the data config of '{spec}'"


def local_weights_sha256(spec: str, checkpoint: Optional[str]) -> Optional[str]:
    """The SHA-256 of the weights file a model is evaluated with, when it is a local file (a checkpoint, or the
    model.safetensors of an export or run folder): publishing matches an export to the results measured on it."""
    if checkpoint not in (None, "none"):
        return file_sha256(checkpoint)
    resolved = model_io.resolve_spec(spec)
    if resolved.startswith("local-dir:"):
        path = Path(resolved[len("local-dir:"):]) / run_folder.WEIGHTS
        return file_sha256(path) if path.is_file() else None
    return None


def loaded_weights_sha256(spec: str, checkpoint: Optional[str], model: torch.nn.Module,
                          pretrained: bool) -> Optional[str]:
    """The SHA-256 of the weights a model was evaluated with, wherever they lay: a local file
    (``local_weights_sha256``), else, for pretrained weights, the file its pretrained cfg names (a zoo tag's, installed
    or from the Hugging Face cache) or the Hub repository's file in the Hugging Face cache; None when it cannot be
    told (random weights, a URL download)."""
    local = local_weights_sha256(spec, checkpoint)
    if local is not None or checkpoint is not None:
        return local
    if not (pretrained or spec.startswith("hf-hub:")):
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    path = cfg.get("file")
    if not path and cfg.get("hf_hub_id"):
        from huggingface_hub import try_to_load_from_cache

        repo_id = str(cfg["hf_hub_id"]).split("@")[0]
        path = next((found for name in ("model.safetensors", "pytorch_model.bin")
                     if isinstance(found := try_to_load_from_cache(repo_id, name), str)), None)
    return file_sha256(path) if path and os.path.isfile(path) else None


def check_std(std: Sequence[float], where: str) -> None:
    """Refuse a normalization std that is not positive: dividing by it makes every input infinite or NaN."""
    if not all(float(s) > 0 for s in std):  # "not >" also catches NaN
        raise ValueError(f"{where}: std {list(std)} must be positive (each value above 0)")


def model_label_names(models: Sequence[EvalModel]) -> Optional[List[str]]:
    """The class names the models' outputs stand for (an export's ``label_names``), when every model that names
    them names the same; None when none does. Models that disagree are refused: one test set cannot be labelled for
    both."""
    named = [list(names) for m in models if (names := (getattr(m.model, "pretrained_cfg", None) or {}).get(
        "label_names"))]
    if not named:
        return None
    if any(names != named[0] for names in named[1:]):
        raise ValueError("the models name their classes differently (label_names of their configs): evaluate them "
                         "apart, or give --class-map")
    return named[0]


def model_classes(models: Sequence[EvalModel]) -> Optional[int]:
    """The fewest classes of the models (None when none says): every label of a test set must be below it."""
    counts = [getattr(m.model, "num_classes", None) for m in models]
    counts = [c for c in counts if isinstance(c, int) and c > 0]
    return min(counts) if counts else None


def load_models(
        specs: Sequence[str],
        *,
        checkpoints: Optional[Sequence[Optional[str]]] = None,
        pretrained: bool = False,
        num_classes: Optional[int] = None,
        data_overrides: Optional[Mapping] = None,
        device: str = "cpu",
        channels_last: bool = False,
) -> List[EvalModel]:
    """Every model in eval mode on ``device``; ``checkpoints`` has one entry per spec (a file, or "none" for random
    weights); ``pretrained`` loads timm's weights for timm names without a file; ``data_overrides`` are
    ``resolve_model_data_config`` args (img_size, mean, std, crop_pct, interpolation). An export folder's weights
    are used exactly as stored (``model_io.create_model``'s ``exact``): nothing of them is adapted to the config."""
    import timm.data

    if checkpoints and len(checkpoints) != len(specs):
        raise ValueError("give one --checkpoint per --model (use 'none' for models that need none)")
    data_overrides = dict(data_overrides or {})
    if data_overrides.get("std") is not None:
        check_std(data_overrides["std"], "--std")
    models = []
    given_all = list(checkpoints or [None] * len(specs))
    labels = unique_labels(specs, [None if c in (None, "none") else c for c in given_all])
    for spec, given, label in zip(specs, given_all, labels):
        weights = weights_source(spec, given, pretrained)  # before any model is built: refusals come at once
        checkpoint = None if given in (None, "none") else given
        model = model_io.create_model(spec, num_classes=num_classes, checkpoint=checkpoint, exact=True,
                                      pretrained=pretrained and weights.startswith("timm")).eval().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        config = timm.data.resolve_model_data_config(model, args=data_overrides)
        check_std(config["std"], data_config_source(spec))
        models.append(EvalModel(label, spec, model, config, weights,
                                loaded_weights_sha256(spec, checkpoint, model, pretrained and weights.startswith("timm"))))
    return models


def match_channels(images: Tensor, channels: int) -> Tensor:
    """[B, C, H, W] images with the model's channel count: RGB to grey (torchvision's luma weights) for ``in_chans=1``
    models such as ``lenet5_mnist``, grey repeated for RGB models."""
    if images.shape[1] == channels:
        return images
    if channels == 1 and images.shape[1] == 3:
        return TF.rgb_to_grayscale(images)
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    raise ValueError(f"cannot feed {images.shape[1]}-channel images to a model with {channels} input channels")


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
        amp: Optional[str] = None,
        channels_last: bool = False,
        ks: Sequence[int] = TOPK,
        per_image: Optional[List[Tensor]] = None,
) -> Tuple[List[int], int]:
    """(hits for each k of ``ks``, total) of ``model`` on (image, label) pairs; uint8 images are scaled to [0, 1],
    then brought to ``len(mean)`` channels. ``amp`` "bf16" / "fp16" runs the model under autocast. In-memory arrays
    (``ArrayDataset``) are sliced in batches; other datasets are read by a DataLoader with ``workers`` processes.
    ``per_image``, when given, receives each batch's top-1 correctness (bool, in the dataset's order)."""
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    hits, total = torch.zeros(len(ks), dtype=torch.long), 0
    batches = (dataset.batches(batch_size) if isinstance(dataset, ArrayDataset)
               else DataLoader(dataset, batch_size=batch_size, num_workers=workers))
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        images = ((match_channels(images, len(mean)) - mean_t) / std_t).contiguous(memory_format=memory_format)
        autocast = (torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp]) if amp
                    else contextlib.nullcontext())
        with autocast:
            logits = model(images)
        hits += topk_hits(logits.float(), labels, ks=ks).cpu()
        if per_image is not None:
            per_image.append((logits.float().argmax(dim=1) == labels).cpu())
        total += len(labels)
    return hits.tolist(), total


def noisy_test_sets(images: np.ndarray, labels: np.ndarray, *, suites: Sequence[str], pixel_std: Optional[torch.Tensor],
                    seed: int) -> List[EvalSet]:
    """The UN / NUN versions of the clean test set (section 4.1: 15% of the pixels replaced by a random grey level,
    anywhere for UN, preferring pixels of low training std for NUN)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    out = []
    if "un" in suites:
        noisy = noise.uniform_noise(x, generator=torch.Generator().manual_seed(seed))
        out.append(EvalSet("un", "uniform_noise", 0, ArrayDataset(noisy, labels)))
    if "nun" in suites:
        noisy = noise.nonuniform_noise(x, pixel_std, generator=torch.Generator().manual_seed(seed + 1))
        out.append(EvalSet("nun", "nonuniform_noise", 0, ArrayDataset(noisy, labels)))
    return out


def train_pixel_std(*, dataset: str, root: str, split: str, max_samples: int, seed: int, size: int,
                    crop_pct: float) -> torch.Tensor:
    """[H, W] per-location std over (up to ``max_samples``) training images: NUN puts its noise where it is low."""

    def batches() -> Iterator[torch.Tensor]:
        stream = iter_clean_images(dataset=dataset, root=root, split=split, max_samples=max_samples, seed=seed,
                                   size=size, crop_pct=crop_pct)
        while chunk := [image for image, _ in itertools.islice(stream, 512)]:
            yield torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 255.0

    return noise.pixel_std(batches())


@dataclass
class CleanSource:
    """Where the clean test set comes from (timm's ``dataset`` / ``split`` names under ``data_dir``), and how the
    sets derived from it are made: a seeded subset, the training split whose pixel std places the NUN noise, the
    generated corruptions' preset (None: by image size), cache folder and worker processes."""
    data_dir: Optional[str]
    dataset: str = ""
    split: str = "test"
    train_split: str = "train"
    std_samples: int = 10000
    max_samples: Optional[int] = None
    seed: int = 0
    preset: Optional[str] = None
    cache_dir: str | Path = DEFAULT_CACHE_DIR
    gen_workers: int = 0


def clean_derived_sets(source: CleanSource, *, suites: Sequence[str], data_config: dict,
                       corruptions: Optional[Sequence[str]] = None, class_map: Optional[Dict[str, int]] = None,
                       num_classes: Optional[int] = None) -> Tuple[List[EvalSet], Optional[str]]:
    """The clean, UN, NUN and generated sets from one read of the clean set at the model's input size (its labels
    through ``class_map`` when given; refused outside [0, ``num_classes``)), and the parameter preset of the generated
    suite (None when not requested)."""
    if not source.data_dir:
        raise ValueError("the clean / un / nun / generated suites need --data-dir (and --dataset)")
    size, crop_pct = data_config["input_size"][-1], data_config["crop_pct"]
    read = dict(dataset=source.dataset, root=source.data_dir, seed=source.seed, size=size, crop_pct=crop_pct)
    unreadable: List[str] = []
    images, labels = load_clean_images(split=source.split, max_samples=source.max_samples, class_map=class_map,
                                       unreadable=unreadable, **read)
    check_labels(labels, num_classes, f"{source.data_dir} ({source.dataset or 'image folder'}, {source.split} split)")
    print(f"clean set: {len(images)} images of {images.shape[1]}x{images.shape[2]} from {source.data_dir}"
          + (f" ({len(unreadable)} that cannot be decoded left out)" if unreadable else ""))
    sets = [EvalSet("clean", "clean", 0, ArrayDataset(images, labels), len(unreadable))] if "clean" in suites else []
    if "un" in suites or "nun" in suites:
        pixel_std = (train_pixel_std(split=source.train_split, max_samples=source.std_samples, **read)
                     if "nun" in suites else None)
        sets += noisy_test_sets(images, labels, suites=suites, pixel_std=pixel_std, seed=source.seed)
    if "generated" not in suites:
        return sets, None
    preset = source.preset or preset_for_size(*images.shape[1:3])
    folder = generated_suite_dir(images, labels, cache_dir=source.cache_dir, preset=preset, seed=source.seed,
                                 corruptions=corruptions or CORRUPTIONS, workers=source.gen_workers)
    print(f"generated corruptions ({preset} parameters): {folder}")
    sets += [EvalSet("generated", c, s, d) for c, s, d in cifar_c_sets(folder, corruptions=corruptions)]
    return sets, preset


def build_sets(
        *,
        suites: Sequence[str],
        data_config: dict,
        clean: Optional[CleanSource] = None,
        cifar_c_dir: Optional[str] = None,
        imagenet_c_dir: Optional[str] = None,
        class_map: Optional[str] = None,
        corruptions: Optional[Sequence[str]] = None,
        num_classes: Optional[int] = None,
        label_names: Optional[Sequence[str]] = None,
) -> Tuple[List[EvalSet], Dict[str, str]]:
    """Every requested test set, and the parameter preset of each corruption suite.

    ``data_config`` is the (first) model's: the clean-derived suites (clean, un, nun, generated; they need ``clean``)
    are read at its input size. ``corruptions`` None takes all 19 (those present on disk for the released suites).
    ``class_map`` (a file for ``read_class_map``: class name -> index) labels the clean set and the ImageNet-C sets
    alike, so that the clean accuracy of relative mCE counts the same classes. With ``num_classes`` (the models'), a
    label outside [0, num_classes) is refused, naming the file or folder it comes from, before any set is generated.
    ``label_names`` (the models', as an export stores them): without ``class_map``, an image folder's class folders are
    numbered by them, not by their sorted names, so the labels mean what the models' outputs mean.
    """
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    class_map = read_class_map(class_map) if class_map else None
    if class_map is None and label_names and clean is not None and clean.dataset in ("", "folder"):
        class_map = {name: index for index, name in enumerate(label_names)}
    sets: List[EvalSet] = []
    presets: Dict[str, str] = {}
    if set(CLEAN_DERIVED_SUITES) & set(suites):
        sets, generated = clean_derived_sets(clean or CleanSource(data_dir=None), suites=suites,
                                             data_config=data_config, corruptions=corruptions, class_map=class_map,
                                             num_classes=num_classes)
        presets.update({"generated": generated} if generated else {})
    if "cifar-c" in suites:
        if not cifar_c_dir:
            raise ValueError("the cifar-c suite needs --cifar-c-dir (the folder with gaussian_noise.npy, labels.npy)")
        presets["cifar-c"] = "cifar"
        sets += [EvalSet("cifar-c", c, s, d) for c, s, d in
                 cifar_c_sets(cifar_c_dir, corruptions=corruptions, num_classes=num_classes)]
    if "imagenet-c" in suites:
        if not imagenet_c_dir:
            raise ValueError("the imagenet-c suite needs --imagenet-c-dir (the folder with gaussian_noise/1/<wnid>/)")
        presets["imagenet-c"] = "imagenet"
        sets += [EvalSet("imagenet-c", c, s, d) for c, s, d in
                 imagenet_c_sets(imagenet_c_dir, corruptions=corruptions, class_map=class_map, num_classes=num_classes)]
    return sets, presets


def _as_percent(summary: Mapping) -> dict:
    """A corruption summary computed from fractions (metrics.summarize_corruptions works in fractions, AlexNet's errors
    included), every number x100; text such as the preset name unchanged."""
    return {k: _as_percent(v) if isinstance(v, Mapping) else
            v * 100.0 if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in summary.items()}


def summarize_rows(rows: Sequence[dict], suite_presets: Mapping[str, str]) -> Dict[str, dict]:
    """Table 3's summaries of each corruption suite in ``rows``, in percent, with the preset its images were made
    with (computed from the hit counts, so no rounding of the rows' percentages enters them)."""
    clean = next((r["correct"] / r["total"] for r in rows if r["suite"] == "clean"), None)
    summaries = {}
    for suite in CORRUPTION_SUITES:
        accuracy = {(r["corruption"], r["severity"]): r["correct"] / r["total"] for r in rows if r["suite"] == suite}
        if accuracy:
            # AlexNet's errors are ImageNet-C numbers: mCE only means something with the ImageNet parameters
            summaries[suite] = _as_percent(summarize_corruptions(
                accuracy, clean_accuracy=clean, with_mce=suite_presets[suite] == "imagenet"))
            summaries[suite]["preset"] = suite_presets[suite]
    return summaries


def set_name(s: EvalSet) -> str:
    """A test set as progress lines name it: its suite (clean, un, nun), or suite, corruption and severity."""
    return f"{s.suite} {s.corruption} severity {s.severity}" if s.severity else s.suite


def row_key(row: Mapping) -> Tuple[str, str, str, int]:
    """What a result row is of: (model, suite, corruption, severity)."""
    return row["model"], row["suite"], row["corruption"], int(row["severity"])


def run(
        *,
        models: Sequence[EvalModel],
        sets: Sequence[EvalSet],
        suite_presets: Mapping[str, str],
        batch_size: int = 256,
        workers: int = 0,
        device: str = "cpu",
        amp: Optional[str] = None,
        channels_last: bool = False,
        done: Optional[Mapping[tuple, dict]] = None,
        on_row: Optional[Callable[[dict], None]] = None,
) -> Dict[str, dict]:
    """Evaluate every model on every set; returns {label: {"spec", "weights", "rows", "summaries"}} (module doc).

    ``done`` holds rows finished earlier (by ``row_key``): they are taken as they are, not recomputed, if they were
    measured on the same weights (their ``weights_sha256``). ``on_row`` is called with every new row, and the digest
    of the weights it was measured on, as soon as its set is finished (e.g. to append it to a file)."""
    done = done or {}
    results = {}
    for m in models:
        rows = []
        for s in done_lines(sets, f"evaluating {m.label}", name=set_name):
            prior = done.get((m.label, s.suite, s.corruption, s.severity))
            if prior is not None and prior.get("weights_sha256") == m.weights_sha256:
                rows.append({k: v for k, v in prior.items() if k != "weights_sha256"})
                continue
            correct: List[Tensor] = []
            (top1, top5), total = evaluate_accuracy(
                m.model, s.data, mean=m.data_config["mean"], std=m.data_config["std"], batch_size=batch_size,
                workers=workers, device=device, amp=amp, channels_last=channels_last, per_image=correct)
            rows.append({"model": m.label, "suite": s.suite, "corruption": s.corruption, "severity": s.severity,
                         "accuracy": 100.0 * top1 / total, "top5": 100.0 * top5 / total, "correct": top1,
                         "correct_top5": top5, "total": total,
                         "hits": pack_hits(torch.cat(correct).numpy() if correct else []),
                         **({"unreadable": s.unreadable} if s.unreadable else {})})
            if on_row:
                on_row({**rows[-1], "weights_sha256": m.weights_sha256})
        results[m.label] = {"spec": m.spec, "weights": m.weights, "weights_sha256": m.weights_sha256, "rows": rows,
                            "summaries": summarize_rows(rows, suite_presets), "unit": UNIT}
    return results
