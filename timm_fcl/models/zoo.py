"""Where the weights of a zoo tag (``resnet20_cifar.fcl_cifar10``) come from when it is created with
``pretrained=True``: the Hugging Face Hub copy (the repository its ``hf_hub_id`` names, downloaded or already in the
cache) when it can be had, else the copy installed with timm-fcl, so the tags load with no network right after
``pip install``.

The installed copy is the repository's ``zoo/`` folder: a wheel carries it as ``timm_fcl/zoo/`` (package data,
copied there when the wheel is built), a checkout or an editable install reads the repository's own ``zoo/``.
One log line says which copy was used; a tag neither can give is one error line naming both ways to get it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

_logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"  # as timm_fcl.run.folder names an export's weights (not imported: no cycle)
PACKAGED = Path(__file__).resolve().parents[1] / "zoo"  # a wheel install: timm_fcl/zoo/
CHECKOUT = Path(__file__).resolve().parents[2] / "zoo"  # a checkout or an editable install: the repository's zoo/


class ZooWeightsError(ValueError):
    """A zoo tag whose weights neither the Hub nor the installed zoo can give: reported as one line by the commands
    (``one_line``; the model registry imports nothing of the commands' modules, ``timm_fcl.run.cli`` included)."""
    one_line = True


def installed_zoo() -> Optional[Path]:
    """The zoo installed with timm-fcl: ``timm_fcl/zoo/`` of a wheel install, else the repository's ``zoo/`` beside
    the package (a checkout or an editable install); None when neither holds a model folder."""
    for root in (PACKAGED, CHECKOUT):
        if root.is_dir() and any((p / WEIGHTS).is_file() for p in root.iterdir() if p.is_dir()):
            return root
    return None


def installed_weights(name: str) -> Optional[Path]:
    """The installed zoo's weights file of the tag ``name`` (``ARCH.TAG``), or None."""
    root = installed_zoo()
    path = root / name / WEIGHTS if root is not None else None
    return path if path is not None and path.is_file() else None


def _why_not(exn: BaseException) -> str:
    """A few words on why the Hub copy could not be had."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the Hugging Face cache does not hold it"
    text = str(exn).strip()
    return f"{type(exn).__name__}: {text.splitlines()[0] if text else 'no message'}"


def zoo_weights(name: str, hf_hub_id: str) -> str:
    """The weights file to load for the zoo tag ``name``: the Hub copy ``hf_hub_id`` when it can be had (downloaded,
    or from the Hugging Face cache; with HF_HUB_OFFLINE=1 from the cache only), else the installed zoo's copy.
    Logs one line saying which; raises ZooWeightsError (one line naming both ways to get it) when neither exists."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(hf_hub_id, WEIGHTS)
        _logger.info(f"{name}: weights from the Hugging Face Hub copy {hf_hub_id} ({path})")
        return path
    except Exception as exn:  # noqa: BLE001  (offline, no network, no such repository, ...: the installed copy)
        reason = _why_not(exn)
    installed = installed_weights(name)
    if installed is not None:
        _logger.info(f"{name}: weights from the copy installed with timm-fcl ({installed}); the Hub copy "
                     f"{hf_hub_id} could not be had ({reason})")
        return str(installed)
    raise ZooWeightsError(
        f"{name}: no weights: the Hub copy {hf_hub_id} could not be had ({reason}) and timm-fcl installs no copy "
        f"of it; get it from the Hub (network access, HF_HUB_OFFLINE unset), or put a zoo folder holding {name}/ "
        f"into the Hugging Face cache with `python -m hfhub.zoo ZOO --fill-cache`")


def with_zoo_weights(variant: str, hub_org: str, kwargs: dict) -> dict:
    """An entrypoint's ``kwargs`` for ``build_model_with_cfg`` with the weights of a zoo tag resolved
    (``zoo_weights``) and given to timm as the pretrained cfg's ``file``. Left alone: anything but a zoo tag (an
    ``hf_hub_id`` outside ``hub_org``), and a cfg that names its own weights (``file``, ``url``, a state dict, an
    ``hf-hub:`` / ``local-dir:`` source)."""
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    if (not cfg.hf_hub_id or not cfg.hf_hub_id.startswith(f"{hub_org}/") or cfg.file or cfg.url or cfg.state_dict
            or cfg.source in ("hf-hub", "local-dir") or cfg.hf_hub_filename not in (None, WEIGHTS)):
        return kwargs
    name = f"{variant}.{cfg.tag}" if cfg.tag else variant
    file = zoo_weights(name, cfg.hf_hub_id)
    return dict(kwargs, pretrained_cfg_overlay={**(kwargs.get("pretrained_cfg_overlay") or {}), "file": file})



def show_source_on_stderr() -> None:
    """For a command that configures no logging (timm_fcl.eval): the line saying which copy of a zoo tag was loaded
    is printed on stderr, as it stands."""
    if not _logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
