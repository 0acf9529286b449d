"""Publish a timm-fcl checkpoint to the Hugging Face Hub as model.safetensors + timm config.json + a model card.

    python -m hfhub.publish OUTPUT_DIR --repo-id ORG/NAME [--ema] [--eval eval/results.json] [--dry-run FOLDER]

OUTPUT_DIR is a train_fcl.py run folder (``timm_fcl.run_folder``: its model export, or with --ema its EMA export, is
published, and the flags and resolved settings it recorded fill the card) or an export folder itself. --dry-run writes
exactly the folder that would be uploaded and uploads nothing. The token comes from huggingface_hub's usual sources
(HF_TOKEN, ``huggingface-cli login``); it is never written or printed.
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import yaml
from safetensors import safe_open

from timm_fcl import run_folder
from timm_fcl._cli import OneLineParser, UsageError, run_cli

from .model_card import build_model_card

PROG = "hfhub.publish"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


class PublishError(UsageError):
    """A problem with the user's input, reported as one line."""


def find_export(folder: Path, ema: bool = False) -> Path:
    """The export to publish (``run_folder.find_export``), or a one-line reason why there is none."""
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a folder")
    export = run_folder.find_export(folder, ema=ema)
    if export is not None:
        return export
    candidates = [folder / run_folder.MODEL_EMA] if ema else [folder / run_folder.MODEL, folder]
    pickles = sorted(p.name for c in candidates if c.is_dir() for p in c.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise PublishError(f"{folder} holds only pickled weights ({', '.join(pickles)}); timm-fcl publishes safetensors "
                           f"only (pickles can run code when loaded): export the model as {run_folder.WEIGHTS} first")
    what = (f"{run_folder.MODEL_EMA}/ (train with --model-ema)" if ema else
            f"{run_folder.WEIGHTS} + {run_folder.CONFIG} (or {run_folder.MODEL}/)")
    raise PublishError(f"{folder} has no {what} to publish")


def check_export(export: Path) -> dict:
    config = json.loads((export / run_folder.CONFIG).read_text())
    if "architecture" not in config:
        raise PublishError(f"{export / run_folder.CONFIG} is not a timm config (no 'architecture')")
    with safe_open(str(export / run_folder.WEIGHTS), framework="pt") as f:
        if not list(f.keys()):
            raise PublishError(f"{export / run_folder.WEIGHTS} holds no tensors")
    return config


def stage(folder: Path, target: Path, *, repo_id: str, ema: bool = False, eval_json: Optional[Path] = None,
          license: str = "apache-2.0") -> Path:
    """Write the folder to upload: the export's weights and config, README.md (and the evaluation JSON)."""
    export = find_export(folder, ema)
    config = check_export(export)
    run = run_folder.run_of(export)
    if eval_json is None and (run / run_folder.EVAL_RESULTS).is_file():
        eval_json = run / run_folder.EVAL_RESULTS
    if eval_json is not None and not Path(eval_json).is_file():
        raise PublishError(f"evaluation results {eval_json} not found")
    eval_results = json.loads(Path(eval_json).read_text()) if eval_json else None
    target.mkdir(parents=True, exist_ok=True)
    for name in (run_folder.WEIGHTS, run_folder.CONFIG):
        shutil.copyfile(export / name, target / name)
    if eval_results:
        (target / "eval_results.json").write_text(json.dumps(eval_results, indent=1))
    card = build_model_card(repo_id, config, train_args=run_folder.read_args(run), eval_results=eval_results,
                            resolved=run_folder.read_resolved(run), license=license)
    (target / "README.md").write_text(card)
    return target


def publish(folder: Path, *, repo_id: str, ema: bool = False, eval_json: Optional[Path] = None, private: bool = False,
            license: str = "apache-2.0", dry_run: Optional[Path] = None) -> str:
    if "/" not in repo_id:
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    if dry_run is not None:
        stage(folder, Path(dry_run), repo_id=repo_id, ema=ema, eval_json=eval_json, license=license)
        return str(dry_run)
    from huggingface_hub import create_repo, upload_folder

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage(folder, Path(tmp), repo_id=repo_id, ema=ema, eval_json=eval_json, license=license)
        url = create_repo(repo_id, private=private, exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=str(staged), commit_message="Upload timm-fcl checkpoint")
    return str(url)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Publish a timm-fcl checkpoint to the Hugging Face Hub", add_help=add_help)
    p.add_argument("folder", type=Path, help="train_fcl.py output folder, or a folder with model.safetensors + config.json")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    p.add_argument("--ema", action="store_true", help="publish the EMA weights (a run trained with --model-ema)")
    p.add_argument("--eval", dest="eval_json", type=Path, default=None,
                   help="results.json of python -m timm_fcl.eval (default: FOLDER/eval/results.json if present)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--dry-run", type=Path, default=None, metavar="FOLDER",
                   help="write the exact folder that would be uploaded here, and upload nothing")
    return p


def main(args: argparse.Namespace) -> str:
    where = publish(args.folder, repo_id=args.repo_id, ema=args.ema, eval_json=args.eval_json, private=args.private,
                    license=args.license, dry_run=args.dry_run)
    print(f"{'wrote' if args.dry_run else 'published'} {where}")
    return where


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Run main; bad input, a malformed file or a refused upload ends as one error line (exit 2)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    return run_cli(PROG, lambda a: main(get_args_parser().parse_args(a)), argv,
                   errors=(json.JSONDecodeError, yaml.YAMLError, HfHubHTTPError, LocalTokenNotFoundError))


if __name__ == "__main__":
    sys.exit(cli())
