"""One way to build a timm model from whatever a user names: a timm name (tags allowed, e.g. ``resnet18.a1_in1k``),
an ``hf-hub:`` / ``local-dir:`` name, a train_fcl.py run folder or an export folder; with timm's pretrained weights,
a local weights file as the pretrained source (head adapted), or a checkpoint loaded as it is."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import timm
import torch

from . import folder as run_folder
from .cli import UsageError

HUB_PREFIXES = ("hf-hub:", "local-dir:")


class ModelError(UsageError):
    """A model that cannot be built or loaded as asked: reported as one line."""


def resolve_spec(spec: str) -> str:
    """A run folder or export folder becomes ``local-dir:EXPORT``; names pass through."""
    path = Path(spec)
    if not path.is_dir():
        return spec
    export = run_folder.find_export(path)
    if export is None:
        raise ModelError(f"{path} is not a training output folder: {run_folder.WEIGHTS} and {run_folder.CONFIG} "
                         f"missing (in it or in {run_folder.MODEL}/)")
    return f"local-dir:{export}"


def default_in_chans(name: str) -> int:
    """Input channels of a timm name's default pretrained config (3 when unknown)."""
    if name.startswith(HUB_PREFIXES) or not timm.is_model(name):
        return 3
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.input_size[0] if cfg is not None and cfg.input_size else 3


def _classifier_names(model: torch.nn.Module) -> list[str]:
    name = model.pretrained_cfg.get("classifier", "fc")
    return list(name) if isinstance(name, (list, tuple)) else [name]


def checkpoint_classes(path: str | os.PathLike, model: torch.nn.Module) -> Optional[int]:
    """Rows of ``model``'s classifier weight stored in a checkpoint (None when it has no such tensor).
    A safetensors file is read from its header only; other files go through timm's ``load_state_dict``."""
    path = Path(path)
    keys = [f"{n}.weight" for n in _classifier_names(model)]
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                found = [k for k in keys if k in f.keys()]
                return int(f.get_slice(found[0]).get_shape()[0]) if found else None
        state = timm.models.load_state_dict(str(path))
    except (OSError, RuntimeError, ValueError) as exn:
        raise ModelError(f"cannot read checkpoint {path}: {str(exn).splitlines()[0] if str(exn) else exn}") from None
    found = [k for k in keys if k in state]
    return int(state[found[0]].shape[0]) if found else None


def _classes_with_checkpoint(spec: str, checkpoint: str, num_classes: Optional[int], flag: str,
                             kwargs: dict) -> Optional[int]:
    """The class count of a model that will load ``checkpoint``: ``num_classes`` if the file agrees, else its own."""
    if not os.path.isfile(checkpoint):
        raise ModelError(f"{flag} {checkpoint} does not exist")
    stored = checkpoint_classes(checkpoint, timm.create_model(spec, **kwargs))
    if stored is not None and num_classes is not None and stored != num_classes:
        raise ModelError(f"--num-classes {num_classes} contradicts {flag} {checkpoint}, whose classifier has "
                         f"{stored} outputs")
    return num_classes or stored


def create_model(
        spec: str,
        *,
        num_classes: Optional[int] = None,
        default_num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        pretrained: bool = False,
        pretrained_path: Optional[str] = None,
        checkpoint: Optional[str] = None,
        checkpoint_flag: str = "--checkpoint",
        **kwargs,
) -> torch.nn.Module:
    """A timm model (in train mode, as timm creates it) from ``spec``.

    Args:
        spec: timm name (tags allowed), ``hf-hub:ORG/NAME``, ``local-dir:PATH``, a run folder or an export folder;
            hub names and folders carry their own weights.
        num_classes: classes of the classifier; a checkpoint with another count is refused.
        default_num_classes: used when neither ``num_classes`` nor the checkpoint gives the count (e.g. the data's).
        in_chans: input channels (default: the model's).
        pretrained: timm's pretrained weights (a different ``num_classes`` resets the classifier).
        pretrained_path: a local weights file used as the pretrained source, classifier adapted as timm does.
        checkpoint: weights loaded as they are (``strict``), e.g. a model.safetensors of an earlier run.
        checkpoint_flag: how the command that calls this names ``checkpoint`` in its error messages.
        kwargs: more ``timm.create_model`` arguments (e.g. ``drop_path_rate``).
    """
    spec = resolve_spec(spec)
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if spec.startswith(HUB_PREFIXES):
        if checkpoint or pretrained_path:
            raise ModelError(f"{spec} carries its own weights; {checkpoint_flag} / --pretrained-path are for timm "
                             "names")
        pretrained = True
    elif not timm.is_model(spec):
        raise ModelError(f"unknown model '{spec}': neither a timm model name (timm.list_models() lists them), "
                         "an hf-hub:/local-dir: name, nor a training output folder")
    if checkpoint:
        num_classes = _classes_with_checkpoint(spec, checkpoint, num_classes, checkpoint_flag, kwargs)
    if pretrained_path:
        if not os.path.isfile(pretrained_path):
            raise ModelError(f"--pretrained-path {pretrained_path} does not exist")
        # timm's train.py convention: the file replaces the pretrained source; num_classes=-1 forces head adaptation
        kwargs["pretrained_cfg_overlay"] = dict(file=os.path.abspath(pretrained_path), num_classes=-1)
        pretrained = True
    num_classes = num_classes or default_num_classes
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(spec, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, OSError, TypeError) as exn:  # TypeError: a model argument it does not take
        raise ModelError(f"cannot create model '{spec}': {str(exn).splitlines()[0]}") from None
    if checkpoint:
        try:
            timm.models.load_checkpoint(model, checkpoint, strict=True)
        except (RuntimeError, KeyError) as exn:
            raise ModelError(f"{checkpoint_flag} {checkpoint} does not fit '{spec}': "
                             f"{str(exn).splitlines()[0]}") from None
    return model
