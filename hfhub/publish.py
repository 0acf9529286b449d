"""Publish a timm-fcl checkpoint to the Hugging Face Hub as model.safetensors + timm config.json + a model card.

    python -m hfhub.publish OUTPUT_DIR --repo-id ORG/NAME [--ema] [--eval eval/results.json | --no-eval] [--dry-run FOLDER]

OUTPUT_DIR is a train_fcl.py run folder (``timm_fcl.run.folder``: its model export, or with --ema its EMA export, is
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
from safetensors import SafetensorError, safe_open

from timm_fcl.robustness.units import check_unit
from timm_fcl.run import folder as run_folder
from timm_fcl.run.atomic import file_sha256
from timm_fcl.run.cli import OneLineParser, UsageError, first_line, run_cli
from timm_fcl.run.export import INHERITED_PROVENANCE, describe_run, run_tag

from .cli import DESCRIPTION, add_arguments
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


def inside(path: Path, root: Path) -> Path:
    """``path`` with its symlinks resolved, refused when that leaves ``root``: a link in a run folder to a file
    elsewhere (another run's weights, a private file) is never published."""
    real, real_root = path.resolve(), root.resolve()
    if real != real_root and real_root not in real.parents:
        raise PublishError(f"{path} points to {real}, outside {root}: refusing to publish a file from outside the run")
    return real


def check_export(export: Path, root: Path) -> tuple[dict, Path, Path]:
    """The export's timm config and the real paths of its weights and config (both inside ``root``)."""
    weights, config_path = inside(export / run_folder.WEIGHTS, root), inside(export / run_folder.CONFIG, root)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise PublishError(f"{export / run_folder.CONFIG} is not JSON ({first_line(exn)})") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise PublishError(f"{export / run_folder.CONFIG} is not a timm config (no 'architecture')")
    try:  # the header only: a pickle (or anything else) renamed model.safetensors fails here, unread
        with safe_open(str(weights), framework="numpy") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as exn:
        raise PublishError(f"{export / run_folder.WEIGHTS} is not a safetensors file ({first_line(exn)})") from None
    if not keys:
        raise PublishError(f"{export / run_folder.WEIGHTS} holds no tensors")
    return config, weights, config_path


def read_eval_results(path: Path) -> dict:
    """The results.json of ``python -m timm_fcl.eval`` (``{label: {"spec", "rows", "summaries", "unit"}}``), checked
    (accuracies in percent)."""
    try:
        results = json.loads(path.read_text())
        check_eval_results(results)
        return results
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exn:
        raise PublishError(f"{path} is not a results.json of timm_fcl.eval: {first_line(exn)}") from None


def check_eval_results(results) -> None:
    """Every entry is in percent and has rows with suite, severity and an accuracy, and summaries of means, all in
    [0, 100]."""
    if not isinstance(results, dict) or not results:
        raise ValueError("expected {model: {spec, rows, summaries}}")
    for label, result in results.items():
        if not isinstance(result, dict) or not isinstance(result.get("rows"), list) \
                or not isinstance(result.get("summaries", {}), dict):
            raise ValueError(f"{label!r} has no list of rows")
        check_unit(result, repr(label))
        top = 100
        for row in result["rows"]:
            if not isinstance(row, dict) or not isinstance(row.get("suite"), str) \
                    or not isinstance(row.get("severity"), int) or not _within(row.get("accuracy"), top):
                raise ValueError(f"{label!r}: a row without suite, severity and an accuracy in [0, {top}]: "
                                 f"{row!r}"[:200])
        for suite, summary in result.get("summaries", {}).items():
            numbers = [v for k, v in summary.items() if k.startswith("mean_")] if isinstance(summary, dict) else [0]
            if not isinstance(summary, dict) or not all(v is None or _within(v, top) for v in numbers):
                raise ValueError(f"{label!r}: the summary of {suite!r} is malformed")


def _within(value, top: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= top


def without_local_paths(results: dict) -> dict:
    """The results with the ``spec`` of a model named by a folder (``local-dir:PATH`` or PATH) reduced to its run
    name, and the weights file of a ``checkpoint PATH`` source to its name: the published file says which run and
    file, not where they lay on the disk."""
    def public(spec: str) -> str:
        path = spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec
        return run_folder.run_name(path) if spec.startswith("local-dir:") or Path(path).is_absolute() \
            or Path(path).exists() else spec

    def public_weights(weights: str) -> str:
        kind, _, path = weights.partition(" ")
        return f"{kind} {Path(path).name}" if kind == "checkpoint" and path else weights

    def public_result(result: dict) -> dict:
        result = dict(result)
        if "spec" in result:
            result["spec"] = public(str(result["spec"]))
        if isinstance(result.get("weights"), str):
            result["weights"] = public_weights(result["weights"])
        return result
    return {label: public_result(result) for label, result in results.items()}


def find_eval_json(export: Path, run: Path, eval_json: Optional[Path]) -> Optional[Path]:
    """--eval as given, else the export's own eval/results.json, else the run's (a link out of the run is refused)."""
    if eval_json is not None:
        if not Path(eval_json).is_file():
            raise PublishError(f"evaluation results {eval_json} not found")
        return Path(eval_json)
    for candidate in dict.fromkeys([export / "eval" / "results.json", run / run_folder.EVAL_RESULTS]):
        if candidate.is_file():
            return inside(candidate, run)
    return None


def results_of_export(results: dict, *, export: Path, run: Path, weights: Path, where: Path, given: bool) -> dict:
    """The entries of ``results`` (read from ``where``) measured on this export's weights: those whose
    ``weights_sha256`` (recorded by timm_fcl.eval) is the SHA-256 of ``weights``. A results file that records digests,
    none of them this export's, is refused (a run's eval/results.json measures its model/, not its model_best/ or
    model_ema/); one from before digests is taken for the export it lies in, for the run's model/ export (what
    ``timm_fcl.eval --model RUN`` measures) and when given with --eval."""
    digest = file_sha256(weights)
    recorded = {label: r for label, r in results.items() if r.get("weights_sha256")}
    mine = {label: r for label, r in recorded.items() if r["weights_sha256"] == digest}
    if mine:
        return mine
    fix = (f"evaluate this export (python -m timm_fcl.eval --model {export} ... --output {export / 'eval'}), "
           "give its results with --eval, or publish without numbers (--no-eval)")
    if recorded:
        raise PublishError(f"{where} was measured on other weights than {export / run_folder.WEIGHTS}: {fix}")
    if not (given or where.parent.parent == export or export in (run, run / run_folder.MODEL)):
        raise PublishError(f"{where} does not record which weights it measured, and {export} is not the run's "
                           f"{run_folder.MODEL}/ export it would be of: {fix}")
    return results


def stage(folder: Path, target: Path, *, repo_id: str, ema: bool = False, eval_json: Optional[Path] = None,
          license: str = "apache-2.0", no_eval: bool = False) -> Path:
    """Write the folder to upload: the export's weights and config, README.md and the evaluation JSON of exactly
    these weights (refused when there is none, unless ``no_eval``)."""
    export = find_export(folder, ema)
    run = run_folder.run_of(export)
    config, weights, config_path = check_export(export, run)
    eval_results = None
    if not no_eval:
        where = find_eval_json(export, run, eval_json)
        if where is None:
            raise PublishError(f"no evaluation of {export}: run python -m timm_fcl.eval --model {export} ... --output "
                               f"{export / 'eval'} first, or publish without numbers (--no-eval)")
        eval_results = without_local_paths(results_of_export(
            read_eval_results(where), export=export, run=run, weights=weights, where=where,
            given=eval_json is not None))
    train_args = run_folder.read_args(run)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target / run_folder.WEIGHTS)
    shutil.copyfile(config_path, target / run_folder.CONFIG)
    if set(INHERITED_PROVENANCE) & set(config.get("pretrained_cfg", {})):  # exported before export_model cleaned it
        tag = run_tag(train_args.get("method") or "timm_fcl", train_args.get("dataset"))
        describe_run(target / run_folder.CONFIG, tag)
    if eval_results:
        (target / "eval_results.json").write_text(json.dumps(eval_results, indent=1))
    card = build_model_card(repo_id, config, train_args=train_args, eval_results=eval_results,
                            resolved=run_folder.read_resolved(run), license=license,
                            run_name=run_folder.run_name(export))
    (target / "README.md").write_text(card)
    return target


def stage_dry_run(folder: Path, target: Path, *, overwrite: bool = False, **kwargs) -> Path:
    """Stage into ``target``: a non-empty one only with ``overwrite``, and then only one that an earlier dry run
    wrote (it holds nothing a staging does not write), never the run folder, one holding it, or any other folder.
    Staged beside it first, so a refused publish leaves it as it was."""
    target = Path(target)
    replace = target.exists() and (not target.is_dir() or any(target.iterdir()))
    if replace:
        if not overwrite:
            raise PublishError(f"--dry-run folder {target} is not empty: choose another or add --overwrite")
        if not target.is_dir() or target.resolve() in (Path(folder).resolve(), *Path(folder).resolve().parents):
            raise PublishError(f"--dry-run {target} would overwrite {folder} itself: choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = stage(folder, Path(tmp) / "staged", **kwargs)
        if replace:
            other = sorted(p.name for p in target.iterdir() if not (staged / p.name).exists())
            if other:  # --overwrite replaces an earlier dry run, never files it did not write
                raise PublishError(f"--dry-run {target} holds files a dry run does not write ({', '.join(other[:4])}"
                                   f"{' ...' if len(other) > 4 else ''}): --overwrite replaces only an earlier dry "
                                   f"run's folder; choose another folder")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(staged, target)
    return target


def publish(folder: Path, *, repo_id: str, ema: bool = False, eval_json: Optional[Path] = None, private: bool = False,
            license: str = "apache-2.0", dry_run: Optional[Path] = None, overwrite: bool = False,
            no_eval: bool = False) -> str:
    if "/" not in repo_id:
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    kwargs = dict(repo_id=repo_id, ema=ema, eval_json=eval_json, license=license, no_eval=no_eval)
    if dry_run is not None:
        return str(stage_dry_run(folder, dry_run, overwrite=overwrite, **kwargs))
    from huggingface_hub import create_repo, upload_folder

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage(folder, Path(tmp), **kwargs)
        url = create_repo(repo_id, private=private, exist_ok=True)
        upload_folder(repo_id=repo_id, folder_path=str(staged), commit_message="Upload timm-fcl checkpoint")
    return str(url)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    return add_arguments(OneLineParser(prog=PROG, description=DESCRIPTION, add_help=add_help))


def main(args: argparse.Namespace) -> str:
    where = publish(args.folder, repo_id=args.repo_id, ema=args.ema, eval_json=args.eval_json, private=args.private,
                    license=args.license, dry_run=args.dry_run, overwrite=args.overwrite, no_eval=args.no_eval)
    print(f"{'wrote' if args.dry_run else 'published'} {where}")
    return where


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Run main; bad input, a malformed file or a refused upload ends as one error line (exit 2)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    return run_cli(PROG, lambda a: main(get_args_parser().parse_args(a)), argv,
                   errors=(json.JSONDecodeError, yaml.YAMLError, HfHubHTTPError, LocalTokenNotFoundError))


if __name__ == "__main__":
    sys.exit(cli())
