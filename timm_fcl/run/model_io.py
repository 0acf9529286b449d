"""One way to build a timm model from whatever a user names: a timm name (tags allowed, e.g. ``resnet18.a1_in1k``),
an ``hf-hub:`` / ``local-dir:`` name, a train_fcl.py run folder or an export folder; with timm's pretrained weights,
a local weights file or export as the pretrained source (an export brings its input config, and its classifier is
kept when the class count matches), or a checkpoint loaded as it is."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import timm
import torch
from safetensors import SafetensorError, safe_open

from . import folder as run_folder
from .cli import UsageError, first_line

HUB_PREFIXES = ("hf-hub:", "local-dir:")


class _NameWhatTimmLoaded(logging.Filter):
    """timm's load_state_dict logs ``Loaded {key} from checkpoint '{path}'`` with an empty key for a file that is a
    bare state dict (every safetensors file: --pretrained-path, an export, --initial-checkpoint), which reads
    ``Loaded  from checkpoint '...'``: the line is made to say what was loaded (and still where from)."""
    BLANK = "Loaded  from checkpoint "

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.BLANK):
            record.msg, record.args = f"Loaded the weights (the file's whole state dict) from checkpoint " \
                                      f"{message[len(self.BLANK):]}", ()
        return True


logging.getLogger("timm.models._helpers").addFilter(_NameWhatTimmLoaded())


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


def check_model_spec(spec: str) -> str:
    """``spec`` resolved (``resolve_spec``) when it names a model ``create_model`` can build: a timm name (tags
    allowed), an ``hf-hub:`` / ``local-dir:`` name or a training output folder; else one line. Nothing is built or
    read but a folder's listing, so the commands call it before they open any data."""
    spec = resolve_spec(spec)
    if not spec.startswith(HUB_PREFIXES) and not timm.is_model(spec):
        raise ModelError(f"unknown model '{spec}': neither a timm model name (timm.list_models() lists them), "
                         "an hf-hub:/local-dir: name, nor a training output folder")
    return spec


def default_in_chans(name: str) -> int:
    """Input channels of a timm name's default pretrained config (3 when unknown)."""
    if name.startswith(HUB_PREFIXES) or not timm.is_model(name):
        return 3
    cfg = timm.models.get_pretrained_cfg(name)
    return cfg.input_size[0] if cfg is not None and cfg.input_size else 3


def _classifier_names(model: torch.nn.Module) -> list[str]:
    name = model.pretrained_cfg.get("classifier", "fc")
    return list(name) if isinstance(name, (list, tuple)) else [name]


def safetensors_shapes(path: str | os.PathLike, what: str = "") -> dict[str, list[int]]:
    """{key: shape} of a safetensors file, read from its header only: a pickle (or anything else) named
    ``.safetensors`` is refused unread, as one line naming ``what`` (e.g. the flag) and the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exn:
        raise ModelError(f"{what + ' ' if what else ''}{path} is not a safetensors file ({first_line(exn)}); "
                         "a pickle renamed .safetensors is never loaded") from None


def checkpoint_classes(path: str | os.PathLike, model: torch.nn.Module, what: str = "checkpoint") -> Optional[int]:
    """Rows of ``model``'s classifier weight stored in a checkpoint (None when it has no such tensor).
    A safetensors file is read from its header only; other files go through timm's ``load_state_dict``."""
    path = Path(path)
    keys = [f"{n}.weight" for n in _classifier_names(model)]
    if path.suffix == ".safetensors":
        shapes = safetensors_shapes(path, what)
        found = [k for k in keys if k in shapes]
        return int(shapes[found[0]][0]) if found else None
    try:
        state = timm.models.load_state_dict(str(path))
    except (OSError, RuntimeError, ValueError) as exn:
        raise ModelError(f"cannot read {what} {path}: {first_line(exn)}") from None
    found = [k for k in keys if k in state]
    return int(state[found[0]].shape[0]) if found else None


def load_error_line(exn: BaseException) -> str:
    """The telling line of a failed load: torch's ``Error(s) in loading state_dict for X:`` is followed by the first
    mismatch (a key and its two shapes, or the missing keys), which is what the user needs to see."""
    lines = [line.strip() for line in str(exn).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return first_line(exn)


def read_export_config(folder: Path) -> dict:
    """An export folder's config.json, refused as one line when it is not a JSON mapping."""
    path = folder / run_folder.CONFIG
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise ModelError(f"{path} is not JSON ({first_line(exn)})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a timm config: expected a mapping, got {type(config).__name__}")
    # what timm's loader takes for granted (its KeyError / AttributeError would be a traceback)
    if not isinstance(config.get("architecture"), str) or not config["architecture"]:
        raise ModelError(f"{path} is not a timm config: its 'architecture' (the timm model name) is missing")
    if "pretrained_cfg" in config and not isinstance(config["pretrained_cfg"], dict):
        raise ModelError(f"{path} is not a timm config: 'pretrained_cfg' must be a mapping, got "
                         f"{type(config['pretrained_cfg']).__name__}")
    return config


def export_classes(folder: Path) -> Optional[int]:
    """Rows of the classifier weight in an export's model.safetensors (None without one), refused when any
    ``num_classes`` of its config.json says otherwise: timm would re-initialize the classifier without a word."""
    config = read_export_config(folder)
    shapes = safetensors_shapes(folder / run_folder.WEIGHTS)
    pretrained_cfg = config.get("pretrained_cfg", config)  # a legacy config is one flat mapping
    pretrained_cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else {}
    names = pretrained_cfg.get("classifier") or config.get("classifier") or ()
    keys = [f"{n}.weight" for n in ([names] if isinstance(names, str) else names if isinstance(names, list) else [])]
    key = next((k for k in keys if k in shapes and shapes[k]), None)
    if key is None:
        return None
    model_args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}
    stored = int(shapes[key][0])
    claims = {"num_classes": config.get("num_classes"), "model_args.num_classes": model_args.get("num_classes"),
              "pretrained_cfg.num_classes": pretrained_cfg.get("num_classes")}
    for name, value in claims.items():
        if value is not None and value != stored:
            raise ModelError(f"{folder / run_folder.CONFIG}: {name} {value} contradicts {folder / run_folder.WEIGHTS}, "
                             f"whose classifier {key} has shape {shapes[key]}")
    return stored


# what timm's resolve_data_config reads from a model's pretrained_cfg, and the type each entry must have
DATA_CONFIG_KEYS = {"input_size": "sizes", "test_input_size": "sizes", "interpolation": "name", "mean": "numbers",
                    "std": "positives", "crop_pct": "positive", "test_crop_pct": "positive", "crop_mode": "name"}


def _fits(kind: str, value: object) -> bool:
    """Whether a data config entry has the type ``kind`` names (see ``DATA_CONFIG_KEYS``)."""
    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if kind == "name":
        return isinstance(value, str) and bool(value)
    if kind == "positive":
        return number(value) and value > 0
    if not isinstance(value, (list, tuple)) or not value or not all(number(v) for v in value):
        return False
    if kind == "sizes":
        return len(value) == 3 and all(isinstance(v, int) and v > 0 for v in value)
    return kind == "numbers" or all(v > 0 for v in value)


def export_as_pretrained_cfg(folder: Path) -> dict:
    """The pretrained_cfg entries an export's weights bring when they are the pretrained source: the input it was
    trained on (input size, mean / std, interpolation, crop, from its config.json) and its class count (that of its
    classifier weights, -1 when it has none). A malformed entry is refused as one line."""
    config = read_export_config(folder)
    pretrained_cfg = config.get("pretrained_cfg", config)  # a legacy config is one flat mapping
    pretrained_cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else {}
    found = {k: pretrained_cfg[k] for k in DATA_CONFIG_KEYS if pretrained_cfg.get(k) is not None}
    for key, value in found.items():
        if not _fits(DATA_CONFIG_KEYS[key], value):
            raise ModelError(f"{folder / run_folder.CONFIG}: pretrained_cfg {key} {json.dumps(value)} is not a valid "
                             f"{key}")
    found = {k: tuple(v) if isinstance(v, list) else v for k, v in found.items()}
    classes = export_classes(folder)
    return {**found, "num_classes": classes if classes is not None else -1}


def classifier_fate(model: torch.nn.Module) -> Optional[str]:
    """One line on what became of the classifier of the pretrained weights ``model`` was built from: kept (their
    class count is the model's) or reset to the model's count (timm drops the weights' classifier when the counts
    differ); None when the weights give no class count."""
    source = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
    classes = getattr(model, "num_classes", None)
    if not isinstance(source, int) or source <= 0 or classes is None:
        return None
    if source == classes:
        return f"classifier kept: the pretrained weights' {classes} classes (loaded, not re-initialized)"
    return f"classifier reset from {source} to {classes} classes (re-initialized; the rest is pretrained)"


def check_weights_fit(model: torch.nn.Module, path: Path) -> None:
    """Every tensor of the safetensors file ``path`` has its place in ``model``, with the same shape, and the model
    has no tensor the file lacks: the model holds the file's weights exactly, nothing adapted or re-initialized."""
    shapes = safetensors_shapes(path)
    for key, tensor in model.state_dict().items():
        if key not in shapes:
            raise ModelError(f"{path} lacks {key} (shape {list(tensor.shape)}) of the model its config builds")
        if list(tensor.shape) != shapes[key]:
            raise ModelError(f"{path}: {key} has shape {shapes[key]} but the model its config builds has "
                             f"{list(tensor.shape)}")
    unexpected = [k for k in shapes if k not in model.state_dict()]
    if unexpected:
        raise ModelError(f"{path} holds {unexpected[0]} (shape {shapes[unexpected[0]]}), which the model its config "
                         "builds has no place for")


def _classes_with_checkpoint(spec: str, checkpoint: str, num_classes: Optional[int], flag: str,
                             kwargs: dict) -> Optional[int]:
    """The class count of a model that will load ``checkpoint``: ``num_classes`` if the file agrees, else its own."""
    if not os.path.isfile(checkpoint):
        raise ModelError(f"{flag} {checkpoint} does not exist")
    stored = checkpoint_classes(checkpoint, timm.create_model(spec, **kwargs), flag)
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
        exact: bool = False,
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
        pretrained_path: a local weights file, export or run folder used as the pretrained source; an export's
            input config becomes the model's, and its classifier is reset (timm's way) only for another class count.
        checkpoint: weights loaded as they are (``strict``), e.g. a model.safetensors of an earlier run.
        checkpoint_flag: how the command that calls this names ``checkpoint`` in its error messages.
        exact: an export folder's weights are used exactly as stored (evaluation): a ``num_classes`` that differs
            from theirs, or any tensor of another shape, is refused instead of adapted (fine-tuning adapts them).
        kwargs: more ``timm.create_model`` arguments (e.g. ``drop_path_rate``).
    """
    spec = check_model_spec(spec)
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if spec.startswith(HUB_PREFIXES):
        if checkpoint or pretrained_path:
            raise ModelError(f"{spec} carries its own weights; {checkpoint_flag} / --pretrained-path are for timm "
                             "names")
        pretrained = True
    export = _checked_export(spec, num_classes, exact)
    if checkpoint:
        num_classes = _classes_with_checkpoint(spec, checkpoint, num_classes, checkpoint_flag, kwargs)
    if pretrained_path:
        kwargs["pretrained_cfg_overlay"], pretrained = _file_as_pretrained_source(pretrained_path), True
    num_classes = num_classes or default_num_classes
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(spec, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, OSError, TypeError, SafetensorError) as exn:  # TypeError: an argument it lacks
        raise ModelError(f"cannot create model '{spec}': {load_error_line(exn)}") from None
    if export is not None and exact:
        check_weights_fit(model, export / run_folder.WEIGHTS)
    if checkpoint:
        _load_exactly(model, spec, checkpoint, checkpoint_flag)
    return model


def _file_as_pretrained_source(path: str) -> dict:
    """timm's train.py convention for --pretrained-path: the file replaces the pretrained source. An export's
    model.safetensors (its config.json beside it), or an export or run folder, also brings the export's input config
    and class count (``export_as_pretrained_cfg``): timm then keeps its classifier when the model has as many classes,
    and resolve_data_config preprocesses as the export was trained. Any other file comes with num_classes=-1, which
    makes timm reset the classifier."""
    weights = Path(path)
    if weights.is_dir():
        export = run_folder.find_export(weights)
        if export is None:
            raise ModelError(f"--pretrained-path {path} is a folder without {run_folder.WEIGHTS} and "
                             f"{run_folder.CONFIG} (in it or in {run_folder.MODEL}/)")
        weights = export / run_folder.WEIGHTS
    elif not weights.is_file():
        raise ModelError(f"--pretrained-path {path} does not exist")
    overlay = dict(file=os.path.abspath(weights), num_classes=-1)
    if weights.name == run_folder.WEIGHTS and run_folder.is_export(weights.parent):
        overlay.update(export_as_pretrained_cfg(weights.parent))
    return overlay


def _checked_export(spec: str, num_classes: Optional[int], exact: bool) -> Optional[Path]:
    """The export folder a ``local-dir:`` spec names (None for anything else), its config checked against its
    weights; with ``exact``, a ``num_classes`` other than the weights' is refused."""
    export = Path(spec[len("local-dir:"):]) if spec.startswith("local-dir:") else None
    if export is None or not run_folder.is_export(export):
        return None
    stored = export_classes(export)
    if exact and stored is not None and num_classes is not None and num_classes != stored:
        raise ModelError(f"--num-classes {num_classes} contradicts {export / run_folder.WEIGHTS}, whose classifier "
                         f"has {stored} outputs")
    return export


def _load_exactly(model: torch.nn.Module, spec: str, checkpoint: str, flag: str) -> None:
    try:
        timm.models.load_checkpoint(model, checkpoint, strict=True)
    except (RuntimeError, KeyError, SafetensorError) as exn:
        raise ModelError(f"{flag} {checkpoint} does not fit '{spec}': {load_error_line(exn)}") from None
