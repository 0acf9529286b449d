"""benchmarks/cifar_robustness.py and its tables and zoo (cifar_tables.py, cifar_zoo.py, cifar_common.py): a smoke run
of every part on tiny data, the choices they make, and the tables computed from their inputs."""
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import sys
import time

import pytest

from timm_fcl.data.shards import write_shards
from timm_fcl.robustness.hits import pack_hits, unpack_counts, unpack_hits
from train_helpers import ROOT, synthetic_samples

sys.path.insert(0, str(ROOT / "benchmarks"))
import cifar_common as common  # noqa: E402
import cifar_robustness as bench  # noqa: E402
import cifar_tables as tables  # noqa: E402
import cifar_zoo as zoo  # noqa: E402


def parse(argv, parser=bench.get_args_parser):
    return common.Bench(parser().parse_args(argv))


def numbers(text: str) -> list:
    """The numbers in a piece of a table, in order ("89.21 ± 0.02" -> [89.21, 0.02])."""
    return [float(v) for v in re.findall(r"[-+]?\d+(?:\.\d+)?", text)]


def row(table: str, *first: str) -> list:
    """The cells after the first ones of the first markdown row that starts with ``first`` (Table 2's before
    Table 3's)."""
    lines = [line for line in table.splitlines() if line.startswith("| " + " | ".join(first) + " |")]
    assert lines, first
    return [c.strip() for c in lines[0].strip("|").split("|")][len(first):]


# The smoke run's methods: the paper's six and the variants whose tables it checks (every 4, other_class). Random
# selection and every 16 are FCL with one more flag each (test_every_variant_is_fcls_run_with_its_own_flags); leaving
# their two trainings out keeps the smoke run under a minute on two cores.
SMOKE_METHODS = [n for n in common.METHODS if n not in ("fcl_random", "fcl_every16")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every part but the sweep (paper settings), a few steps per method, on 32 px toy shards; the pre-training and
    the eight continuations are evaluated by one command."""
    root = tmp_path_factory.mktemp("cifar")
    data = root / "data"
    write_shards(synthetic_samples(160, size=32, seed=1), output=data, name="toy", split="train", shard_size=80,
                 num_classes=10)
    write_shards(synthetic_samples(32, size=32, seed=2), output=data, name="toy", split="test", shard_size=32,
                 num_classes=10)
    argv = ["--data-dir", str(data), "--work", str(root / "work"), "--results", str(root / "results"),
            "--zoo", str(root / "zoo"),
            "--pretrain-epochs", "1", "--continue-epochs", "1", "--val-size", "32", "-b", "32", "--train-subset", "64",
            "--val-subset", "16", "--test-samples", "8", "--corruption-samples", "8", "--corruptions",
            "gaussian_noise", "defocus_blur", "--seeds", "0", "--paper-settings", "--threads", "1", "--jobs", "3",
            "--eval-group", "9", "--methods", *SMOKE_METHODS, "--part", "carve", "pretrain", "protocol", "continue", "eval", "tables", "zoo"]
    assert bench.main(argv) == 0
    return root, argv


def test_smoke_run_fills_both_tables_for_every_method(smoke, capsys):
    root, _ = smoke
    results = root / "results" / "lr0.01-e1"
    paper = parse(["--paper-settings"])
    for name in SMOKE_METHODS:
        entry = json.loads((results / "runs" / f"{name}-s0.json").read_text())
        assert (entry["continue_lr"], entry["continue_epochs"]) == (0.01, 1) and entry["unit"] == "percent"
        assert entry["method"] == name and entry["hp"] == common.chosen_hp(paper, name)
        assert entry["precision"] == "bf16" and len(entry["commit"]) >= 40
        assert set(entry["c10c"]["per_corruption"]) == {"gaussian_noise", "defocus_blur"}
        assert entry["c10c"]["images"] == 8
        # which images were right: the accuracies in percent are the share of hits
        assert entry["images"] == {s: 8 for s in common.SUITES}
        for s in common.SUITES:
            assert entry[s] == pytest.approx(100 * unpack_hits(entry["hits"][s], 8).mean())
        assert entry["c10c"]["cells"] == 2 * 5  # two corruptions x five severities
        counts = unpack_counts(entry["c10c"]["hits_count"])
        assert len(counts) == 8 and 100 * counts.sum() / (8 * 10) == pytest.approx(entry["c10c"]["mean"])
    text = (results / "tables.md").read_text()
    for name in SMOKE_METHODS:
        method = common.METHODS[name]
        entry = json.loads((results / "runs" / f"{name}-s0.json").read_text())
        cells = row(text, method.label, "1")  # Table 2's row: one seed, its numbers, the paper's
        assert numbers(cells[0]) == [round(entry["clean"], 2)] and numbers(cells[2]) == [round(entry["nun"], 2)]
        assert numbers(cells[3]) == (list(method.paper_t2) if method.paper_t2 else [])
    assert row(text, "FCL", "XE+Gaussian") and row(text, "FCL every 4", "FCL") and row(text, "PG+FCL", "PG+XE")
    assert "| FCL random selection |" not in text and "| FCL every 16 |" not in text  # variants not run: no rows
    assert "### FCL every 4 steps against full FCL (seeds 0)" in text and row(text, "every 4 / full")
    assert "Protocol check: " in text
    assert (results / "table2.png").stat().st_size > 0 and (results / "table3.png").stat().st_size > 0
    # a finished part is skipped: nothing is trained or evaluated again
    evaluations = sorted((root / "work" / "eval" / "test").iterdir())
    capsys.readouterr()
    assert bench.main(smoke[1]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("training ")]
    assert sorted((root / "work" / "eval" / "test").iterdir()) == evaluations


def test_continuations_start_from_the_pretraining_with_the_methods_flags(smoke):
    root, _ = smoke
    import yaml
    runs = root / "work" / "runs"
    pg_fcl = yaml.safe_load((runs / "pg_fcl-k256-sigma0.5-tau1-weight0.0008-lr0.01-e1-s0" / "args.yaml").read_text())
    assert pg_fcl["method"] == "fcl" and pg_fcl["patch_gaussian"] and pg_fcl["crop_pad"] == 4
    # one command trained the pre-training too: its continuations start from its run folder, which the zoo copies
    assert pg_fcl["initial_checkpoint"] == str(runs / "pretrain" / "model" / "model.safetensors")
    pretrain = json.loads((root / "results" / "pretrain.json").read_text())
    result = json.loads((root / "results" / "lr0.01-e1" / "runs" / "pg_fcl-s0.json").read_text())
    assert result["initial_checkpoint_sha256"] == pretrain["sha256"]
    b = parse(smoke[1])
    assert b.pretrain_weights == root / "zoo" / "resnet20_cifar.xe_pretrain_cifar10" / "model.safetensors"  # later
    xe = yaml.safe_load((runs / "xe-default-lr0.01-e1-s0" / "args.yaml").read_text())
    assert xe["seed"] == pg_fcl["seed"] == 0 and xe["lr"] == 0.01 and not xe["patch_gaussian"]
    every = yaml.safe_load((runs / "fcl_every4-every4-k256-sigma0.5-tau2-weight0.0008-lr0.01-e1-s0" / "args.yaml").read_text())
    other = yaml.safe_load((runs / "fcl_other-k256-negativesother_class-sigma0.5-tau2-weight0.0008-lr0.01-e1-s0" /
                            "args.yaml").read_text())
    assert (every["fcl_every"], every["fcl_negatives"]) == (4, "all")
    assert (other["fcl_every"], other["fcl_negatives"]) == (1, "other_class") and other["fcl_k"] == 256


def test_pretraining_is_evaluated_and_exported_to_the_zoo(smoke):
    root, _ = smoke
    entry = json.loads((root / "results" / "pretrain.json").read_text())
    zoo = root / "zoo" / "resnet20_cifar.xe_pretrain_cifar10"
    assert entry["sha256"] == common.sha256(zoo / "model.safetensors")
    assert entry["sha256"] == common.sha256(root / "work" / "runs" / "pretrain" / "model" / "model.safetensors")
    assert entry["unit"] == "percent" and entry["c10c"]["images"] == 8
    evaluated = json.loads((zoo / "eval" / "results.json").read_text())["pretrain"]
    assert evaluated["unit"] == "percent" and evaluated["weights_sha256"] == entry["sha256"]
    assert bench.condense(evaluated)["clean"] == entry["clean"]
    card = (zoo / "README.md").read_text()
    assert "timm-fcl/resnet20_cifar.xe_pretrain_cifar10" in card
    assert f"| clean | top-1 accuracy | {entry['clean']:.2f} |" in card  # the card and the results: one unit


def test_protocol_check_scores_xe_gauss_against_xe_on_validation(smoke):
    root, argv = smoke
    b = parse(argv)
    verdict = json.loads((root / "results" / "protocol" / "lr0.01-e1.json").read_text())
    xe = json.loads((b.protocol_results / "sweep" / "xe-default.json").read_text())
    gauss = json.loads((b.protocol_results / "sweep" / "xe_gauss-sigma0.3-weight0.0008.json").read_text())
    assert verdict["split"] == "validation" and verdict["continue_lr"] == 0.01 and verdict["unit"] == "percent"
    assert verdict["gain"]["un"] == pytest.approx(gauss["un"] - xe["un"])
    assert verdict["passes"] == (verdict["gain"]["un"] >= common.MIN_GAUSS_GAIN)
    # the protocol's runs are the seed-0 continuations the test-set part evaluates: trained once
    assert (b.run_dir("xe_gauss", common.chosen_hp(b, "xe_gauss"), 0) / "bench_wall.json").is_file()
    assert len(list((root / "work" / "runs").glob("xe_gauss-*-s0"))) == 1


def test_every_variant_is_fcls_run_with_its_own_flags(tmp_path):
    """An FCL variant trains with FCL's objective and flags at FCL's settings, plus its own flag (what the smoke run
    checks by training every 4 and other_class, for the variants it leaves out)."""
    b = bench.Part(bench.get_args_parser().parse_args(["--zoo", str(tmp_path / "zoo"), "--work", str(tmp_path / "work"),
                                                       "--paper-settings"]))
    b.pretrain_zoo.mkdir(parents=True)
    (b.pretrain_zoo / "model.safetensors").write_bytes(b"weights")

    def flags(name):
        out = bench.continuation_flags(b, common.METHODS[name], common.chosen_hp(b, name))
        return dict(zip(out[::2], out[1::2]))

    fcl = flags("fcl")
    assert fcl["--method"] == "fcl" and fcl["--initial-checkpoint"] == str(b.pretrain_weights)
    for name, flag, value in (("fcl_every4", "--fcl-every", "4"), ("fcl_every16", "--fcl-every", "16"),
                              ("fcl_other", "--fcl-negatives", "other_class"),
                              ("fcl_random", "--fcl-selection", "random")):
        variant = flags(name)
        assert variant.pop(flag) == value and variant == fcl, name


def test_paper_settings_are_appendix_b_at_our_batch():
    b = parse(["--paper-settings"])
    lam = 1e-4 * 1024 / 128  # the paper's lambda weighs a sum over 1024 images, ours over 128
    assert common.chosen_hp(b, "xe_gauss") == {"sigma": 0.3, "weight": pytest.approx(lam)}
    assert common.chosen_hp(b, "cl_gauss") == {"sigma": 0.5, "tau": 0.5, "weight": pytest.approx(lam)}
    assert common.chosen_hp(b, "fcl") == {"k": 256, "sigma": 0.5, "tau": 2.0, "weight": pytest.approx(lam)}
    assert common.chosen_hp(b, "pg_fcl") == {"k": 256, "sigma": 0.5, "tau": 1.0, "weight": pytest.approx(lam)}


def test_the_defaults_are_the_protocol_that_passed():
    """lr 0.01 for 24 epochs in bf16, CL+Gaussian and PG+FCL at Appendix B's settings, the rest at the sweep's choice:
    the commands in the benchmark's README name no protocol flag they do not need."""
    for parser in (bench.get_args_parser, tables.get_args_parser, zoo.get_args_parser):
        b = parse([], parser)
        assert b.protocol == "lr0.01-e24" and b.args.paper_settings == ["cl_gauss", "pg_fcl"]
        assert [common.takes_paper_settings(b, n) for n in ("cl_gauss", "pg_fcl", "fcl", "xe_gauss")] == \
            [True, True, False, False]
    assert bench.get_args_parser().parse_args([]).precision == "bf16"


def test_paper_settings_for_some_methods_and_the_sweeps_choice_for_the_rest(tmp_path):
    """--paper-settings M ...: those methods take Appendix B's setting, the swept ones their choice (FCL's variants
    follow FCL's); a method neither named nor swept is refused."""
    argv = ["--results", str(tmp_path)]
    b = parse(argv + ["--paper-settings", "cl_gauss", "pg_fcl"])
    common.write_json(common.sweep_result(b, "xe", {}), entry({}, 90.0, 30.0, 30.0))
    for i, hp in enumerate(common.SWEEPS["fcl"]):  # the last setting is the most robust, and within a point of XE
        common.write_json(common.sweep_result(b, "fcl", hp), entry(hp, 89.5, 30.0 + i, 30.0))
    paper = parse(["--paper-settings"])
    assert common.chosen_hp(b, "fcl") == common.SWEEPS["fcl"][-1] != common.chosen_hp(paper, "fcl")
    assert common.chosen_hp(b, "fcl_every4") == {**common.SWEEPS["fcl"][-1], "every": 4}
    assert common.chosen_hp(b, "cl_gauss") == common.chosen_hp(paper, "cl_gauss")
    assert common.chosen_hp(b, "pg_fcl") == common.chosen_hp(paper, "pg_fcl")
    with pytest.raises(RuntimeError, match="the xe_gauss sweep is unfinished"):
        common.chosen_hp(b, "xe_gauss")
    none = parse(argv + ["--paper-settings", "none"])
    assert common.chosen_hp(none, "fcl") == common.SWEEPS["fcl"][-1]
    with pytest.raises(RuntimeError, match="the cl_gauss sweep is unfinished"):
        common.chosen_hp(none, "cl_gauss")
    # a sweep result in fractions (no unit) is refused, not read as percent
    common.write_json(common.sweep_result(b, "xe", {}), {"hp": {}, "clean": 0.9, "un": 0.3, "nun": 0.3})
    with pytest.raises(ValueError, match="accuracies in None, not 'percent'"):
        common.chosen_hp(b, "fcl")


def entry(hp, clean, un, nun):
    return {"hp": hp, "clean": clean, "un": un, "nun": nun, "unit": "percent"}


def test_tables_fill_the_readme_between_its_markers_and_leave_the_rest(smoke, tmp_path):
    root, argv = smoke
    readme = tmp_path / "docs" / "README.md"
    readme.parent.mkdir()
    above, below = "# a project\n\nkept above\n", "\nkept below\n"
    above += tables.README_END + " (an end marker before the block is not its end)\n"
    readme.write_text(above + tables.README_BEGIN + "\nlast run's tables\n" + tables.README_END + below)
    args = argv[:argv.index("--part")] + ["--part", "tables", "--readme", str(readme)]
    assert bench.main(args) == 0
    text = readme.read_text()
    assert text.startswith(above + tables.README_BEGIN + "\n") and text.endswith(tables.README_END + below)
    assert "last run's tables" not in text and "#### Table 2: " in text and "#### Table 3: " in text
    assert "Tuning budget (settings scored on validation" in text
    written = (root / "results" / "lr0.01-e1" / "tables.md").read_text()
    rows = [line for line in written.splitlines() if line.startswith(("| FCL | 1 |", "| FCL | XE |"))]
    assert len(rows) == 5 and all(row in text for row in rows)  # its rows and pairs in Tables 2, 3 and the times
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) == 3 and all((readme.parent / link).is_file() for link in links)  # two PNGs and tables.md
    assert bench.main(args) == 0 and readme.read_text() == text  # a second run changes nothing
    readme.write_text("# a README without the markers\n")
    with pytest.raises(RuntimeError, match="no block to fill"):
        bench.main(args)


def c10c(mean):
    return {"mean": mean, "images": 8, "per_corruption": {"fog": mean}}


def test_a_seed_evaluated_at_settings_the_sweep_did_not_choose_is_redone_and_the_old_result_kept(monkeypatch,
                                                                                                   tmp_path):
    """FCL's seed 0 at Appendix B's settings is not done once the sweep chose other settings: the part trains it again
    (and its variants, which follow FCL's settings), the evaluation moves the old result to runs/earlier/, and the
    tables show both; a result not yet redone stays where it is and is shown as superseded, not tabulated."""
    argv = ["--results", str(tmp_path), "--seeds", "0", "--methods", "xe", "fcl", "fcl_every4"]
    b = bench.Part(bench.get_args_parser().parse_args(argv))
    paper_hp, chosen = common.SWEEPS["fcl"][0], common.SWEEPS["fcl"][1]
    common.write_json(common.sweep_result(b, "xe", {}), entry({}, 90.0, 30.0, 30.0))
    for hp in common.SWEEPS["fcl"]:
        common.write_json(common.sweep_result(b, "fcl", hp), entry(hp, 90.0, 40.0 if hp == chosen else 35.0, 35.0))
    for name, hp, un in (("xe", {}, 30.0), ("fcl", paper_hp, 33.0), ("fcl_every4", {**paper_hp, "every": 4}, 32.0)):
        common.write_json(common.run_result(b, name, 0), {"method": name, "seed": 0, "unit": "percent", "hp": hp,
                                                          "clean": 90.0, "un": un, "nun": 30.0, "c10c": c10c(70.0),
                                                          "train_seconds": 100})
    assert common.chosen_hp(b, "fcl") == chosen
    assert [common.result_done(b, n, 0) for n in ("xe", "fcl", "fcl_every4")] == [True, False, False]
    todo = []
    monkeypatch.setattr(bench, "train_all", lambda b, runs, after=None: todo.extend(runs))
    bench.part_continue(b)
    assert todo == [("fcl", chosen, 0), ("fcl_every4", {**chosen, "every": 4}, 0)]

    bench.set_aside(b, "fcl", 0)  # as the evaluation does before it writes the new result
    bench.set_aside(b, "xe", 0)  # XE's settings did not change: it stays
    old = common.earlier_result(b, "fcl", paper_hp, 0)
    assert json.loads(old.read_text())["un"] == 33.0 and not common.run_result(b, "fcl", 0).exists()
    assert common.run_result(b, "xe", 0).exists()
    common.write_json(common.run_result(b, "fcl", 0), {"method": "fcl", "seed": 0, "hp": chosen, "clean": 90.0,
                                                       "unit": "percent", "un": 45.0, "nun": 40.0,
                                                       "c10c": c10c(72.0), "train_seconds": 300})
    assert common.load_runs(b)["fcl"][0]["un"] == 45.0  # the tables' seeds: the current settings only

    # every 4 at Appendix B's settings, not yet redone at FCL's choice: no row of the tables, a superseded result
    every4 = common.run_result(b, "fcl_every4", 0)
    before = every4.read_bytes()
    assert not common.load_runs(b)["fcl_every4"]
    text = tables.write_tables(b)
    assert every4.read_bytes() == before  # the tables only read
    assert not [line for line in text.splitlines() if line.startswith("| FCL every 4 | 0 |")]  # no seed: no row
    assert not [line for line in text.splitlines() if line.startswith("| FCL every 4 | FCL |")]
    seed, then, settings, now = row(text, "FCL", common.hp_key(paper_hp))  # beside the same seed at the choice
    assert (seed, numbers(then), settings, numbers(now)) == ("0", [90, 33, 30, 70], common.hp_key(chosen),
                                                             [90, 45, 40, 72])
    seed, then, settings, now = row(text, "FCL every 4", common.hp_key({**paper_hp, "every": 4}))
    assert (seed, numbers(then), settings, now) == ("0", [90, 32, 30, 70], "-", "-")  # not redone yet


def test_the_tables_only_read_the_committed_results_and_write_the_same_tables_twice(tmp_path):
    """Over a copy of benchmarks/results/cifar_robustness/: every file but the tables' outputs is byte for byte
    what it was (none moved, none deleted, none added), and a second run writes the same tables."""
    results = tmp_path / "results"
    shutil.copytree(common.RESULTS, results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# results\n\n{tables.README_BEGIN}\n{tables.README_END}\n")
    outputs = {results / "lr0.01-e24" / name for name in ("tables.md", "table2.png", "table3.png")} | {readme}

    def snapshot() -> dict:
        return {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    before = snapshot()
    assert tables.main(["--results", str(results), "--readme", str(readme)]) == 0
    first = snapshot()
    assert tables.main(["--results", str(results), "--readme", str(readme)]) == 0
    second = snapshot()
    assert set(before) == set(first) == set(second)
    assert {p: v for p, v in first.items() if p not in outputs} == {p: v for p, v in before.items() if p not in outputs}
    assert {p: second[p] for p in outputs} == {p: first[p] for p in outputs}
    text = (results / "lr0.01-e24" / "tables.md").read_text()
    fcl = json.loads((results / "lr0.01-e24" / "runs" / "fcl-s0.json").read_text())
    assert fcl["unit"] == "percent" and 80 < fcl["clean"] < 100  # the committed results are in percent
    seeds = [json.loads((results / "lr0.01-e24" / "runs" / f"fcl-s{s}.json").read_text()) for s in range(3)]
    assert numbers(row(text, "FCL", "3")[0]) == [round(statistics.mean(e["clean"] for e in seeds), 2),
                                                 round(statistics.stdev(e["clean"] for e in seeds), 2)]
    assert numbers(row(text, "FCL", "3")[3]) == list(common.METHODS["fcl"].paper_t2)  # the paper's, in percent
    assert next(line for line in text.splitlines() if line.startswith("| FCL | 3 |")) in readme.read_text()


def test_choice_is_the_most_robust_setting_within_a_point_of_xe():
    entries = [entry({"w": 1}, 90.0, 30.0, 30.0), entry({"w": 2}, 89.5, 40.0, 38.0), entry({"w": 3}, 85.0, 70.0, 70.0)]
    assert common.choose(entries, xe_clean=90.2) == {"w": 2}  # w=3 is more robust but costs 5 points
    assert common.choose(entries[2:], xe_clean=90.2) == {"w": 3}  # nothing eligible: the most accurate


def test_paired_difference_is_taken_per_seed():
    runs = {"fcl": {0: {"un": 50.0}, 1: {"un": 70.0}, 2: {"un": 90.0}}, "xe": {0: {"un": 40.0}, 1: {"un": 65.0}}}
    diffs = [10.0, 5.0]  # seeds 0 and 1; seed 2 has no XE twin
    assert numbers(tables.paired(runs, "fcl", "xe", common.t2_value, "un")) == [
        round(statistics.mean(diffs), 2), round(statistics.stdev(diffs), 2)]
    one = tables.paired({**runs, "xe": {1: {"un": 75.0}}}, "fcl", "xe", common.t2_value, "un")
    assert numbers(one) == [-5.0] and "±" not in one  # one seed: no std
    assert numbers(tables.mean_std([50.0, 70.0, 90.0])) == [70.0, 20.0] and tables.mean_std([]) == "-"


def test_training_time_table_gives_the_mean_per_method_its_ratio_to_xe_and_the_total():
    runs = {"xe": {0: {"train_seconds": 100.0, "precision": "bf16"}, 1: {"train_seconds": 300.0, "precision": "bf16"}},
            "fcl": {0: {"train_seconds": 500.0, "eval_seconds": 3600.0, "precision": "bf16"}}}
    table = tables.format_costs(runs)
    xe, fcl = (100.0 + 300.0) / 2, 500.0
    assert row(table, "XE") == ["2", f"{xe:.0f}", "1.00", "bf16"]
    assert row(table, "FCL")[:2] == ["1", f"{fcl:.0f}"] and float(row(table, "FCL")[2]) == round(fcl / xe, 2)
    assert not any(line.startswith("| XE+Gaussian |") for line in table.splitlines())  # no runs, no row
    total = table.splitlines()[-1]
    assert numbers(total)[:3] == [3, round((100 + 300 + 500) / 3600, 1), round(3600 / 3600, 1)]


@pytest.mark.parametrize("n", [4, 16])
def test_every_n_keeps_its_share_of_full_fcls_paired_gain_and_reports_its_epoch_time(n):
    def entry(un, nun, mean, seconds):
        return {"un": un, "nun": nun, "c10c": {"mean": mean}, "train_seconds": seconds, "continue_epochs": 10}

    runs = {"xe": {0: entry(30, 30, 60, 100), 1: entry(40, 20, 70, 100)},
            "fcl": {0: entry(50, 40, 70, 400), 1: entry(60, 40, 70, 600), 2: entry(90, 90, 90, 9000)},
            f"fcl_every{n}": {0: entry(40, 30, 65, 100), 1: entry(56, 35, 72, 200)}}
    table = tables.format_every(runs, f"fcl_every{n}")
    assert table.startswith(f"### FCL every {n} steps against full FCL")
    assert table.splitlines()[0].endswith("(seeds 0, 1)")  # seed 2 has no twin: left out

    def gain(name, key):  # the paired gain over XE, mean over seeds 0 and 1
        value = (lambda e: e["c10c"]["mean"]) if key == "mean" else (lambda e: e[key])
        return statistics.mean(value(runs[name][s]) - value(runs["xe"][s]) for s in (0, 1))

    full = [gain("fcl", k) for k in ("un", "nun", "mean")]
    cheap = [gain(f"fcl_every{n}", k) for k in ("un", "nun", "mean")]
    assert numbers(" ".join(row(table, "FCL"))) == [round(v, 2) for v in full]
    assert numbers(" ".join(row(table, f"FCL every {n}"))) == [round(v, 2) for v in cheap]
    assert numbers(" ".join(row(table, f"every {n} / full"))) == [round(c / f, 2) for c, f in zip(cheap, full)]
    # per seed, never averaged over seeds: seed 0's runs may have shared the machine, seed 1's not
    times = table.splitlines()[-1]
    for seed in (0, 1):
        mine, theirs = (runs[m][seed]["train_seconds"] / 10 for m in (f"fcl_every{n}", "fcl"))
        assert f"seed {seed} {mine:.0f} / {theirs:.0f} ({mine / theirs:.2f})" in times
    assert tables.format_every(runs, f"fcl_every{20 - n}") == ""  # the other mode has no runs: no table
    assert tables.format_cheap_modes(runs) == table


def test_tuning_budget_counts_the_settings_each_method_was_scored_at_on_validation(tmp_path):
    b = parse(["--results", str(tmp_path), "--grid", "equal-budget", "--paper-settings", "pg_fcl"])
    for name, count in (("xe", 1), ("xe_gauss", 5), ("cl_gauss", 2), ("fcl", 3)):
        for hp in common.EQUAL_BUDGET[name][:count]:
            common.write_json(common.sweep_result(b, name, hp), entry(hp, 90.0, 30.0, 30.0))
    # a result at a setting outside the grid is no part of the budget
    common.write_json(common.sweep_result(b, "fcl", {"k": 8}), entry({"k": 8}, 90.0, 30.0, 30.0))
    line = tables.tuning_budget(b)
    assert "under the equal-budget grid" in line
    for cell in ("XE none (fixed settings)", "XE+Gaussian 5 of 6", "CL+Gaussian 2 of 2", "FCL 3 of 5",
                 "PG+XE none (fixed settings)", "PG+FCL none (fixed settings)"):
        assert cell in line
    assert "FCL every 4, FCL other_class, FCL random selection, FCL every 16 take their base method's settings" in line
    published = tables.tuning_budget(parse(["--results", str(tmp_path), "--paper-settings", "pg_fcl"]))
    assert "XE+Gaussian 3 of 3" in published and "CL+Gaussian 2 of 4" in published and "FCL 3 of 4" in published


def test_per_corruption_differences_are_paired_means_in_the_order_of_fcls_gain():
    def entry(fog, snow):
        return {"c10c": {"per_corruption": {"fog": fog, "snow": snow}}}

    runs = {"xe": {0: entry(50, 50), 1: entry(60, 40)}, "fcl": {0: entry(52, 60), 1: entry(64, 50),
                                                                2: entry(90, 90)}}
    table = tables.format_per_corruption(runs)
    assert table.splitlines()[2] == "| corruption | FCL - XE |"  # only pairs with a shared seed
    snow, fog = statistics.mean([60 - 50, 50 - 40]), statistics.mean([52 - 50, 64 - 60])  # seed 2: no XE twin
    assert [line.split("|")[1].strip() for line in table.splitlines()[4:]] == ["snow", "fog"]  # FCL's gain first
    assert numbers(row(table, "snow")[0]) == [snow] and numbers(row(table, "fog")[0]) == [fog]
    assert tables.format_per_corruption({"xe": runs["xe"]}) == ""


def test_condense_keeps_the_hits_of_every_image_and_counts_the_corrupted_cells_right():
    """A hand-built timm_fcl.eval entry of 4 images: the clean / UN / NUN hits are kept with their image counts, and
    the C count of an image is how many of the cells entering the C mean (here 2 corruptions x 2 severities) it got
    right; an entry without hits keeps the accuracies only, and one in fractions is refused."""
    def plain(suite, hits):
        return {"suite": suite, "corruption": "", "severity": 0, "accuracy": 25.0 * sum(hits), "total": 4,
                "hits": pack_hits(hits)}

    def cell(corruption, severity, hits):
        return {"suite": "generated", "corruption": corruption, "severity": severity, "accuracy": 25.0 * sum(hits),
                "total": 4, "hits": pack_hits(hits)}

    rows = [plain("clean", [1, 1, 1, 0]), plain("un", [1, 0, 0, 0]), plain("nun", [0, 1, 0, 0]),
            cell("fog", 1, [1, 1, 0, 0]), cell("fog", 2, [1, 0, 0, 0]),
            cell("snow", 1, [1, 1, 1, 0]), cell("snow", 2, [0, 1, 0, 1])]
    summary = {"mean_19": None, "mean_all": 50.0, "groups": {}, "per_corruption": {"fog": 37.5, "snow": 62.5}}
    result = {"spec": "run", "unit": "percent", "rows": rows, "summaries": {"generated": summary}}
    out = bench.condense(result)
    assert (out["clean"], out["un"], out["nun"], out["unit"]) == (75.0, 25.0, 25.0, "percent")
    assert out["hits"] == {s: r["hits"] for s, r in zip(common.SUITES, rows)}
    assert out["images"] == {"clean": 4, "un": 4, "nun": 4}
    assert out["c10c"]["mean"] == 50.0 and out["c10c"]["images"] == 4 and out["c10c"]["cells"] == 4
    # image 0: fog 1, fog 2, snow 1 right = 3; image 1: fog 1, snow 1, snow 2 = 3; image 2: snow 1 = 1; image 3: 1
    assert unpack_counts(out["c10c"]["hits_count"]).tolist() == [3, 3, 1, 1]

    older = {**result, "rows": [{k: v for k, v in r.items() if k != "hits"} for r in rows]}
    out = bench.condense(older)
    assert "hits" not in out and "images" not in out and not {"hits_count", "cells"} & set(out["c10c"])
    assert out["clean"] == 75.0
    with pytest.raises(ValueError, match="accuracies in None, not 'percent'"):
        bench.condense({k: v for k, v in result.items() if k != "unit"})


def test_zoo_holds_the_seed_0_picks_with_their_own_numbers(smoke):
    root, argv = smoke
    b = parse(argv)
    picks = zoo.zoo_picks(common.load_runs(b))
    assert picks[:2] == ["fcl", "xe"]
    tags = {f"resnet20_cifar.{common.ZOO_TAGS[n]}" for n in picks} | {"resnet20_cifar.xe_pretrain_cifar10"}
    assert {p.name for p in (root / "zoo").iterdir()} == tags
    for name in picks:
        folder = root / "zoo" / f"resnet20_cifar.{common.ZOO_TAGS[name]}"
        run = b.run_dir(name, common.chosen_hp(b, name), 0)
        assert common.sha256(folder / "model.safetensors") == common.sha256(run / "model" / "model.safetensors")
        entry = json.loads((b.protocol_results / "runs" / f"{name}-s0.json").read_text())
        evaluated = json.loads((folder / "eval" / "results.json").read_text())[run.name]
        assert evaluated["unit"] == "percent"
        assert evaluated["weights_sha256"] == common.sha256(folder / "model.safetensors")
        assert bench.condense(evaluated)["un"] == entry["un"]
        assert f"| un | top-1 accuracy | {entry['un']:.2f} |" in (folder / "README.md").read_text()


def test_test_evaluation_takes_the_noisy_sets_and_the_corruptions_from_their_own_image_counts(monkeypatch, tmp_path):
    """--test-samples for clean / UN / NUN, --corruption-samples for the generated CIFAR-10-C: two commands merged
    into one entry per run (its unit kept); one command when the counts agree."""
    calls = []

    def evaluate(b, runs, *, suites, max_samples, **_):
        calls.append((tuple(suites), max_samples))
        rows = [{"suite": s, "severity": int(s == "generated"), "accuracy": 50.0} for s in suites]
        summaries = {"generated": {"mean_all": 50.0}} if "generated" in suites else {}
        return {r.name: {"spec": str(r), "unit": "percent", "rows": rows, "summaries": summaries} for r in runs}

    monkeypatch.setattr(bench, "evaluate", evaluate)
    run = tmp_path / "xe-s0"
    args = ["--data-dir", str(tmp_path), "--work", str(tmp_path / "work"), "--test-samples", "100"]
    b = bench.Part(bench.get_args_parser().parse_args(args + ["--corruption-samples", "20"]))
    (merged,) = bench.evaluate_test(b, [run], tmp_path / "out").values()
    assert calls == [(("clean", "un", "nun"), 100), (("generated",), 20)]
    assert [r["suite"] for r in merged["rows"]] == ["clean", "un", "nun", "generated"]
    assert merged["unit"] == "percent" and merged["summaries"] == {"generated": {"mean_all": 50.0}}
    calls.clear()
    b = bench.Part(bench.get_args_parser().parse_args(args + ["--corruption-samples", "100"]))
    (alone,) = bench.evaluate_test(b, [run], tmp_path / "out").values()
    assert calls == [(("clean", "un", "nun", "generated"), 100)] and alone["rows"] == merged["rows"]


def test_a_sweep_keeps_the_score_of_every_run_it_finished_when_the_part_stops(monkeypatch, tmp_path):
    """Each sweep run is scored on validation as soon as it is trained: a part stopped at its time limit during the
    third training has written the first two scores, and the next part trains and scores only what is left."""
    trained, scored = [], []

    def train_continuation(b, method, hp, seed):
        if len(trained) == 2 and not scored[2:]:
            raise bench.PartStopped()
        trained.append((method.name, hp))
        return b.run_dir(method.name, hp, seed)

    def evaluate(b, runs, *, suites, split, **_):
        assert split == "validation" and suites == list(common.SUITES)
        scored.append(runs[0].name)
        rows = [{"suite": s, "severity": 0, "accuracy": 80.0 + len(scored)} for s in suites]
        return {r.name: {"unit": "percent", "rows": rows, "summaries": {}} for r in runs}

    monkeypatch.setattr(bench, "train_continuation", train_continuation)
    monkeypatch.setattr(bench, "evaluate", evaluate)
    argv = ["--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--jobs", "1"]
    b = bench.Part(bench.get_args_parser().parse_args(argv))
    grid = common.SWEEPS["xe_gauss"]
    with pytest.raises(bench.PartStopped):
        bench.validate(b, [("xe_gauss", hp) for hp in grid])
    assert [common.sweep_result(b, "xe_gauss", hp).is_file() for hp in grid] == [True, True, False]
    first = json.loads(common.sweep_result(b, "xe_gauss", grid[0]).read_text())
    assert (first["hp"], first["clean"], first["seed"]) == (grid[0], 81.0, common.SWEEP_SEED)
    scored.append("stopped")  # the next part: only the third setting is trained and scored
    bench.validate(b, [("xe_gauss", hp) for hp in grid])
    assert trained[2:] == [("xe_gauss", grid[2])] and len(scored) == 4
    assert json.loads(common.sweep_result(b, "xe_gauss", grid[2]).read_text())["un"] == 84.0


def test_training_time_counts_a_segment_whose_process_was_killed(monkeypatch, tmp_path):
    """A part killed outright (SIGKILL: no chance to add its time) leaves a marker; the next part adds the killed
    segment's time, up to the last line its training logged, before its own (the clock is the test's)."""
    class Clock:
        now = 1_000_000.0

        @classmethod
        def time(cls) -> float:
            return cls.now

    monkeypatch.setattr(bench, "time", Clock)
    b = bench.Part(bench.get_args_parser().parse_args(["--work", str(tmp_path / "work")]))
    run = tmp_path / "work" / "runs" / "fcl-s0"
    marker = run.parent / f"{run.name}.running.json"

    def killed_run(cmd, log):  # logs 40 s of training, then the part dies
        run.mkdir(parents=True)
        log.write_text("epoch 0 ...\n")
        since = json.loads(marker.read_text())["since"]
        os.utime(log, (since + 40, since + 40))
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(b, "run", killed_run)
    part = multiprocessing.get_context("fork").Process(target=bench.train, args=(b, ["train"], run, 1))
    part.start()
    part.join(60)
    assert part.exitcode == -signal.SIGKILL
    assert not (run / "bench_wall.json").exists() and marker.exists()

    def segment(cmd, log):  # a segment that trains 7 s by the clock and ends normally
        Clock.now += 7

    monkeypatch.setattr(b, "run", segment)
    bench.train(b, ["train"], run, epochs=1)
    assert json.loads((run / "bench_wall.json").read_text())["seconds"] == 40 + 7
    assert not marker.exists()
    bench.train(b, ["train"], run, epochs=1)  # a segment that ends normally adds only its own time
    assert json.loads((run / "bench_wall.json").read_text())["seconds"] == 40 + 7 + 7


def test_a_command_running_at_the_deadline_is_asked_to_save_and_a_run_past_it_is_not_announced(tmp_path, capsys):
    """At --hours' end the training command gets SIGTERM (train_fcl.py saves its state on it), not an outright kill;
    once the deadline has passed, no further run is started or announced."""
    # 10 s: under load the child must have installed its handler (and printed "up") before the deadline
    b = bench.Part(bench.get_args_parser().parse_args(["--work", str(tmp_path / "work")]), deadline=time.time() + 10)
    log = tmp_path / "saves.log"
    child = ("import signal, sys, time\n"
             "def save(*_):\n    print('state saved', flush=True); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, save)\nprint('up', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(bench.PartStopped):
        b.run([sys.executable, "-c", child], log)
    assert log.read_text().splitlines() == ["up", "state saved"]  # its sleep was cut short by SIGTERM

    run = tmp_path / "work" / "runs" / "xe-s0"
    with pytest.raises(bench.PartStopped):
        bench.train(b, ["train"], run, epochs=1)
    assert "training" not in capsys.readouterr().out and not run.exists()


def test_equal_budget_grid_extends_every_method_and_the_plan_parts_run_in_order(monkeypatch, tmp_path):
    """--grid equal-budget: XE+Gaussian, CL+Gaussian and FCL are chosen among lambdas up to at least 4x Appendix B's
    (CL+Gaussian then swept, not fixed); the published grid is untouched; the plan's validation parts train and score
    their (method, settings) in order, the random-selection control at FCL's published choice."""
    argv = ["--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--jobs", "1"]
    equal = parse(argv + ["--grid", "equal-budget", "--paper-settings", "pg_fcl"])
    published = parse(argv)
    for name, lam in (("xe_gauss", 3.2e-3), ("cl_gauss", 3.2e-3), ("fcl", 1.28e-2)):
        assert max(hp["weight"] for hp in common.sweeps(equal)[name]) >= 4 * common.PAPER_LAMBDA
        assert any(hp["weight"] == lam for hp in common.sweeps(equal)[name])
        assert all(hp in common.sweeps(equal)[name] for hp in common.SWEEPS[name][:1])
    assert common.sweeps(published) is common.SWEEPS
    assert all(hp in common.sweeps(equal)[name] for part in common.PLAN_PARTS.values() for name, hp in part
               if name in common.SWEEPS and common.sweeps(equal)[name])
    # the rule on the equal-budget grid: the most robust XE+Gaussian within a point of XE's clean accuracy
    common.write_json(common.sweep_result(equal, "xe", {}), entry({}, 90.0, 30.0, 30.0))
    grid = common.sweeps(equal)["xe_gauss"]
    for i, hp in enumerate(grid):
        clean = 88.5 if hp["weight"] == 7.8e-3 and hp["sigma"] == 0.3 else 89.5  # the most robust costs 1.5 points
        common.write_json(common.sweep_result(equal, "xe_gauss", hp), entry(hp, clean, 40.0 + i, 40.0))
    assert common.chosen_hp(equal, "xe_gauss") == {"sigma": 0.1, "weight": 7.8e-3}
    assert common.chosen_hp(published, "xe_gauss") == {"sigma": 0.5, "weight": common.PAPER_LAMBDA}

    trained = []
    monkeypatch.setattr(bench, "train_continuation",
                        lambda b, method, hp, seed: trained.append((method.name, hp)) or b.run_dir(method.name, hp, seed))
    monkeypatch.setattr(bench, "evaluate", lambda b, runs, **_: {r.name: {"unit": "percent", "summaries": {}, "rows": [
        {"suite": s, "severity": 0, "accuracy": 50.0} for s in common.SUITES]} for r in runs})
    monkeypatch.setattr(bench, "last_epoch", lambda run: {"val_top1": 50.0, "train_pull": 0.25})
    plan = ["--results", str(tmp_path / "plan"), "--work", str(tmp_path / "work"), "--jobs", "1", "--grid",
            "equal-budget"]
    assert bench.main(plan + ["--part", "validate", "--plan-part", "1"]) == 0
    assert trained == common.PLAN_PARTS[1]
    assert trained[0] == ("fcl_random", {"k": 256, "sigma": 0.5, "tau": 0.5, "weight": 3.2e-3, "selection": "random"})
    scored = json.loads(common.sweep_result(parse(plan), "fcl_random", trained[0][1]).read_text())
    assert scored["train_pull"] == 0.25 and scored["clean"] == 50.0
    with pytest.raises(SystemExit, match="--plan-part"):
        bench.main(argv + ["--part", "validate"])


def test_redo_without_hits_trains_an_older_result_again_and_keeps_its_numbers_beside_the_new_ones(monkeypatch,
                                                                                                  tmp_path, capsys):
    """With --redo-without-hits, a result at the current settings but without per-image hits is not done: it is
    trained and evaluated again, and the new JSON (with hits) keeps the old numbers under ``repeats``; one with hits
    stays done, and without the flag nothing is redone."""
    argv = ["--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--jobs", "1", "--seeds", "1",
            "--methods", "xe", "xe_gauss", "--paper-settings", "xe_gauss"]
    b = bench.Part(bench.get_args_parser().parse_args(argv))
    redo = bench.Part(bench.get_args_parser().parse_args(argv + ["--redo-without-hits"]))
    old = {"method": "xe", "seed": 1, "hp": {}, "unit": "percent", "clean": 90.0, "un": 30.0, "nun": 20.0,
           "c10c": {"mean": 70.0}, "commit": "a" * 40}
    common.write_json(common.run_result(b, "xe", 1), old)
    gauss_hp = common.chosen_hp(b, "xe_gauss")
    common.write_json(common.run_result(b, "xe_gauss", 1), {**old, "method": "xe_gauss", "hp": gauss_hp,
                                                            "hits": {"clean": "AA=="}})
    todo = []
    monkeypatch.setattr(bench, "train_all", lambda b, runs, after=None: todo.extend(runs))
    bench.part_continue(b)
    assert todo == []
    bench.part_continue(redo)
    assert todo == [("xe", {}, 1)]  # XE+Gaussian kept its hits: done

    run = redo.run_dir("xe", {}, 1)
    run.mkdir(parents=True)
    checkpoint = tmp_path / "start.safetensors"
    checkpoint.write_bytes(b"weights")
    common.write_json(run / "bench_wall.json", {"seconds": 12.0})
    monkeypatch.setattr(bench.run_folder, "read_args", lambda r: {"initial_checkpoint": str(checkpoint)})
    monkeypatch.setattr(bench, "last_epoch", lambda r: {"val_top1": 50.0})
    right = {"clean": [True] * 9 + [False], "un": [True] * 3 + [False] * 7, "nun": [True] * 2 + [False] * 8}

    def evaluate_test(b, runs, out, threads=None):
        rows = [{"suite": s, "severity": 0, "accuracy": 100 * sum(h) / len(h), "hits": pack_hits(h), "total": len(h)}
                for s, h in right.items()]
        return {r.name: {"unit": "percent", "rows": rows, "summaries": {}} for r in runs}

    monkeypatch.setattr(bench, "evaluate_test", evaluate_test)
    capsys.readouterr()
    bench.evaluate_runs(redo, [("xe", 1, run)])
    new = json.loads(common.run_result(b, "xe", 1).read_text())
    assert unpack_hits(new["hits"]["un"], 10).tolist() == right["un"] and new["un"] == 30.0
    assert new["repeats"] == {"clean": 90.0, "un": 30.0, "nun": 20.0, "c10c_mean": 70.0, "commit": "a" * 40}
    assert "xe seed 1 trained again: clean 90.00 vs 90.00, un 30.00 vs 30.00, nun 20.00 vs 20.00 (the same numbers)" \
        in capsys.readouterr().out
    assert not common.earlier_result(b, "xe", {}, 1).exists()  # same settings: replaced, its numbers kept inside
    bench.part_continue(redo)
    assert todo == [("xe", {}, 1)]  # now done
    # a repeat that does not agree says so
    common.write_json(common.run_result(b, "xe", 1), {**old, "un": 31.0})
    bench.evaluate_runs(redo, [("xe", 1, run)])
    assert "un 30.00 vs 31.00" in capsys.readouterr().out.split("NOT the same numbers")[0]


def test_under_the_equal_budget_grid_every_4_and_other_class_stay_at_their_setting_and_meet_fcl_there(tmp_path):
    """Every 4 and other_class ran at FCL's published choice: under the equal-budget grid they stay there (nothing is
    retrained) and are paired with FCL's results at that setting, set aside in runs/earlier/ once FCL's new choice
    was evaluated; random selection and every 16 follow FCL's new choice and meet FCL there."""
    argv = ["--results", str(tmp_path), "--grid", "equal-budget", "--paper-settings", "pg_fcl"]
    b = parse(argv)
    published, new = common.FCL_PUBLISHED_CHOICE, common.EQUAL_BUDGET["fcl"][-1]
    common.write_json(common.sweep_result(b, "xe", {}), entry({}, 90.0, 30.0, 30.0))
    for name in ("xe_gauss", "cl_gauss", "fcl"):
        for hp in common.EQUAL_BUDGET[name]:
            best = hp == new  # FCL's equal-budget choice moves to lambda x16
            common.write_json(common.sweep_result(b, name, hp), entry(hp, 89.5, 50.0 if best else 40.0, 40.0))
    assert common.chosen_hp(b, "fcl") == new
    assert common.chosen_hp(b, "fcl_every4") == {**published, "every": 4}
    assert common.chosen_hp(b, "fcl_other") == {**published, "negatives": "other_class"}
    assert common.chosen_hp(b, "fcl_random") == {**new, "selection": "random"}
    assert common.chosen_hp(b, "fcl_every16") == {**new, "every": 16}
    # under the published grid every variant follows FCL's choice
    grid = parse(argv[:2])
    assert common.chosen_hp(grid, "fcl_every4") == {**common.chosen_hp(grid, "fcl"), "every": 4}

    def result(name, hp, seed, un):
        return {"method": name, "seed": seed, "hp": hp, "unit": "percent", "clean": 90.0, "un": un, "nun": un,
                "c10c": {"mean": un, "images": 8, "per_corruption": {"fog": un}}, "train_seconds": 100.0,
                "continue_epochs": 10}

    for seed in (0, 1):
        common.write_json(common.run_result(b, "xe", seed), result("xe", {}, seed, 30.0))
        common.write_json(common.earlier_result(b, "fcl", published, seed), result("fcl", published, seed, 50.0))
        common.write_json(common.run_result(b, "fcl", seed), result("fcl", new, seed, 60.0 + seed))
        common.write_json(common.run_result(b, "fcl_every4", seed),
                          result("fcl_every4", {**published, "every": 4}, seed, 45.0))
        common.write_json(common.run_result(b, "fcl_other", seed),
                          result("fcl_other", {**published, "negatives": "other_class"}, seed, 55.0))
        common.write_json(common.run_result(b, "fcl_every16", seed),
                          result("fcl_every16", {**new, "every": 16}, seed, 40.0))
    assert sorted(common.results_at(b, "fcl", published)) == [0, 1]
    assert [e["un"] for e in common.results_at(b, "fcl", new).values()] == [60.0, 61.0]
    text = tables.write_tables(b)
    at = f"FCL at {common.hp_key(published)}"
    # clean, UN, NUN: mean ± std of the paired differences over the two seeds (no per-image hits here)
    assert numbers(" ".join(row(text, "FCL every 4", at)[:3])) == [0.0, 0.0, -5.0, 0.0, -5.0, 0.0]
    assert not [line for line in text.splitlines() if line.startswith("| FCL every 4 | FCL |")]
    assert numbers(" ".join(row(text, "FCL every 16", "FCL")[:3])) == [0.0, 0.0, -20.5, 0.71, -20.5, 0.71]
    per_corruption = text.split("### CIFAR-10-C per corruption")[1].split("###")[0]
    assert f"| FCL other_class - {at} |" in per_corruption and numbers(row(per_corruption, "fog")[-1]) == [5.0]
    assert row(text, "FCL every 4", "2")  # its own row in the tables (two seeds): current at its pinned setting
    assert f"### FCL every 4 steps against full FCL at {common.hp_key(published)} (seeds 0, 1)" in text
    assert "### FCL every 16 steps against full FCL (seeds 0, 1)" in text
    every4 = text.split("### FCL every 4 steps")[1].split("###")[0]
    assert numbers(" ".join(row(every4, "FCL"))) == [20.0, 20.0, 20.0]  # FCL's gain over XE at the published setting
    assert numbers(" ".join(row(every4, "every 4 / full"))) == [0.75, 0.75, 0.75]
    every16 = text.split("### FCL every 16 steps")[1].split("###")[0]
    assert numbers(" ".join(row(every16, "FCL"))) == [30.5, 30.5, 30.5]  # at its choice: 60, 61 over 30


def test_a_run_that_fails_or_is_stopped_starts_no_further_run(monkeypatch, tmp_path):
    """A training stopped by a signal (exit 143 after saving its state) or failing ends the part with its error; the
    runs after it are not started (they would otherwise run on, unasked, after a user stopped one)."""
    started = []

    def train_continuation(b, method, hp, seed):
        started.append(seed)
        if seed == 1:
            raise RuntimeError("train_fcl.py ... failed (143)")
        return b.run_dir(method.name, hp, seed)

    monkeypatch.setattr(bench, "train_continuation", train_continuation)
    b = bench.Part(bench.get_args_parser().parse_args(["--work", str(tmp_path), "--jobs", "1"]))
    with pytest.raises(RuntimeError, match="failed"):
        bench.train_all(b, [("xe", {}, seed) for seed in range(4)])
    assert started == [0, 1]
    started.clear()
    assert bench.train_all(b, [("xe", {}, 0), ("xe", {}, 2)]) == [b.run_dir("xe", {}, 0), b.run_dir("xe", {}, 2)]
