"""README.md and docs/*.md: the snippets they mark run as written, CI runs the README's own commands, and every relative
link resolves (there and in the benchmarks' pages). The rule for snippets, the same in every page: the fenced block after `<!-- example:NAME -->` is Python
and runs as it stands; the block after `<!-- recipe:NAME -->` is a `train_fcl.py` command that parses and passes the
start-up checks. Unmarked blocks (data on other machines, GPUs, the Hub) are documentation only."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the benchmarks' pages (protocols, tables, the log) are linked from the docs: their links are checked too
LINKED = [*PAGES, *sorted((ROOT / "benchmarks").glob("**/*.md"))]
MARKED = re.compile(r"<!-- (example|recipe):([\w-]+) -->\s*```\w*\n(.*?)```", re.S)


def block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(marker) + r"\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README.md has no code block after {marker}"
    return match.group(1)


def snippets(kind: str) -> list:
    return [pytest.param(code, id=f"{page.relative_to(ROOT)}:{name}") for page in PAGES
            for k, name, code in MARKED.findall(page.read_text()) if k == kind]


def test_the_pages_mark_the_snippets_the_tests_run():
    names = [(page.name, k, name) for page in PAGES for k, name, _ in MARKED.findall(page.read_text())]
    assert ("README.md", "example", "regularizer") in names and ("timm-compat.md", "recipe", "timm-imagenet") in names
    assert len({(k, n) for _, k, n in names}) == len(names), "two snippets share a name"


@pytest.mark.parametrize("code", snippets("example"))
def test_every_example_runs(code, request):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    if request.node.callspec.id.endswith(":regularizer"):  # the README's own loop: short, and FCL applied
        assert len(code.strip().splitlines()) <= 16
        lines = [l for l in proc.stdout.splitlines() if l.startswith("step")]
        assert len(lines) == 3
        assert all(float(l.split("fcl ")[1].split()[0]) > 0 for l in lines)


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "ci:setup" in ci and "ci:test" in ci
    assert "pip install" in block_after("<!-- ci:setup -->") and "pytest" in block_after("<!-- ci:test -->")


# the one flag of ours a recipe may use besides FCL's: CIFAR's pad-and-crop, which timm's train.py has no flag for
OWN_AUGMENTATION = {"--crop-pad"}


@pytest.mark.parametrize("command", snippets("recipe"))
def test_every_recipe_is_timms_flags_plus_fcl_and_passes_every_start_up_check(command, request, tmp_path):
    """A recipe parses and passes train_fcl.py's start-up checks as it stands (its data and output folders
    substituted), and apart from --method / --fcl-* (and CIFAR's --crop-pad) it uses timm train.py's flags only."""
    from timm_fcl.training.checks import validate_args
    from timm_fcl.training.timm_parity import NOT_SUPPORTED, TIMM_TRAIN_FLAGS
    from train_fcl import get_args_parser, parse_args

    words = shlex.split(command.replace("\\\n", " "))
    argv = words[words.index("train_fcl.py") + 1:]
    for flag, folder in (("--data-dir", tmp_path / "data"), ("--output", tmp_path / "run")):
        if flag in argv:
            folder.mkdir()
            argv[argv.index(flag) + 1] = str(folder)
    timm_flags = {o for options, dest, _ in TIMM_TRAIN_FLAGS if dest not in NOT_SUPPORTED for o in options}
    ours = [w for w in argv if w.startswith("-") and not w.startswith(("--method", "--fcl-"))]
    assert ours and set(ours) <= timm_flags | OWN_AUGMENTATION, set(ours) - timm_flags
    args = parse_args(argv)
    validate_args(args, get_args_parser())
    if request.node.callspec.id.endswith(":timm-imagenet"):
        assert (args.method, args.opt, args.bce_loss, args.bce_target_thresh, args.mixup, args.cutmix) == \
            ("fcl", "lamb", True, 0.2, 0.1, 1.0)


def github_anchors(text: str):
    """The anchors GitHub gives a page's headings (fenced code left out): lower case, punctuation dropped, spaces
    turned into hyphens, a repeated heading numbered -1, -2, ..."""
    seen: dict = {}
    for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def relative_links(text: str) -> list:
    """The targets of `[text](target)` and `![alt](target)` outside code, less web and mail addresses."""
    text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page.read_text()):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in set(github_anchors(file.read_text())):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"
