"""The random streams a training process draws from, as plain data a state file holds (timm_fcl.training.state_files):
python's ``random``, numpy's global generator, torch's CPU generator and the accelerator device's generators.

A resumed run needs them back exactly: the regularizer's noise comes from torch's global generator (the data order
and augmentations are seeded by timm_fcl.data.streams itself, so they do not depend on these).
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

_logger = logging.getLogger(__name__)


def _device_module(device_type: str):
    return None if device_type == "cpu" else getattr(torch, device_type, None)


def _device_states(device_type: str) -> list:
    module = _device_module(device_type)
    if module is None:
        return []
    if hasattr(module, "get_rng_state_all"):
        return list(module.get_rng_state_all())
    return [module.get_rng_state()] if hasattr(module, "get_rng_state") else []


def capture(device_type: str) -> dict:
    """This process's random streams, for :func:`restore`."""
    np_state = np.random.get_state(legacy=False)
    return {"python": random.getstate(),
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "torch": torch.get_rng_state(),
            "device": {"type": device_type, "states": _device_states(device_type)}}


def _numpy_state(saved: dict) -> dict:
    return {"bit_generator": "MT19937", "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]},
            "has_gauss": saved["has_gauss"], "gauss": saved["gauss"]}


def check(state: dict) -> None:
    """Raise unless ``state`` would restore: set on throwaway generators, so nothing changes yet."""
    random.Random().setstate(state["python"])
    np.random.RandomState().set_state(_numpy_state(state["numpy"]))
    torch.Generator().set_state(state["torch"])
    if not isinstance(state["device"]["type"], str) or not isinstance(state["device"]["states"], list):
        raise ValueError("malformed device generator states")


def restore(state: dict, device_type: str) -> None:
    """Put the streams of :func:`capture` back; device streams only on the same kind and number of devices."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    saved = state["device"]
    if saved["type"] == device_type and len(saved["states"]) == len(_device_states(device_type)):
        module = _device_module(device_type)
        if hasattr(module, "set_rng_state_all"):
            module.set_rng_state_all(saved["states"])
        elif saved["states"]:
            module.set_rng_state(saved["states"][0])
    elif saved["states"] or device_type != "cpu":
        _logger.warning(f"the state's {saved['type']} random streams ({len(saved['states'])}) do not fit this "
                        f"machine's {device_type}: noise drawn on the device will differ from the saved run")
