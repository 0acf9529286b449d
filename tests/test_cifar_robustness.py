"""benchmarks/cifar_robustness.py: a smoke run of every part on tiny data, and the choices it makes."""
import importlib.util
import json
import multiprocessing
import os
import re
import signal
import sys
import time

import pytest

from timm_fcl.data.shards import write_shards
from train_helpers import ROOT, synthetic_samples

spec = importlib.util.spec_from_file_location("cifar_robustness", ROOT / "benchmarks" / "cifar_robustness.py")
bench = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
spec.loader.exec_module(bench)


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
            "--eval-group", "9", "--part", "carve", "pretrain", "protocol", "continue", "eval", "tables", "zoo"]
    assert bench.main(argv) == 0
    return root, argv


def test_smoke_run_fills_both_tables_for_every_method(smoke, capsys):
    root, _ = smoke
    results = root / "results" / "lr0.001-e1"
    paper = bench.Bench(bench.get_args_parser().parse_args(["--paper-settings"]), deadline=0)
    for name in bench.METHODS:
        entry = json.loads((results / "runs" / f"{name}-s0.json").read_text())
        assert (entry["continue_lr"], entry["continue_epochs"]) == (0.001, 1)
        assert entry["method"] == name and entry["hp"] == bench.chosen_hp(paper, name)
        assert entry["precision"] == "bf16" and len(entry["commit"]) >= 40
        assert all(0 <= entry[s] <= 1 for s in ("clean", "un", "nun"))
        assert set(entry["c10c"]["per_corruption"]) == {"gaussian_noise", "defocus_blur"}
        assert entry["c10c"]["images"] == 8
    tables = (results / "tables.md").read_text()
    for method in bench.METHODS.values():
        assert f"| {method.label} | 1 |" in tables
    assert "0.375 / 0.343" in tables and "| FCL | XE+Gaussian |" in tables  # the paper's FCL UN / NUN, a pair
    assert "| FCL every 4 | FCL |" in tables and "| PG+FCL | PG+XE |" in tables and "Protocol check: " in tables
    assert "### FCL every 4 steps against full FCL (seeds 0)" in tables and "| every 4 / full |" in tables
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
    pg_fcl = yaml.safe_load((runs / "pg_fcl-k256-sigma0.5-tau1-weight0.0008-lr0.001-e1-s0" / "args.yaml").read_text())
    assert pg_fcl["method"] == "fcl" and pg_fcl["patch_gaussian"] and pg_fcl["crop_pad"] == 4
    # one command trained the pre-training too: its continuations start from its run folder, which the zoo copies
    assert pg_fcl["initial_checkpoint"] == str(runs / "pretrain" / "model" / "model.safetensors")
    pretrain = json.loads((root / "results" / "pretrain.json").read_text())
    result = json.loads((root / "results" / "lr0.001-e1" / "runs" / "pg_fcl-s0.json").read_text())
    assert result["initial_checkpoint_sha256"] == pretrain["sha256"]
    b = bench.Bench(bench.get_args_parser().parse_args(smoke[1]), deadline=0)
    assert b.pretrain_weights == root / "zoo" / "resnet20_cifar.xe_pretrain_cifar10" / "model.safetensors"  # later
    xe = yaml.safe_load((runs / "xe-default-lr0.001-e1-s0" / "args.yaml").read_text())
    assert xe["seed"] == pg_fcl["seed"] == 0 and xe["lr"] == 0.001 and not xe["patch_gaussian"]
    every = yaml.safe_load((runs / "fcl_every4-every4-k256-sigma0.5-tau2-weight0.0008-lr0.001-e1-s0" / "args.yaml").read_text())
    other = yaml.safe_load((runs / "fcl_other-k256-negativesother_class-sigma0.5-tau2-weight0.0008-lr0.001-e1-s0" /
                            "args.yaml").read_text())
    assert (every["fcl_every"], every["fcl_negatives"]) == (4, "all")
    assert (other["fcl_every"], other["fcl_negatives"]) == (1, "other_class") and other["fcl_k"] == 256


def test_pretraining_is_evaluated_and_exported_to_the_zoo(smoke):
    root, _ = smoke
    entry = json.loads((root / "results" / "pretrain.json").read_text())
    zoo = root / "zoo" / "resnet20_cifar.xe_pretrain_cifar10"
    assert entry["sha256"] == bench.sha256(zoo / "model.safetensors")
    assert entry["sha256"] == bench.sha256(root / "work" / "runs" / "pretrain" / "model" / "model.safetensors")
    assert all(0 <= entry[s] <= 1 for s in ("clean", "un", "nun")) and entry["c10c"]["images"] == 8
    evaluated = json.loads((zoo / "eval" / "results.json").read_text())["pretrain"]
    assert bench.condense(evaluated)["clean"] == entry["clean"]
    card = (zoo / "README.md").read_text()
    assert "timm-fcl/resnet20_cifar.xe_pretrain_cifar10" in card
    assert f"| clean | top-1 accuracy | {100 * entry['clean']:.2f} |" in card  # the card is in percent


def test_protocol_check_scores_xe_gauss_against_xe_on_validation(smoke):
    root, argv = smoke
    b = bench.Bench(bench.get_args_parser().parse_args(argv), deadline=0)
    verdict = json.loads((root / "results" / "protocol" / "lr0.001-e1.json").read_text())
    xe = json.loads((b.protocol_results / "sweep" / "xe-default.json").read_text())
    gauss = json.loads((b.protocol_results / "sweep" / "xe_gauss-sigma0.3-weight0.0008.json").read_text())
    assert verdict["split"] == "validation" and verdict["continue_lr"] == 0.001
    assert verdict["gain"]["un"] == pytest.approx(gauss["un"] - xe["un"])
    assert verdict["passes"] == (verdict["gain"]["un"] >= bench.MIN_GAUSS_GAIN)
    # the protocol's runs are the seed-0 continuations the test-set part evaluates: trained once
    assert (b.run_dir("xe_gauss", bench.chosen_hp(b, "xe_gauss"), 0) / "bench_wall.json").is_file()
    assert len(list((root / "work" / "runs").glob("xe_gauss-*-s0"))) == 1


def test_paper_settings_are_appendix_b_at_our_batch():
    b = bench.Bench(bench.get_args_parser().parse_args(["--paper-settings"]), deadline=0)
    lam = 1e-4 * 1024 / 128  # the paper's lambda weighs a sum over 1024 images, ours over 128
    assert bench.chosen_hp(b, "xe_gauss") == {"sigma": 0.3, "weight": pytest.approx(lam)}
    assert bench.chosen_hp(b, "cl_gauss") == {"sigma": 0.5, "tau": 0.5, "weight": pytest.approx(lam)}
    assert bench.chosen_hp(b, "fcl") == {"k": 256, "sigma": 0.5, "tau": 2.0, "weight": pytest.approx(lam)}
    assert bench.chosen_hp(b, "pg_fcl") == {"k": 256, "sigma": 0.5, "tau": 1.0, "weight": pytest.approx(lam)}


def test_paper_settings_for_some_methods_and_the_sweeps_choice_for_the_rest(tmp_path):
    """--paper-settings M ...: those methods take Appendix B's setting, the swept ones their choice (FCL's variants
    follow FCL's); a method neither named nor swept is refused."""
    argv = ["--results", str(tmp_path), "--continue-lr", "0.01", "--continue-epochs", "24"]
    b = bench.Bench(bench.get_args_parser().parse_args(argv + ["--paper-settings", "cl_gauss", "pg_fcl"]), deadline=0)
    bench.write_json(bench.sweep_result(b, "xe", {}), entry({}, 0.90, 0.30, 0.30))
    for i, hp in enumerate(bench.SWEEPS["fcl"]):  # the last setting is the most robust, and within a point of XE
        bench.write_json(bench.sweep_result(b, "fcl", hp), entry(hp, 0.895, 0.30 + 0.01 * i, 0.30))
    paper = bench.Bench(bench.get_args_parser().parse_args(["--paper-settings"]), deadline=0)
    assert bench.chosen_hp(b, "fcl") == bench.SWEEPS["fcl"][-1] != bench.chosen_hp(paper, "fcl")
    assert bench.chosen_hp(b, "fcl_every4") == {**bench.SWEEPS["fcl"][-1], "every": 4}
    assert bench.chosen_hp(b, "cl_gauss") == bench.chosen_hp(paper, "cl_gauss")
    assert bench.chosen_hp(b, "pg_fcl") == bench.chosen_hp(paper, "pg_fcl")
    with pytest.raises(RuntimeError, match="the xe_gauss sweep is unfinished"):
        bench.chosen_hp(b, "xe_gauss")
    none = bench.Bench(bench.get_args_parser().parse_args(argv), deadline=0)
    assert bench.chosen_hp(none, "fcl") == bench.SWEEPS["fcl"][-1]
    with pytest.raises(RuntimeError, match="the cl_gauss sweep is unfinished"):
        bench.chosen_hp(none, "cl_gauss")


def entry(hp, clean, un, nun):
    return {"hp": hp, "clean": clean, "un": un, "nun": nun}


def test_tables_fill_the_readme_between_its_markers_and_leave_the_rest(smoke, tmp_path):
    root, argv = smoke
    readme = tmp_path / "docs" / "README.md"
    readme.parent.mkdir()
    above, below = "# a project\n\nkept above\n", "\nkept below\n"
    above += bench.README_END + " (an end marker before the block is not its end)\n"
    readme.write_text(above + bench.README_BEGIN + "\nlast run's tables\n" + bench.README_END + below)
    args = argv[:argv.index("--part")] + ["--part", "tables", "--readme", str(readme)]
    assert bench.main(args) == 0
    text = readme.read_text()
    assert text.startswith(above + bench.README_BEGIN + "\n") and text.endswith(bench.README_END + below)
    assert "last run's tables" not in text and "#### Table 2: " in text and "#### Table 3: " in text
    tables = (root / "results" / "lr0.001-e1" / "tables.md").read_text()
    rows = [line for line in tables.splitlines() if line.startswith(("| FCL | 1 |", "| FCL | XE |"))]
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
    (and its variants, which follow FCL's settings), the old result moves to runs/earlier/, and the tables show both."""
    argv = ["--results", str(tmp_path), "--continue-lr", "0.01", "--continue-epochs", "24", "--seeds", "0",
            "--methods", "xe", "fcl", "fcl_every4"]
    b = bench.Bench(bench.get_args_parser().parse_args(argv), deadline=0)
    paper_hp, chosen = bench.SWEEPS["fcl"][0], bench.SWEEPS["fcl"][1]
    bench.write_json(bench.sweep_result(b, "xe", {}), entry({}, 0.90, 0.30, 0.30))
    for hp in bench.SWEEPS["fcl"]:
        bench.write_json(bench.sweep_result(b, "fcl", hp), entry(hp, 0.90, 0.40 if hp == chosen else 0.35, 0.35))
    for name, hp, un in (("xe", {}, 0.30), ("fcl", paper_hp, 0.33), ("fcl_every4", {**paper_hp, "every": 4}, 0.32)):
        bench.write_json(bench.run_result(b, name, 0), {"method": name, "seed": 0, "hp": hp, "clean": 0.9, "un": un,
                                                        "nun": 0.3, "c10c": c10c(0.7), "train_seconds": 100})
    assert bench.chosen_hp(b, "fcl") == chosen
    assert [bench.result_done(b, n, 0) for n in ("xe", "fcl", "fcl_every4")] == [True, False, False]
    todo = []
    monkeypatch.setattr(bench, "train_all", lambda b, runs, after=None: todo.extend(runs))
    bench.part_continue(b)
    assert todo == [("fcl", chosen, 0), ("fcl_every4", {**chosen, "every": 4}, 0)]

    bench.set_aside(b, "fcl", 0)  # as the evaluation does before it writes the new result
    bench.set_aside(b, "xe", 0)  # XE's settings did not change: it stays
    old = bench.earlier_result(b, "fcl", paper_hp, 0)
    assert json.loads(old.read_text())["un"] == 0.33 and not bench.run_result(b, "fcl", 0).exists()
    assert bench.run_result(b, "xe", 0).exists()
    bench.write_json(bench.run_result(b, "fcl", 0), {"method": "fcl", "seed": 0, "hp": chosen, "clean": 0.9,
                                                     "un": 0.45, "nun": 0.4, "c10c": c10c(0.72), "train_seconds": 300})
    assert bench.load_runs(b)["fcl"][0]["un"] == 0.45  # the tables' seeds: the current settings only
    rows = bench.format_earlier(b).splitlines()[4:]
    assert rows == [f"| FCL | {bench.hp_key(paper_hp)} | 0 | 0.9000 / 0.3300 / 0.3000 / 0.7000 | "
                    f"{bench.hp_key(chosen)} | 0.9000 / 0.4500 / 0.4000 / 0.7200 |"]

    # every 4 at Appendix B's settings, not yet redone at FCL's choice, is no row of the tables but an earlier result
    assert bench.load_runs(b)["fcl_every4"][0]["hp"] == {**paper_hp, "every": 4}
    bench.part_tables(b)
    assert not bench.run_result(b, "fcl_every4", 0).exists() and not bench.load_runs(b)["fcl_every4"]
    tables = (b.protocol_results / "tables.md").read_text()
    assert "| FCL every 4 | 0 | - | - | - |" in tables and "| FCL every 4 | FCL |" not in tables
    assert f"| FCL every 4 | {bench.hp_key({**paper_hp, 'every': 4})} | 0 | 0.9000 / 0.3200 / 0.3000" in tables


def test_choice_is_the_most_robust_setting_within_a_point_of_xe():
    entries = [entry({"w": 1}, 0.90, 0.30, 0.30), entry({"w": 2}, 0.895, 0.40, 0.38), entry({"w": 3}, 0.85, 0.7, 0.7)]
    assert bench.choose(entries, xe_clean=0.902) == {"w": 2}  # w=3 is more robust but costs 5 points
    assert bench.choose(entries[2:], xe_clean=0.902) == {"w": 3}  # nothing eligible: the most accurate


def test_paired_difference_is_taken_per_seed():
    runs = {"fcl": {0: {"un": 0.5}, 1: {"un": 0.7}, 2: {"un": 0.9}}, "xe": {0: {"un": 0.4}, 1: {"un": 0.6}}}
    assert bench.paired(runs, "fcl", "xe", bench.t2_value, "un") == "+0.1000 ± 0.0000"
    assert bench.paired({**runs, "xe": {1: {"un": 0.75}}}, "fcl", "xe", bench.t2_value, "un") == "-0.0500"  # one seed
    assert bench.mean_std([0.5, 0.7, 0.9]) == "0.7000 ± 0.2000" and bench.mean_std([]) == "-"


def test_training_time_table_gives_the_mean_per_method_its_ratio_to_xe_and_the_total():
    runs = {"xe": {0: {"train_seconds": 100.0, "precision": "bf16"}, 1: {"train_seconds": 300.0, "precision": "bf16"}},
            "fcl": {0: {"train_seconds": 500.0, "eval_seconds": 3600.0, "precision": "bf16"}}}
    table = bench.format_costs(runs).splitlines()
    assert "| XE | 2 | 200 | 1.00 | bf16 |" in table and "| FCL | 1 | 500 | 2.50 | bf16 |" in table
    assert not any(line.startswith("| XE+Gaussian |") for line in table)  # no runs, no row
    assert table[-1].startswith("In all: 3 continuations, 0.2 h of training and 1.0 h of evaluation. ")


def test_every4_keeps_its_share_of_full_fcls_paired_gain_and_reports_its_epoch_time():
    def entry(un, nun, mean, seconds):
        return {"un": un, "nun": nun, "c10c": {"mean": mean}, "train_seconds": seconds, "continue_epochs": 10}

    runs = {"xe": {0: entry(0.3, 0.3, 0.6, 100), 1: entry(0.4, 0.2, 0.7, 100)},
            "fcl": {0: entry(0.5, 0.4, 0.7, 400), 1: entry(0.6, 0.4, 0.7, 600), 2: entry(0.9, 0.9, 0.9, 9000)},
            "fcl_every4": {0: entry(0.4, 0.3, 0.65, 100), 1: entry(0.56, 0.35, 0.72, 200)}}
    table = bench.format_every4(runs).splitlines()
    assert table[0] == "### FCL every 4 steps against full FCL (seeds 0, 1)"  # seed 2 has no twin: left out
    assert table[4] == "| FCL | +0.2000 | +0.1500 | +0.0500 |"  # (0.2 + 0.2) / 2, (0.1 + 0.2) / 2, (0.1 + 0) / 2
    assert table[5] == "| FCL every 4 | +0.1300 | +0.0750 | +0.0350 |"
    assert table[6] == "| every 4 / full | 0.65 | 0.50 | 0.70 |"
    # per seed, never averaged over seeds: seed 0's runs may have shared the machine, seed 1's not
    assert table[8].startswith("Training seconds per epoch, every 4 / full: seed 0 10 / 40 (0.25), "
                               "seed 1 20 / 60 (0.33).")
    assert bench.format_every4({"xe": runs["xe"], "fcl": runs["fcl"]}) == ""


def test_per_corruption_differences_are_paired_means_in_the_order_of_fcls_gain():
    def entry(fog, snow):
        return {"c10c": {"per_corruption": {"fog": fog, "snow": snow}}}

    runs = {"xe": {0: entry(0.5, 0.5), 1: entry(0.6, 0.4)}, "fcl": {0: entry(0.52, 0.60), 1: entry(0.64, 0.50),
                                                                  2: entry(0.9, 0.9)}}
    table = bench.format_per_corruption(runs).splitlines()
    assert table[2] == "| corruption | FCL - XE |"  # only pairs with a shared seed
    assert table[4:] == ["| snow | +0.1000 |", "| fog | +0.0300 |"]  # seed 2 has no XE twin: left out
    assert bench.format_per_corruption({"xe": runs["xe"]}) == ""


def test_zoo_holds_the_seed_0_picks_with_their_own_numbers(smoke):
    root, argv = smoke
    b = bench.Bench(bench.get_args_parser().parse_args(argv), deadline=0)
    picks = bench.zoo_picks(bench.load_runs(b))
    assert picks[:2] == ["fcl", "xe"]
    tags = {f"resnet20_cifar.{bench.ZOO_TAGS[n]}" for n in picks} | {"resnet20_cifar.xe_pretrain_cifar10"}
    assert {p.name for p in (root / "zoo").iterdir()} == tags
    for name in picks:
        zoo = root / "zoo" / f"resnet20_cifar.{bench.ZOO_TAGS[name]}"
        run = b.run_dir(name, bench.chosen_hp(b, name), 0)
        assert bench.sha256(zoo / "model.safetensors") == bench.sha256(run / "model" / "model.safetensors")
        entry = json.loads((b.protocol_results / "runs" / f"{name}-s0.json").read_text())
        evaluated = json.loads((zoo / "eval" / "results.json").read_text())[run.name]
        assert bench.condense(evaluated)["un"] == entry["un"]
        assert f"| un | top-1 accuracy | {100 * entry['un']:.2f} |" in (zoo / "README.md").read_text()


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
    b = bench.Bench(bench.get_args_parser().parse_args(args + ["--corruption-samples", "20"]), deadline=0)
    (merged,) = bench.evaluate_test(b, [run], tmp_path / "out").values()
    assert calls == [(("clean", "un", "nun"), 100), (("generated",), 20)]
    assert [r["suite"] for r in merged["rows"]] == ["clean", "un", "nun", "generated"]
    assert merged["unit"] == "percent" and merged["summaries"] == {"generated": {"mean_all": 50.0}}
    calls.clear()
    b = bench.Bench(bench.get_args_parser().parse_args(args + ["--corruption-samples", "100"]), deadline=0)
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
        assert split == "validation" and suites == list(bench.SUITES)
        scored.append(runs[0].name)
        rows = [{"suite": s, "severity": 0, "accuracy": 80.0 + len(scored)} for s in suites]
        return {r.name: {"unit": "percent", "rows": rows, "summaries": {}} for r in runs}

    monkeypatch.setattr(bench, "train_continuation", train_continuation)
    monkeypatch.setattr(bench, "evaluate", evaluate)
    argv = ["--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"), "--jobs", "1"]
    b = bench.Bench(bench.get_args_parser().parse_args(argv), deadline=0)
    grid = bench.SWEEPS["xe_gauss"]
    with pytest.raises(bench.PartStopped):
        bench.validate(b, [("xe_gauss", hp) for hp in grid])
    assert [bench.sweep_result(b, "xe_gauss", hp).is_file() for hp in grid] == [True, True, False]
    first = json.loads(bench.sweep_result(b, "xe_gauss", grid[0]).read_text())
    assert (first["hp"], first["clean"], first["seed"]) == (grid[0], 0.81, bench.SWEEP_SEED)
    scored.append("stopped")  # the next part: only the third setting is trained and scored
    bench.validate(b, [("xe_gauss", hp) for hp in grid])
    assert trained[2:] == [("xe_gauss", grid[2])] and len(scored) == 4
    assert json.loads(bench.sweep_result(b, "xe_gauss", grid[2]).read_text())["un"] == 0.84


def test_training_time_counts_a_segment_whose_process_was_killed(monkeypatch, tmp_path):
    """A part killed outright (SIGKILL: no chance to add its time) leaves a marker; the next part adds the killed
    segment's time, up to the last line its training logged, before its own."""
    b = bench.Bench(bench.get_args_parser().parse_args(["--work", str(tmp_path / "work")]), deadline=time.time() + 600)
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

    monkeypatch.setattr(b, "run", lambda cmd, log: time.sleep(0.2))
    bench.train(b, ["train"], run, epochs=1)
    assert 40.2 <= json.loads((run / "bench_wall.json").read_text())["seconds"] < 45
    assert not marker.exists()
    bench.train(b, ["train"], run, epochs=1)  # a segment that ends normally adds only its own time
    assert 40.4 <= json.loads((run / "bench_wall.json").read_text())["seconds"] < 50


def test_a_command_running_at_the_deadline_is_asked_to_save_and_a_run_past_it_is_not_announced(tmp_path, capsys):
    """At --hours' end the training command gets SIGTERM (train_fcl.py saves its state on it), not an outright kill;
    once the deadline has passed, no further run is started or announced."""
    # 10 s: under load the child must have installed its handler (and printed "up") before the deadline
    b = bench.Bench(bench.get_args_parser().parse_args(["--work", str(tmp_path / "work")]), deadline=time.time() + 10)
    log = tmp_path / "saves.log"
    child = ("import signal, sys, time\n"
             "def save(*_):\n    print('state saved', flush=True); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, save)\nprint('up', flush=True)\ntime.sleep(60)\n")
    start = time.time()
    with pytest.raises(bench.PartStopped):
        b.run([sys.executable, "-c", child], log)
    assert log.read_text().splitlines() == ["up", "state saved"]
    assert time.time() - start < 60  # the child's sleep of 60 s was cut short

    run = tmp_path / "work" / "runs" / "xe-s0"
    with pytest.raises(bench.PartStopped):
        bench.train(b, ["train"], run, epochs=1)
    assert "training" not in capsys.readouterr().out and not run.exists()
