"""Every private API of a dependency that timm-fcl uses, in one place, each with the version it was checked on.

A private name can move or vanish in any release; when one breaks, this file is the only one to fix, and the tests
that import through it fail with the name of the function here.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Iterator, Optional


def save_timm_config(model, path: str, *, model_config: Optional[dict], data_config: dict) -> None:
    """timm's config.json for the Hub (``timm.models._hub.save_config_for_hf``; checked on timm 1.0.31, whose
    ``data_config=`` argument the export needs)."""
    from timm.models._hub import save_config_for_hf

    save_config_for_hf(model, path, model_config=model_config, data_config=data_config)


def load_wds_info(root: str) -> dict:
    """The parsed ``_info.json`` of a shard folder (``timm.data.readers.reader_wds._load_info``; timm 1.0.31)."""
    from timm.data.readers.reader_wds import _load_info

    return _load_info(root)


def parse_wds_split(split: str, info: dict):
    """timm's split parsing: a name listed in ``info`` or a brace pattern ``PATTERN|N``
    (``timm.data.readers.reader_wds._parse_split_info``; timm 1.0.31)."""
    from timm.data.readers.reader_wds import _parse_split_info

    return _parse_split_info(split, info)


def wds_shuffle(items: Iterable, *, bufsize: int, initial: int, rng: random.Random) -> Iterator:
    """webdataset's buffered shuffle with our own RNG, so an epoch's order can be replayed on resume
    (``webdataset.filters._shuffle``; webdataset 1.0.2)."""
    from webdataset.filters import _shuffle

    return _shuffle(items, bufsize=bufsize, initial=initial, rng=rng)


def double_backward_through_compiled_graphs():
    """A context in which torch.compile builds graphs without AOTAutograd's donated buffers
    (``torch._functorch.config.donated_buffer``; torch 2.14.1); the setting is restored on exit.

    Donated buffers save memory by freeing saved tensors during the first backward, which forbids the second backward
    through a compiled graph that the utility's input gradient (``retain_graph=True``) needs. The setting is read when
    a graph compiles and again by a backward that retains the graph, so both must run inside; a final backward outside
    needs no change.
    """
    import torch._functorch.config

    return torch._functorch.config.patch(donated_buffer=False)


def imagecorruptions_parts() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The motion-blur stand-in and the numba pixel shuffle of glass blur from the ``imagecorruptions-imaug`` package
    (``imagecorruptions.corruptions._motion_blur`` and ``_shuffle_pixels_njit_glass_blur``; version 1.1.5)."""
    from imagecorruptions.corruptions import _motion_blur, _shuffle_pixels_njit_glass_blur

    return _motion_blur, _shuffle_pixels_njit_glass_blur
