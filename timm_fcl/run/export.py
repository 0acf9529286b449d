"""The exported timm model of a run (model.safetensors + timm config.json) and what its config says about where the
weights came from: the run's own tag, none of the architecture's first weights' provenance.

A run exports the same weights up to three times an epoch (model/, model_best/ and best/epoch_E/ when the epoch is the
best): an export whose weights file is byte for byte one of the run's other exports' is stored once, as a hard link
to it (a copy where the file system has none). Every export is written whole and renamed into place (``swap_dir``),
never rewritten in place, so replacing or deleting one export leaves the others as they were; a file of an export is
only ever replaced the same way (write a new file, rename it over the old name), never opened for writing."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .._compat import save_timm_config
from .atomic import WriteError, swap_dir
from .cli import first_line
from .folder import CONFIG, WEIGHTS, sibling_exports

# what a pretrained config says about where its weights came from: true of timm's default weights of the architecture
# (e.g. ImageNet ones, their paper and license), false of a model this run trained
INHERITED_PROVENANCE = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "license", "description",
                        "origin_url", "paper_name", "paper_ids", "notes")


def run_tag(method: str, dataset: str = "") -> str:
    """The pretrained tag of a trained run: its method and data set (``fcl_cifar10``), as timm tags name weights."""
    name = str(dataset or "").rstrip("/").split("/")[-1]
    return f"{method}_{name}" if name else str(method)


def describe_run(config_path: Path, tag: str) -> None:
    """Make a timm config.json's pretrained_cfg describe these weights: ``tag`` instead of the architecture's default
    weights' tag, and none of their provenance; what timm needs to build and preprocess (input size, mean / std, crop,
    interpolation, classifier, first_conv, pool size) is kept."""
    config = json.loads(config_path.read_text())
    pretrained_cfg = {k: v for k, v in config.get("pretrained_cfg", {}).items() if k not in INHERITED_PROVENANCE}
    config["pretrained_cfg"] = {"tag": tag, **{k: v for k, v in pretrained_cfg.items() if k != "tag"}}
    config_path.write_text(json.dumps(config, indent=2))


def same_bytes(a: Path, b: Path, block: int = 1 << 20) -> bool:
    """Whether two files hold the same bytes (sizes first, then block by block to the first difference)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if x != y:
                return False
            if not x:
                return True


def share_identical(path: Path, others: Sequence[Path]) -> Optional[Path]:
    """Make ``path`` a hard link to the first of ``others`` with the same bytes, in its place by a rename (the copy
    is kept where the file system refuses the link: another device, no hard links). Returns the file linked to."""
    for other in others:
        if not (other.is_file() and same_bytes(path, other)):
            continue
        link = path.with_name(f".{path.name}.link")
        try:
            link.unlink(missing_ok=True)
            os.link(other, link)
            os.replace(link, path)
            return other
        except OSError:
            link.unlink(missing_ok=True)
            return None
    return None


def export_model(model: torch.nn.Module, directory: str | os.PathLike, *, data_config: dict,
                 label_names: Optional[Sequence[str]] = None, tag: str = "timm_fcl") -> Path:
    """The bare timm model as model.safetensors + timm config.json, loadable by plain timm with
    `timm.create_model("local-dir:DIRECTORY", pretrained=True)`; replaced atomically as a folder. The config's
    pretrained_cfg carries ``tag`` (``run_tag``) and nothing of the weights the architecture was first made with.
    Weights identical to another export's of the same run are stored once (``share_identical``)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    # safetensors needs contiguous tensors (channels_last weights are not) and no shared storage
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    model_config = {"label_names": list(label_names)} if label_names else None
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS))
        save_timm_config(model, str(tmp / CONFIG), model_config=model_config, data_config=data_config)
        describe_run(tmp / CONFIG, tag)
        share_identical(tmp / WEIGHTS, [other / WEIGHTS for other in sibling_exports(directory)])
        swap_dir(tmp, directory)
    except (OSError, SafetensorError) as exn:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the previous export is kept" if directory.is_dir() else "nothing was exported"
        raise WriteError(f"cannot export the model to {directory}: {first_line(exn)}; {kept}") from None
    return directory
