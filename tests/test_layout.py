"""The package's layout: the algorithm at timm_fcl's top imports nothing of the trainer, the data, the run folder, the
robustness suite or the Hub code (so that it can be used, and read, on its own)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "timm_fcl"
ALGORITHM = ("__init__", "_compat", "batchnorm", "config", "heads", "losses", "patch_gaussian", "perturbations",
             "regularizer", "schedule", "sensitivity", "task", "utility")
COMMANDS = ("eval", "shards")  # thin modules at the python -m paths of the package's commands
OUTSIDE = ("timm_fcl.training", "timm_fcl.data", "timm_fcl.run", "timm_fcl.robustness", "hfhub", "train_fcl")


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against the timm_fcl package."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "timm_fcl" + ("." + node.module if node.module else "") if node.level else node.module
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_the_top_level_is_the_algorithm_and_the_commands():
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted(ALGORITHM + COMMANDS)


def test_algorithm_modules_import_nothing_of_the_trainer_data_runs_robustness_or_hub():
    for name in ALGORITHM:
        bad = sorted(m for m in _imported(PACKAGE / f"{name}.py") if m.startswith(OUTSIDE))
        assert not bad, f"timm_fcl/{name}.py imports {bad}"


def test_importing_the_public_api_loads_none_of_them():
    code = ("import sys, timm_fcl; print(sorted(m for m in sys.modules if m.startswith(%r)))" % (OUTSIDE,))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
