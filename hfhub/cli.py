"""The flags of ``hfhub.publish`` and the ``timm-fcl-publish`` console script.

Declared with the standard library only, so that ``--help`` answers without importing ``hfhub.publish``: that imports
timm_fcl, and with it torch and timm (seconds, and not installed where only the command's help is wanted)."""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

DESCRIPTION = "Publish a timm-fcl checkpoint to the Hugging Face Hub"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("folder", type=Path,
                   help="train_fcl.py output folder, or a folder with model.safetensors + config.json")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--ema", action="store_true", help="publish the EMA weights (a run trained with --model-ema)")
    p.add_argument("--eval", dest="eval_json", type=Path, default=None,
                   help="results.json of python -m timm_fcl.eval measured on the published export (default: the "
                        "export's eval/results.json, else the run's, if it measured these weights)")
    p.add_argument("--no-eval", action="store_true", help="publish without robustness numbers")
    p.add_argument("--private", action="store_true")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dry-run", type=Path, default=None, metavar="FOLDER",
                   help="write the exact folder that would be uploaded here, and upload nothing")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --dry-run folder")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``timm-fcl-publish``: ``hfhub.publish``'s command; its help alone imports nothing heavy."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        add_arguments(argparse.ArgumentParser(prog="timm-fcl-publish", description=DESCRIPTION)).parse_args(argv)
    from .publish import cli

    return cli(argv)
