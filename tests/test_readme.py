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
