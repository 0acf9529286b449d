import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(marker) + r"\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README.md has no code block after {marker}"
    return match.group(1)


def test_readme_regularizer_example_runs_and_applies_fcl():
    code = block_after("<!-- example:regularizer -->")
    assert len(code.strip().splitlines()) <= 16
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("step")]
    assert len(lines) == 3
    assert all(float(l.split("fcl ")[1].split()[0]) > 0 for l in lines)


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "ci:setup" in ci and "ci:test" in ci
    assert "pip install" in block_after("<!-- ci:setup -->") and "pytest" in block_after("<!-- ci:test -->")


def test_readme_timm_recipe_is_timms_flags_plus_fcl_and_passes_every_start_up_check(tmp_path):
    """The README's timm recipe parses and passes train_fcl.py's start-up checks as it stands (a data folder
    substituted), and apart from --method / --fcl-* it uses timm train.py's flags only."""
    import shlex

    from timm_fcl.training.checks import validate_args
    from timm_fcl.training.timm_parity import NOT_SUPPORTED, TIMM_TRAIN_FLAGS
    from train_fcl import get_args_parser, parse_args

    words = shlex.split(block_after("<!-- recipe:timm-imagenet -->").replace("\\\n", " "))
    argv = words[words.index("train_fcl.py") + 1:]
    argv[argv.index("--data-dir") + 1] = str(tmp_path)
    timm_flags = {o for options, dest, _ in TIMM_TRAIN_FLAGS if dest not in NOT_SUPPORTED for o in options}
    ours = [w for w in argv if w.startswith("-") and not w.startswith(("--method", "--fcl-"))]
    assert ours and set(ours) <= timm_flags, set(ours) - timm_flags
    args = parse_args(argv)
    validate_args(args, get_args_parser())
    assert (args.method, args.opt, args.bce_loss, args.bce_target_thresh, args.mixup, args.cutmix) == \
        ("fcl", "lamb", True, 0.2, 0.1, 1.0)
