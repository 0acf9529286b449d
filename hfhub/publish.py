"""Publish a timm-fcl checkpoint to the Hugging Face Hub as model.safetensors + timm config.json + a model card.

    python -m hfhub.publish OUTPUT_DIR --repo-id ORG/NAME [--ema] [--eval eval/results.json] [--dry-run FOLDER]

OUTPUT_DIR is a train_fcl.py output folder (its ``model/`` or, with --ema, ``model_ema/`` export is published, and its
``args.yaml`` fills the card) or an export folder holding model.safetensors + config.json. --dry-run writes exactly the
folder that would be uploaded and uploads nothing. The token comes from huggingface_hub's usual sources (HF_TOKEN,
``huggingface-cli login``); it is never written or printed.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml
from safetensors import safe_open

from .model_card import build_model_card

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


class PublishError(Exception):
    """A problem with the user's input, reported as one line."""


def find_export(folder: Path, ema: bool = False) -> Path:
    """The folder holding model.safetensors + config.json to publish."""
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a folder")
    candidates = [folder / "model_ema"] if ema else [folder / "model", folder]
    for c in candidates:
        if (c / "model.safetensors").is_file() and (c / "config.json").is_file():
            return c
    pickles = sorted(p.name for c in candidates if c.is_dir() for p in c.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise PublishError(f"{folder} holds only pickled weights ({', '.join(pickles)}); timm-fcl publishes safetensors "
                           "only (pickles can run code when loaded): export the model as model.safetensors first")
    what = "model_ema/ (train with --model-ema)" if ema else "model.safetensors + config.json (or model/)"
    raise PublishError(f"{folder} has no {what} to publish")


def check_export(export: Path) -> dict:
    config = json.loads((export / "config.json").read_text())
    if "architecture" not in config:
        raise PublishError(f"{export / 'config.json'} is not a timm config (no 'architecture')")
    with safe_open(str(export / "model.safetensors"), framework="pt") as f:
        if not list(f.keys()):
            raise PublishError(f"{export / 'model.safetensors'} holds no tensors")
    return config


def stage(folder: Path, target: Path, repo_id: str, ema: bool = False, eval_json: Optional[Path] = None,
          license: str = "apache-2.0") -> Path:
    """Write the folder to upload: model.safetensors, config.json, README.md (and the evaluation JSON)."""
    export = find_export(folder, ema)
    config = check_export(export)
    args_file = folder / "args.yaml"
    train_args = yaml.safe_load(args_file.read_text()) if args_file.is_file() else {}
    if eval_json is None and (folder / "eval" / "results.json").is_file():
        eval_json = folder / "eval" / "results.json"
    if eval_json is not None and not Path(eval_json).is_file():
        raise PublishError(f"evaluation results {eval_json} not found")
    eval_results = json.loads(Path(eval_json).read_text()) if eval_json else None
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export / "model.safetensors", target / "model.safetensors")
    shutil.copyfile(export / "config.json", target / "config.json")
    if eval_results:
        (target / "eval_results.json").write_text(json.dumps(eval_results, indent=1))
    card = build_model_card(repo_id, config, train_args, eval_results, license=license)
    (target / "README.md").write_text(card)
    return target


def publish(folder: Path, repo_id: str, ema: bool = False, eval_json: Optional[Path] = None, private: bool = False,
            license: str = "apache-2.0", dry_run: Optional[Path] = None) -> str:
    if "/" not in repo_id:
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    if dry_run is not None:
        stage(folder, Path(dry_run), repo_id, ema, eval_json, license)
        return str(dry_run)
    from huggingface_hub import create_repo, upload_folder

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage(folder, Path(tmp), repo_id, ema, eval_json, license)
        url = create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        upload_folder(repo_id=repo_id, folder_path=str(staged), commit_message="Upload timm-fcl checkpoint")
    return str(url)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Publish a timm-fcl checkpoint to the Hugging Face Hub", add_help=add_help)
    p.add_argument("folder", type=Path, help="train_fcl.py output folder, or a folder with model.safetensors + config.json")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--ema", action="store_true", help="publish the EMA weights (model_ema/)")
    p.add_argument("--eval", dest="eval_json", type=Path, default=None,
                   help="results.json of python -m timm_fcl.eval (default: FOLDER/eval/results.json if present)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dry-run", type=Path, default=None, metavar="FOLDER",
                   help="write the exact folder that would be uploaded here, and upload nothing")
    return p


def main(args: argparse.Namespace) -> str:
    where = publish(args.folder, args.repo_id, args.ema, args.eval_json, args.private, args.license, args.dry_run)
    print(f"{'wrote' if args.dry_run else 'published'} {where}")
    return where


if __name__ == "__main__":
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        main(get_args_parser().parse_args())
    except (PublishError, json.JSONDecodeError, yaml.YAMLError, HfHubHTTPError, LocalTokenNotFoundError) as e:
        sys.exit(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
