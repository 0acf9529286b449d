"""benchmarks/cifar_tables.py --headline: the root README's compact results table (the paper's methods: clean, UN, NUN,
CIFAR-10-C mean in percent, mean ± std over the seeds, the paper's values beside), from the committed results."""
import json
import re
import shutil
import statistics
import sys

from train_helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import cifar_common as common  # noqa: E402
import cifar_tables as tables  # noqa: E402

RUNS = common.RESULTS / "lr0.01-e24" / "runs"
LABELS = {"xe": "XE", "xe_gauss": "XE+Gaussian", "cl_gauss": "CL+Gaussian", "fcl": "FCL", "pg_xe": "PG+XE",
          "pg_fcl": "PG+FCL"}


def block(text: str, begin: str) -> str:
    start = text.index(begin) + len(begin)
    return text[start:text.index(tables.README_END, start)].strip()


def rows(table: str) -> dict:
    """{label: [cells after the label]} of the first body row of each label in a markdown text."""
    found = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("method", "---"):
            found.setdefault(cells[0], cells[1:])
    return found


def expected(name: str, key) -> str:
    values = [key(json.loads(p.read_text())) for p in sorted(RUNS.glob(f"{name}-s*.json"))]
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def test_headline_writes_the_papers_methods_from_the_committed_results_between_its_markers(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(common.RESULTS, results)
    readme = tmp_path / "README.md"
    above, below = "# timm-fcl\n\n", "\n\n## Install\n"
    readme.write_text(above + tables.HEADLINE_BEGIN + "\nold table\n" + tables.README_END + below)
    assert tables.main(["--results", str(results), "--headline", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(above + tables.HEADLINE_BEGIN + "\n") and text.endswith(tables.README_END + below)
    table = rows(block(text, tables.HEADLINE_BEGIN))
    assert list(table) == list(LABELS.values())  # only the methods the paper has, in its order
    for name, label in LABELS.items():
        seeds, clean, un, nun, c_mean, paper = table[label]
        assert seeds == "3"
        assert [clean, un, nun, c_mean] == [expected(name, lambda e, c=c: e[c]) for c in ("clean", "un", "nun")] + \
            [expected(name, lambda e: e["c10c"]["mean"])]
        method = common.METHODS[name]
        assert [float(v) for v in paper.split(" / ")] == [*method.paper_t2, method.paper_t3[0]]
    assert tables.main(["--results", str(results), "--headline", str(readme)]) == 0
    assert readme.read_text() == text  # a second run changes nothing


def test_the_readme_and_docs_hold_the_tables_of_the_committed_results():
    """README.md's headline block and the CIFAR benchmark README's Tables 2 and 3 are what cifar_tables.py writes from
    the committed results (rerun `python benchmarks/cifar_tables.py --readme benchmarks/cifar_robustness/README.md
    --headline README.md`)."""
    b = common.Bench(tables.get_args_parser().parse_args([]))
    runs = common.load_runs(b)
    readme = (ROOT / "README.md").read_text()
    assert block(readme, tables.HEADLINE_BEGIN) == tables.headline_block(b, runs)
    results = (ROOT / "benchmarks" / "cifar_robustness" / "README.md").read_text()
    fcl = rows(block(results, tables.README_BEGIN))["FCL"]
    assert fcl[1] == expected("fcl", lambda e: e["clean"]) and re.search(r"\]\(\.\./results/", results)
