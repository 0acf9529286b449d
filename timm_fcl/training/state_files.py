"""A state_dict as one safetensors file: its tensors as safetensors tensors, everything else (the nesting, numbers,
strings, tuples, the integer keys of an optimizer's state) as JSON in the file's header.

Optimizers, timm schedulers, loss scalers, modules and RNG streams all return such nested plain data, so one format
holds every part of a training state. Reading a file runs no unpickler: a planted or damaged file can only fail to
parse, and then it is reported as a :class:`StateError`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..run.atomic import fsync
from ..run.cli import UsageError, first_line

STRUCTURE_KEY = "timm_fcl.structure"
_PLAIN = (bool, int, float, str, type(None))


class StateError(UsageError):
    """A saved state file that is missing, truncated or not in this format."""


def _encode(obj: Any, tensors: dict) -> Any:
    """JSON for obj; its tensors go to ``tensors``. Every JSON object is a tag, so no dict key can pass for one."""
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        # a copy on the CPU: safetensors refuses tensors that share storage or are not contiguous
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"tensor": name}
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        return {"tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, dict) and all(isinstance(k, _PLAIN) for k in obj):
        return {"dict": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"a training state cannot hold a {type(obj).__name__}")


def _decode(node: Any, tensors: dict) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    (kind, value), = node.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in value)
    if kind == "dict":
        return {k: _decode(v, tensors) for k, v in value}
    raise ValueError(f"unknown entry {kind!r}")


def write_part(path: str | os.PathLike, state: Any) -> None:
    tensors: dict = {}
    structure = json.dumps(_encode(state, tensors))
    save_file(tensors, str(path), metadata={STRUCTURE_KEY: structure})
    fsync(path)


def read_part(path: str | os.PathLike) -> Any:
    """The state written by :func:`write_part`; StateError when the file is missing, cut short or not ours."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            structure = json.loads((f.metadata() or {})[STRUCTURE_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _decode(structure, tensors)
    except FileNotFoundError:
        raise StateError(f"{path.name} is missing") from None
    except Exception as exn:  # the content is untrusted: any parse failure means the file is not usable
        raise StateError(f"{path.name} is unreadable ({first_line(exn)})") from None
