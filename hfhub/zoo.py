"""Publish the robust checkpoint zoo: every folder of zoo/ goes to the Hub repository its timm tag names.

    python -m hfhub.zoo [ZOO] --dry-run FOLDER     # write what would be uploaded, FOLDER/<tag>/ per model
    python -m hfhub.zoo [ZOO]                      # upload (token from huggingface_hub's usual sources)
    python -m hfhub.zoo [ZOO] --fill-cache [CACHE]  # install into a Hugging Face cache: the tags load offline

ZOO defaults to the zoo installed with timm-fcl (``timm_fcl/zoo/`` of an installed wheel, the repository's ``zoo/``
in a checkout or an editable install), so the commands work from any folder.

A zoo folder is named ``ARCH.TAG`` (e.g. ``resnet20_cifar.fcl_cifar10``), a pretrained tag registered in timm by
timm_fcl.models, whose ``hf_hub_id`` is the repository it is published to; so once published,
``timm.create_model("resnet20_cifar.fcl_cifar10", pretrained=True)`` downloads exactly that folder's weights. Each
folder is handed to ``python -m hfhub.publish`` (weights, config.json, model card from its args.yaml, resolved.yaml
and eval/results.json).
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from timm_fcl.run import folder as run_folder
from timm_fcl.run.cli import OneLineParser, UsageError, run_cli

PROG = "hfhub.zoo"
REPO = Path(__file__).resolve().parents[1]


def zoo_entries(zoo: Path) -> list[tuple[Path, str]]:
    """(folder, Hub repository) of every model in ``zoo``; a folder that is not a registered tag with an
    hf_hub_id, or holds no export, is an error."""
    import timm

    import timm_fcl  # noqa: F401  (registers the CIFAR ResNets and their zoo tags)

    if not zoo.is_dir():
        raise UsageError(f"{zoo} is not a folder (leave ZOO out for the zoo installed with timm-fcl)")
    entries = []
    for folder in sorted(p for p in zoo.iterdir() if p.is_dir()):
        try:
            cfg = timm.models.get_pretrained_cfg(folder.name) if "." in folder.name else None
        except RuntimeError:  # timm's answer to a tag it does not know
            cfg = None
        if cfg is None or not cfg.hf_hub_id or cfg.tag != folder.name.split(".", 1)[1]:
            raise UsageError(f"{folder}: '{folder.name}' is not a pretrained tag with an hf_hub_id in timm's "
                             f"registry (add it to timm_fcl/models)")
        if not run_folder.is_export(folder):
            raise UsageError(f"{folder} holds no {run_folder.WEIGHTS} + {run_folder.CONFIG}")
        entries.append((folder, cfg.hf_hub_id))
    if not entries:
        raise UsageError(f"{zoo} holds no model folder")
    return entries


def publish_zoo(zoo: Path, *, dry_run: Optional[Path] = None, quiet: bool = False) -> list[str]:
    """Run ``python -m hfhub.publish`` for every zoo entry; returns the repositories (dry run: the folders written)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = []
    dry_run = dry_run.absolute() if dry_run is not None else None
    for folder, repo_id in zoo_entries(zoo.absolute()):
        cmd = [sys.executable, "-m", "hfhub.publish", str(folder), "--repo-id", repo_id]
        if dry_run is not None:
            cmd += ["--dry-run", str(dry_run / folder.name)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise UsageError(f"publishing {folder.name} failed: {last}")
        if not quiet:
            print(proc.stdout.strip())
        done.append(str(dry_run / folder.name) if dry_run is not None else repo_id)
    return done


def _same_files(a: Path, b: Path) -> bool:
    """Whether two folders hold the same files with the same bytes (by SHA-256)."""
    from timm_fcl.run.atomic import file_sha256

    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    if names != sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()):
        return False
    return all(file_sha256(a / name) == file_sha256(b / name) for name in names)


def fill_cache(zoo: Path, cache: Path) -> list[str]:
    """Install every zoo entry into the Hugging Face hub cache ``cache`` exactly as a download would leave it (the
    folder ``hfhub.publish --dry-run`` stages, as the snapshot ``refs/main`` points to), so that
    ``timm.create_model("ARCH.TAG", pretrained=True)`` loads it with ``HF_HUB_OFFLINE=1``. The snapshot is named by a
    hash of its files, so a changed entry gets a new snapshot and an unchanged one is left alone; an installed snapshot
whose files were changed since (a swapped weights file) is installed again."""
    import hashlib
    import shutil
    import tempfile

    installed = []
    repo_ids = {folder.name: repo_id for folder, repo_id in zoo_entries(zoo)}
    with tempfile.TemporaryDirectory() as tmp:
        for staged in map(Path, publish_zoo(zoo, dry_run=Path(tmp), quiet=True)):
            repo_id = repo_ids[staged.name]
            digest = hashlib.sha1()
            for path in sorted(p for p in staged.rglob("*") if p.is_file()):
                digest.update(str(path.relative_to(staged)).encode() + b"\0" + path.read_bytes())
            repo = cache / ("models--" + repo_id.replace("/", "--"))
            snapshot = repo / "snapshots" / digest.hexdigest()
            if snapshot.is_dir() and not _same_files(staged, snapshot):  # changed since it was installed: repaired
                print(f"{snapshot} differs from {staged.name} in the zoo: installed again")
                shutil.rmtree(snapshot)
            if not snapshot.is_dir():
                shutil.copytree(staged, snapshot.with_name(snapshot.name + ".tmp"), dirs_exist_ok=True)
                snapshot.with_name(snapshot.name + ".tmp").replace(snapshot)
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / "main").write_text(snapshot.name)
            print(f"{staged.name} -> {snapshot}")
            installed.append(repo_id)
    return installed


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Publish every model of the zoo to the Hugging Face Hub",
                      add_help=add_help)
    p.add_argument("zoo", type=Path, nargs="?", default=None,
                   help="the zoo folder (default: the zoo installed with timm-fcl, the repository's zoo/ in a checkout)")
    p.add_argument("--dry-run", type=Path, default=None, metavar="FOLDER",
                   help="write the exact folders that would be uploaded here (one per model), upload nothing")
    p.add_argument("--fill-cache", type=Path, nargs="?", const=None, default=False, metavar="CACHE",
                   help="install the zoo into this Hugging Face hub cache (default: huggingface_hub's, i.e. "
                   "HF_HUB_CACHE) so that its pretrained tags load offline; upload nothing")
    return p


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Publish the zoo; a bad folder or a refused upload ends as one error line (exit 2)."""
    def main(args: argparse.Namespace) -> list[str]:
        if args.zoo is None:
            from timm_fcl.models.zoo import installed_zoo

            args.zoo = installed_zoo()
            if args.zoo is None:
                raise UsageError("timm-fcl was installed without its zoo (no timm_fcl/zoo/, no zoo/ beside the "
                                 "package): give the zoo folder")
        if args.fill_cache is not False:
            if args.dry_run is not None:
                raise UsageError("--fill-cache and --dry-run are two different things: give one")
            from huggingface_hub import constants
            return fill_cache(args.zoo, Path(args.fill_cache or constants.HF_HUB_CACHE))
        return publish_zoo(args.zoo, dry_run=args.dry_run)

    return run_cli(PROG, lambda a: main(get_args_parser().parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(cli())
