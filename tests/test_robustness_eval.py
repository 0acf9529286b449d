"""Readers of the official CIFAR-C / ImageNet-C layouts, the evaluation command, Table 3 summaries and mCE."""
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models import register_model

from timm_fcl.run.model_io import ModelError
from timm_fcl.robustness.cli import cli, get_args_parser, main
from timm_fcl.robustness.corruptions import BENCHMARK_CORRUPTIONS
from timm_fcl.robustness.datasets import ArrayDataset, cifar_c_sets, generated_suite_dir, imagenet_c_sets
from timm_fcl.robustness.evaluation import EvalSet, build_sets, evaluate_accuracy, load_models, model_label, run
from timm_fcl.robustness.metrics import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, summarize_corruptions

NUM_CLASSES = 10


def plant(label: int) -> int:
    """Grey level that encodes a label; wide steps survive JPEG."""
    return 20 * label + 10


class PlantedLabelReader(torch.nn.Module):
    """Predicts the label encoded in the top-left pixel of channel 0 (inputs in [0, 1], i.e. mean 0 and std 1);
    the other classes rank by their distance to it (lower class first on ties), so top-5 of label L is L, L-1, L+1,
    L-2, L+2. ``calls`` counts forward passes; the ``fail_at``-th one raises, as a run killed there would stop."""
    calls = 0
    fail_at = None

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        PlantedLabelReader.calls += 1
        if PlantedLabelReader.calls == PlantedLabelReader.fail_at:
            raise KeyboardInterrupt
        label = ((x[:, 0, 0, 0] * 255 - 10) / 20).round().clamp(0, self.num_classes - 1)
        classes = torch.arange(self.num_classes, dtype=x.dtype)
        return -(classes[None] - label[:, None]).abs() - 0.01 * classes[None]


@register_model
def planted_label_reader(pretrained=False, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k == "num_classes"}
    return PlantedLabelReader(**kwargs)


def correct_count(corruption_index: int, severity: int, n: int) -> int:
    """How many of the n images of a set carry their true label: differs by corruption and severity."""
    return [severity, 6 - severity][corruption_index % 2] * n // 5


def make_cifar_c(root: Path, corruptions=("gaussian_noise", "fog"), n: int = 20) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    labels = rng.randint(0, NUM_CLASSES, size=n)
    np.save(root / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    for ci, name in enumerate(corruptions):
        images = rng.randint(0, 256, size=(5 * n, 32, 32, 3)).astype(np.uint8)
        for severity in range(1, 6):
            for i in range(n):
                good = i < correct_count(ci, severity, n)
                images[(severity - 1) * n + i, 0, 0, 0] = plant(labels[i] if good else (labels[i] + 1) % NUM_CLASSES)
        np.save(root / f"{name}.npy", images)


def make_imagenet_c(root: Path, corruptions=("snow", "contrast"), per_class: int = 5, index=None, size=32) -> list:
    """Three classes whose wnids sort differently from their creation order, images planted with their sorted
    position (or ``index[wnid]``); returns the sorted wnids."""
    wnids = ["n0300", "n0100", "n0200"]
    index = index or {w: i for i, w in enumerate(sorted(wnids))}
    for ci, name in enumerate(corruptions):
        for severity in range(1, 6):
            for w in wnids:
                folder = root / name / str(severity) / w
                folder.mkdir(parents=True)
                for i in range(per_class):
                    good = i < correct_count(ci, severity, per_class)
                    value = plant(index[w] if good else 9)  # 9: a class no image has
                    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(folder / f"{w}_{i}.JPEG",
                                                                                     quality=85)
    return sorted(wnids)


def accuracy(dataset) -> float:
    (correct, _), total = evaluate_accuracy(PlantedLabelReader(), dataset, mean=(0, 0, 0), std=(1, 1, 1),
                                            batch_size=7)
    return correct / total


PLANTED = ["--model", "planted_label_reader", "--checkpoint", "none", "--mean", "0", "0", "0", "--std", "1", "1", "1",
           "--workers", "0"]


def test_cifar_c_reader_labels_and_severity_order(tmp_path):
    make_cifar_c(tmp_path)
    sets = cifar_c_sets(tmp_path)
    assert [(c, s) for c, s, _ in sets] == [(c, s) for c in ("gaussian_noise", "fog") for s in range(1, 6)]
    for corruption, severity, data in sets:
        expected = correct_count(("gaussian_noise", "fog").index(corruption), severity, 20) / 20
        assert accuracy(data) == expected, (corruption, severity)


def test_array_batches_are_what_a_data_loader_yields(tmp_path):
    """Memory-mapped uint8 NHWC images (a CIFAR-C file) and float NCHW images (the noisy sets), a short last batch:
    the sliced batches equal a DataLoader's, and a model scores the same on both."""
    from torch.utils.data import DataLoader

    make_cifar_c(tmp_path, n=23)
    _, _, memmapped = cifar_c_sets(tmp_path)[2]
    floats = ArrayDataset(torch.rand(23, 3, 8, 8), np.arange(23) % NUM_CLASSES)
    for dataset in (memmapped, floats):
        sliced, loaded = list(dataset.batches(7)), list(DataLoader(dataset, batch_size=7))
        assert [len(y) for _, y in sliced] == [7, 7, 7, 2]
        for (x, y), (x_ref, y_ref) in zip(sliced, loaded, strict=True):
            assert x.dtype == x_ref.dtype and torch.equal(x, x_ref) and torch.equal(y, y_ref)
            assert y.dtype == torch.int64
    by_item = torch.utils.data.Subset(memmapped, range(len(memmapped)))  # not an ArrayDataset: read by a DataLoader
    assert accuracy(memmapped) == accuracy(by_item) == correct_count(0, 3, 23) / 23


def test_imagenet_c_reader_sorted_wnids_and_class_map(tmp_path):
    wnids = make_imagenet_c(tmp_path)
    for corruption, severity, data in imagenet_c_sets(tmp_path):
        expected = correct_count(("snow", "contrast").index(corruption), severity, 5) / 5
        assert accuracy(data) == expected, (corruption, severity)
        assert np.asarray(data[0][0]).shape == (3, 32, 32)  # read as is: no resize or crop
    # a class map that reverses the order: only the middle class keeps its index, so only its good images count
    (tmp_path / "map.txt").write_text("\n".join(reversed(wnids)) + "\n")
    for corruption, severity, data in imagenet_c_sets(tmp_path, class_map=str(tmp_path / "map.txt")):
        expected = correct_count(("snow", "contrast").index(corruption), severity, 5) / 15
        assert accuracy(data) == pytest.approx(expected), (corruption, severity)


def test_readers_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        cifar_c_sets(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        imagenet_c_sets(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="corruption"):
        imagenet_c_sets(tmp_path)


def test_eval_command_on_planted_benchmarks(tmp_path):
    make_cifar_c(tmp_path / "cifar")
    make_imagenet_c(tmp_path / "inc")
    args = get_args_parser().parse_args([
        *PLANTED, "--suites", "cifar-c", "imagenet-c", "--cifar-c-dir", str(tmp_path / "cifar"),
        "--imagenet-c-dir", str(tmp_path / "inc"), "--output", str(tmp_path / "out")])
    results = main(args)
    rows = results["planted_label_reader"]["rows"]
    assert len(rows) == 20
    cifar_labels = np.load(tmp_path / "cifar" / "labels.npy")[:20]
    for row in rows:
        if row["suite"] == "cifar-c":
            good = correct_count(("gaussian_noise", "fog").index(row["corruption"]), row["severity"], 20)
            # the wrong images read label + 1: within the top-5, except label 9 read as 0
            top5 = good + sum(int(label != 9) for label in cifar_labels[good:])
            assert (row["correct"], row["correct_top5"], row["total"]) == (good, top5, 20), row
        else:
            good = correct_count(("snow", "contrast").index(row["corruption"]), row["severity"], 5)
            assert (row["correct"], row["correct_top5"]) == (3 * good, 3 * good), row  # 9 is far from 0, 1, 2
        assert (row["accuracy"], row["top5"]) == (100 * row["correct"] / row["total"],
                                                  100 * row["correct_top5"] / row["total"])  # percent, as timm's
    assert any(row["top5"] > row["accuracy"] for row in rows)
    assert results["planted_label_reader"]["unit"] == "percent"
    summary = results["planted_label_reader"]["summaries"]["cifar-c"]
    # (20 + 40 + ... + 100) / 5 either way
    assert summary["per_corruption"] == {"gaussian_noise": pytest.approx(60.0), "fog": pytest.approx(60.0)}
    assert json.loads((tmp_path / "out" / "results.json").read_text())["planted_label_reader"]["rows"] == rows
    with open(tmp_path / "out" / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(float(r["accuracy"]), float(r["top5"])) for r in csv_rows] == [(r["accuracy"], r["top5"]) for r in rows]
    assert not (tmp_path / "out" / "results.partial.jsonl").exists()  # a finished evaluation leaves none
    assert (tmp_path / "out" / "corruptions.png").stat().st_size > 10_000
    assert not (tmp_path / "out" / "clean_and_noisy.png").exists()


def test_eval_command_clear_errors(tmp_path):
    parse = get_args_parser().parse_args
    with pytest.raises(ModelError, match="checkpoint"):
        main(parse(["--model", "resnet18", "--checkpoint", str(tmp_path / "missing.safetensors")]))
    with pytest.raises(ModelError, match="model.safetensors"):
        main(parse(["--model", str(tmp_path)]))
    with pytest.raises(ModelError, match="neither a timm model"):
        main(parse(["--model", "no_such_model_xyz"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(parse([*PLANTED, "--suites", "clean", "--data-dir", str(tmp_path / "nope")]))
    with pytest.raises(ValueError, match="--cifar-c-dir"):
        main(parse([*PLANTED, "--suites", "cifar-c"]))


def test_generated_suite_is_cached_and_deterministic(tmp_path):
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, size=(6, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(6)
    a = generated_suite_dir(images, labels, cache_dir=tmp_path / "a", corruptions=["shot_noise", "frost"])
    stamp = (a / "frost.npy").stat().st_mtime_ns
    assert generated_suite_dir(images, labels, cache_dir=tmp_path / "a", corruptions=["shot_noise", "frost"]) == a
    assert (a / "frost.npy").stat().st_mtime_ns == stamp  # reused, not regenerated
    b = generated_suite_dir(images, labels, cache_dir=tmp_path / "b", corruptions=["shot_noise", "frost"], workers=2)
    for name in ("shot_noise", "frost", "labels"):
        np.testing.assert_array_equal(np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy"))
    sets = cifar_c_sets(a)
    assert [(c, s) for c, s, _ in sets] == [(c, s) for c in ("shot_noise", "frost") for s in range(1, 6)]
    assert [int(sets[0][2][i][1]) for i in range(6)] == list(range(6))


def test_mce_equals_hand_computation():
    # gaussian_noise errors 0.2, 0.4, 0.6, 0.8, 1.0 (mean 0.6); every other benchmark corruption 0.5 at each severity.
    errors = {c: [0.5] * 5 for c in BENCHMARK_CORRUPTIONS}
    errors["gaussian_noise"] = [0.2, 0.4, 0.6, 0.8, 1.0]
    acc = {(c, s + 1): 1 - e for c, es in errors.items() for s, e in enumerate(es)}
    summary = summarize_corruptions(acc, clean_accuracy=0.75, with_mce=True)
    # by hand, with the published AlexNet errors typed in again (gauss first, then the other 14 in column order):
    alexnet = [0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360, 0.866816, 0.826572, 0.819324,
               0.564592, 0.853204, 0.646056, 0.717840, 0.606500]
    # CE_gauss = 0.6 / 0.886428 = 0.676874; CE_shot = 0.5 / 0.894468 = 0.558991; the 14 others sum to 9.136824
    assert summary["ce"]["gaussian_noise"] == pytest.approx(0.676874, abs=1e-6)
    assert summary["ce"]["shot_noise"] == pytest.approx(0.558991, abs=1e-6)
    assert sum(0.5 / a for a in alexnet[1:]) == pytest.approx(9.136824, abs=1e-6)
    assert summary["mce"] == pytest.approx((0.676874 + 9.136824) / 15, abs=1e-6)  # 0.654247
    # relative CE = (E - clean 0.25) / (AlexNet E - AlexNet clean 0.4348): gauss 0.35 / 0.451628 = 0.774974,
    # brightness 0.25 / 0.129792 = 1.926159
    assert summary["relative_ce"]["gaussian_noise"] == pytest.approx(0.774974, abs=1e-6)
    assert summary["relative_ce"]["brightness"] == pytest.approx(1.926159, abs=1e-6)
    expected = (0.35 / (alexnet[0] - 0.4348) + sum(0.25 / (a - 0.4348) for a in alexnet[1:])) / 15
    assert summary["relative_mce"] == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(0.828804, abs=1e-6)
    assert ALEXNET_CLEAN_ERROR == 0.4348 and len(ALEXNET_ERRORS) == 15
    # AlexNet itself scores mCE = relative mCE = 1 by construction
    alex = {(c, s): 1 - ALEXNET_ERRORS[c] for c in BENCHMARK_CORRUPTIONS for s in range(1, 6)}
    alex_summary = summarize_corruptions(alex, clean_accuracy=1 - ALEXNET_CLEAN_ERROR, with_mce=True)
    assert alex_summary["mce"] == pytest.approx(1.0) and alex_summary["relative_mce"] == pytest.approx(1.0)
    assert "mce" not in summarize_corruptions(alex)  # CIFAR parameters: no AlexNet reference


def test_group_averages_reproduce_table3_from_appendix_c():
    # Appendix C, CIFAR-10-C, XE and FCL_xe rows (the 15 benchmark corruptions, in the table's column order)
    xe = [0.4049, 0.5374, 0.5477, 0.7912, 0.4846, 0.7350, 0.7222, 0.7933, 0.7486, 0.8587, 0.9231, 0.7310, 0.8092,
          0.6990, 0.7756]
    fcl = [0.5505, 0.6431, 0.7311, 0.7922, 0.5140, 0.7273, 0.7210, 0.7988, 0.7555, 0.8590, 0.9217, 0.7233, 0.8092,
           0.7036, 0.7758]
    table3 = {"xe": (0.4967, 0.6833, 0.8309, 0.7537), "fcl": (0.6416, 0.6886, 0.8338, 0.7530)}
    for method, row in (("xe", xe), ("fcl", fcl)):
        summary = summarize_corruptions({(c, 1): a for c, a in zip(BENCHMARK_CORRUPTIONS, row)})
        groups = summary["groups"]
        got = (groups["noise"], groups["blur"], groups["weather"], groups["digital"])
        assert got == pytest.approx(table3[method], abs=1e-4), method
        assert summary["mean_19"] is None and summary["mean_15"] == pytest.approx(np.mean(row))


def test_eval_command_clean_noisy_and_generated_from_an_image_folder(tmp_path):
    """Clean accuracy is exact on planted images; UN / NUN / generated sets are built from the same clean set."""
    for label in range(3):
        folder = tmp_path / "clean" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(4):
            image = np.full((32, 32, 3), 128, np.uint8)
            image[0, 0, 0] = plant(label if i < 3 else 9)  # 3 of 4 images per class readable: clean accuracy 75%
            image[8:24, 8:24] = np.random.RandomState(i).randint(0, 256, (16, 16, 3))
            Image.fromarray(image).save(folder / f"{i}.png")
    suites = ["clean", "generated", "un", "nun"]
    argv = [*PLANTED, "--suites", *suites, "--data-dir", str(tmp_path / "clean"), "--split", "", "--train-split", "",
            "--corruptions", "contrast", "jpeg_compression", "--img-size", "32", "--cache-dir", str(tmp_path / "cache"),
            "--output", str(tmp_path / "out")]
    rows = main(get_args_parser().parse_args(argv))["planted_label_reader"]["rows"]
    by_suite = {}
    for row in rows:
        by_suite.setdefault(row["suite"], []).append(row)
    assert [r["accuracy"] for r in by_suite["clean"]] == [75.0]
    assert [(r["corruption"], r["severity"]) for r in by_suite["generated"]] == [
        (c, s) for c in ("contrast", "jpeg_compression") for s in range(1, 6)]
    assert all(r["total"] == 12 for r in rows)
    # 15% of the pixels replaced: the planted pixel survives in about 85% of the images
    assert 30 <= by_suite["un"][0]["accuracy"] <= 75 and 0 <= by_suite["nun"][0]["accuracy"] <= 75
    again = main(get_args_parser().parse_args(argv))["planted_label_reader"]["rows"]
    assert again == rows  # cached corruptions and seeded noise: identical rerun


def test_eval_command_compares_two_models_and_earlier_results(tmp_path):
    make_cifar_c(tmp_path / "cifar", n=10)
    common = ["--suites", "cifar-c", "--cifar-c-dir", str(tmp_path / "cifar"), "--mean", "0", "0", "0",
              "--std", "1", "1", "1", "--batch-size", "5", "--workers", "0"]
    first = main(get_args_parser().parse_args(
        ["--model", "planted_label_reader", "--checkpoint", "none", *common, "--output", str(tmp_path / "one")]))
    # an evaluation written before accuracies were in percent (fractions, no unit) is refused, not converted
    rows = first["planted_label_reader"]["rows"]
    older = {"older": {"spec": "older", "rows": [dict(r, model="older", accuracy=r["accuracy"] / 100,
                                                      top5=r["top5"] / 100) for r in rows], "summaries": {}}}
    (tmp_path / "older.json").write_text(json.dumps(older))
    argv = ["--model", "resnet18", "--checkpoint", "none", "--num-classes", str(NUM_CLASSES), *common,
            "--output", str(tmp_path / "two"), "--compare", str(tmp_path / "one" / "results.json")]
    with pytest.raises(ValueError, match=r"older.json, 'older': accuracies in None, not 'percent'"):
        main(get_args_parser().parse_args(argv + [str(tmp_path / "older.json")]))
    assert not (tmp_path / "two").exists()  # refused before anything was evaluated
    both = main(get_args_parser().parse_args(argv))
    assert list(both) == ["resnet18", "planted_label_reader"]
    assert both["planted_label_reader"] == json.loads(json.dumps(first["planted_label_reader"]))
    with open(tmp_path / "two" / "results.csv") as f:
        assert {row["model"] for row in csv.DictReader(f)} == {"resnet18", "planted_label_reader"}


def test_evaluation_as_a_library_with_keyword_arguments(tmp_path):
    make_cifar_c(tmp_path, corruptions=("fog",), n=10)
    models = load_models(["planted_label_reader"], checkpoints=["none"],
                         data_overrides={"mean": (0, 0, 0), "std": (1, 1, 1)})
    sets, presets = build_sets(suites=["cifar-c"], data_config=models[0].data_config, cifar_c_dir=str(tmp_path))
    results = run(models=models, sets=sets, suite_presets=presets, batch_size=4)
    assert [r["accuracy"] for r in results["planted_label_reader"]["rows"]] == [20.0, 40.0, 60.0, 80.0, 100.0]
    with pytest.raises(ValueError, match="unknown suite"):
        build_sets(suites=["cifar"], data_config=models[0].data_config)


def test_model_labels_name_runs_by_their_folder(tmp_path):
    run = tmp_path / "cifar10_resnet18_fcl"
    (run / "model").mkdir(parents=True)
    assert model_label(str(run / "model")) == model_label(f"local-dir:{run / 'model_ema'}") == run.name
    assert model_label("resnet18", "xe/model.safetensors") == "resnet18:model"
    assert model_label("hf-hub:org/name") == "hf-hub:org/name"


@pytest.mark.parametrize("args", [["--model", "/nonexistent", "--suites", "clean"],
                                  ["--model", "resnet18", "--suites", "bogus", "--data-dir", "."],
                                  ["--suites", "clean"]])
def test_eval_command_bad_input_is_one_error_line(args):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "timm_fcl.eval", *args], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("timm_fcl.eval: error:")


def eval_error_line(argv, capsys) -> str:
    """The command's refusal: exit status 2 and a single stderr line."""
    capsys.readouterr()
    assert cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("timm_fcl.eval: error:"), lines
    return lines[0]


def test_class_map_labels_the_clean_set_as_the_imagenet_c_sets(tmp_path):
    """Relative mCE subtracts the clean error: the clean set must be labelled through --class-map too."""
    order = ["n0300", "n0200", "n0100"]  # the map reverses the sorted wnids: only n0200 keeps its index
    (tmp_path / "map.txt").write_text("\n".join(order) + "\n")
    index = {w: i for i, w in enumerate(order)}
    make_imagenet_c(tmp_path / "inc", corruptions=BENCHMARK_CORRUPTIONS, per_class=1, index=index, size=8)
    for w in order:
        (tmp_path / "clean" / w).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), plant(index[w]), np.uint8)).save(tmp_path / "clean" / w / f"{i}.png")
    results = main(get_args_parser().parse_args([
        *PLANTED, "--suites", "clean", "imagenet-c", "--data-dir", str(tmp_path / "clean"), "--split", "",
        "--imagenet-c-dir", str(tmp_path / "inc"), "--class-map", str(tmp_path / "map.txt"),
        "--output", str(tmp_path / "out")]))["planted_label_reader"]
    clean = [r for r in results["rows"] if r["suite"] == "clean"]
    assert [(r["correct"], r["total"]) for r in clean] == [(6, 6)]  # sorted folder order would give 2 of 6
    corrupted = {(r["corruption"], r["severity"]): r["correct"] / r["total"] for r in results["rows"]
                 if r["suite"] != "clean"}
    # per_class 1: one severity per corruption has its images planted right (correct_count), the others none
    assert sorted(set(corrupted.values())) == [0.0, 1.0] and len(corrupted) == 75
    expected = summarize_corruptions(corrupted, clean_accuracy=1.0, with_mce=True)["relative_mce"]
    wrong = summarize_corruptions(corrupted, clean_accuracy=2 / 6, with_mce=True)["relative_mce"]
    assert results["summaries"]["imagenet-c"]["relative_mce"] == pytest.approx(100 * expected)  # in percent
    assert abs(expected - wrong) > 0.5


def test_class_map_and_imagenet_c_classes_are_checked(tmp_path, capsys):
    make_imagenet_c(tmp_path / "inc", per_class=1, size=8)
    base = [*PLANTED, "--suites", "imagenet-c", "--imagenet-c-dir", str(tmp_path / "inc")]
    line = eval_error_line([*base, "--class-map", str(tmp_path / "missing.txt")], capsys)
    assert "--class-map" in line and "does not exist" in line
    (tmp_path / "short.txt").write_text("n0100\nn0200\n")  # timm would silently skip n0300's images
    assert "n0300" in eval_error_line([*base, "--class-map", str(tmp_path / "short.txt")], capsys)
    shutil.rmtree(tmp_path / "inc" / "contrast" / "3" / "n0100")  # would shift n0200 -> 0, n0300 -> 1 in that set
    line = eval_error_line(base, capsys)
    assert "disagree on their classes" in line and "contrast/3" in line and "n0100" in line
    assert not (tmp_path / "inc" / "out").exists()


def test_random_weights_are_refused_unless_asked_for(capsys):
    line = eval_error_line(["--model", "resnet18", "--suites", "clean", "--data-dir", "."], capsys)
    assert "--pretrained" in line and "--checkpoint none" in line
    line = eval_error_line(["--model", "lenet5_mnist", "--pretrained", "--suites", "clean", "--data-dir", "."], capsys)
    assert "no pretrained weights" in line


def test_interrupted_evaluation_continues_without_redoing_finished_sets(tmp_path, capsys):
    make_cifar_c(tmp_path / "cifar")  # 10 sets of 20 images: one forward pass each
    argv = [*PLANTED, "--suites", "cifar-c", "--cifar-c-dir", str(tmp_path / "cifar"), "--output", str(tmp_path / "out")]
    reference = main(get_args_parser().parse_args([*argv[:-1], str(tmp_path / "reference")]))
    PlantedLabelReader.calls, PlantedLabelReader.fail_at = 0, 4
    try:
        with pytest.raises(KeyboardInterrupt):
            main(get_args_parser().parse_args(argv))
    finally:
        PlantedLabelReader.fail_at = None
    partial = (tmp_path / "out" / "results.partial.jsonl").read_text().splitlines()
    assert len(partial) == 1 + 3 and "command" in json.loads(partial[0])  # header + the three finished sets
    line = eval_error_line([*argv, "--max-samples", "5"], capsys)  # rows of two evaluations are never mixed
    assert "another command" in line and "max_samples" in line
    PlantedLabelReader.calls = 0
    assert main(get_args_parser().parse_args([*argv, "--batch-size", "64"])) == reference  # speed flags may change
    assert PlantedLabelReader.calls == 7  # only the sets the interrupted run had not finished
    assert not (tmp_path / "out" / "results.partial.jsonl").exists()


def test_autocast_bf16_and_channels_last_reach_the_model():
    images = np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    models = load_models(["resnet18"], checkpoints=["none"], num_classes=NUM_CLASSES, channels_last=True)
    conv = models[0].model.conv1
    seen = []
    conv.register_forward_hook(lambda m, inputs, out: seen.append(
        (inputs[0].is_contiguous(memory_format=torch.channels_last), out.dtype)))
    sets = [EvalSet("clean", "clean", 0, ArrayDataset(images, np.arange(4)))]
    row = run(models=models, sets=sets, suite_presets={}, amp="bf16", channels_last=True)["resnet18"]["rows"][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert seen == [(True, torch.bfloat16)] and row["total"] == 4 and row["correct"] <= row["correct_top5"]


def exported_lenet(folder: Path) -> torch.nn.Module:
    """An input-sensitive lenet5_mnist (in_chans 1) exported as model.safetensors + config.json."""
    import timm
    from timm_fcl.run.export import export_model

    torch.manual_seed(0)
    model = timm.create_model("lenet5_mnist").eval()
    for name, p in model.named_parameters():  # larger than timm's init, so that different digits differ in class
        torch.nn.init.normal_(p, 0, 0.5 if "weight" in name else 0.0)
    export_model(model, folder, data_config=timm.data.resolve_model_data_config(model))
    return model


def write_predicted_folder(root: Path, model: torch.nn.Module, images: np.ndarray, mean, std) -> None:
    """Each image saved under the class the model predicts for it (folders c0000 ...), with a class map of every
    class: evaluated as the model sees it, top-1 is exactly 1."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        predicted = model((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)).argmax(1)
    for i, (image, label) in enumerate(zip(images, predicted.tolist())):
        (root / f"c{label:04d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(root / f"c{label:04d}" / f"{i}.png")
    (root.parent / "classes.txt").write_text("".join(f"c{c:04d}\n" for c in range(model.num_classes)))


def test_greyscale_lenet5_checkpoint_is_evaluated_on_grey_images(tmp_path):
    model = exported_lenet(tmp_path / "lenet")
    blocks = np.random.RandomState(1).rand(24, 7, 7, 1) > 0.6  # 28x28 MNIST-like blobs
    images = (blocks.repeat(4, 1).repeat(4, 2) * 255).astype(np.uint8)
    write_predicted_folder(tmp_path / "mnist" / "test", model, images, mean=(0.0,), std=(1.0,))
    assert len(list((tmp_path / "mnist" / "test").iterdir())) >= 2  # the labels are not all one class
    results = main(get_args_parser().parse_args([
        "--model", str(tmp_path / "lenet"), "--suites", "clean", "un", "--data-dir", str(tmp_path / "mnist"),
        "--class-map", str(tmp_path / "mnist" / "classes.txt"), "--train-split", "test", "--workers", "0",
        "--output", str(tmp_path / "out")]))["lenet"]
    clean = results["rows"][0]
    assert (clean["suite"], clean["correct"], clean["correct_top5"], clean["total"]) == ("clean", 24, 24, 24)
    assert results["rows"][1]["suite"] == "un" and results["rows"][1]["total"] == 24
    assert results["weights"].startswith("own")


HUB_LOAD = "resnet18 from an offline Hugging Face cache"


def test_pretrained_resnet18_and_its_tag_from_an_offline_hub_cache(tmp_path):
    import subprocess
    import sys

    import timm
    from timm_fcl.run.export import export_model

    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    assert hub_id == "timm/resnet18.a1_in1k"  # what timm resolves the bare name to
    torch.manual_seed(0)
    model = timm.create_model("resnet18").eval()
    config = timm.data.resolve_model_data_config(model)
    repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
    export_model(model, repo / "snapshots" / ("0" * 40), data_config=config)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    images = np.random.RandomState(2).randint(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    write_predicted_folder(tmp_path / "val" / "test", model, images, mean=config["mean"], std=config["std"])
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]), TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "timm_fcl.eval", "--model", "resnet18", "--model",
                           "resnet18.a1_in1k", "--pretrained", "--suites", "clean", "--data-dir", str(tmp_path / "val"),
                           "--class-map", str(tmp_path / "val" / "classes.txt"), "--workers", "0",
                           "--output", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for label in ("resnet18", "resnet18.a1_in1k"):  # the saved weights predict every label: random ones would not
        assert [(r["correct"], r["total"]) for r in results[label]["rows"]] == [(6, 6)], HUB_LOAD
        assert results[label]["weights"] == f"timm pretrained {hub_id}"


# ------------------------------------------------------------------------ numbers only from the weights it was given
def test_a_config_whose_classes_contradict_the_weights_is_one_line(tmp_path, capsys):
    """timm would build a 5-way head for such a config and re-initialize it: the accuracy printed would be of a head
    nobody trained. The export is refused before any set is read."""
    exported_lenet(tmp_path / "lenet")
    config = json.loads((tmp_path / "lenet" / "config.json").read_text())
    assert config["num_classes"] == 10
    (tmp_path / "lenet" / "config.json").write_text(json.dumps({**config, "num_classes": 5}))
    line = eval_error_line(["--model", str(tmp_path / "lenet"), "--suites", "clean", "--data-dir",
                           str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")], capsys)
    assert "num_classes 5 contradicts" in line and "has shape [10, " in line, line
    assert not (tmp_path / "out").exists()

    exported_lenet(tmp_path / "lenet")  # the same export intact loads and keeps its trained head exactly
    model = load_models([str(tmp_path / "lenet")])[0].model
    assert torch.equal(model.state_dict()[f"{model.default_cfg['classifier']}.weight"],
                       exported_lenet(tmp_path / "again").state_dict()[f"{model.default_cfg['classifier']}.weight"])


@pytest.mark.parametrize("where", ["flag", "config"])
def test_a_std_that_is_not_positive_is_one_line(tmp_path, capsys, where):
    exported_lenet(tmp_path / "lenet")
    argv = ["--model", str(tmp_path / "lenet"), "--suites", "clean", "--data-dir", str(tmp_path / "nowhere")]
    if where == "flag":
        line = eval_error_line([*argv, "--std", "1", "0", "1"], capsys)
        assert "--std: std [1.0, 0.0, 1.0] must be positive" in line, line
    else:
        config = json.loads((tmp_path / "lenet" / "config.json").read_text())
        config["pretrained_cfg"]["std"] = [0.0]
        (tmp_path / "lenet" / "config.json").write_text(json.dumps(config))
        line = eval_error_line(argv, capsys)
        assert f"{tmp_path / 'lenet' / 'config.json'}: std [0.0] must be positive" in line, line


def test_labels_outside_the_models_classes_are_one_line(tmp_path, capsys):
    make_cifar_c(tmp_path / "cifar")
    labels = np.load(tmp_path / "cifar" / "labels.npy")
    labels[7] = NUM_CLASSES + 2
    np.save(tmp_path / "cifar" / "labels.npy", labels)
    line = eval_error_line([*PLANTED, "--suites", "cifar-c", "--cifar-c-dir", str(tmp_path / "cifar"), "--output",
                           str(tmp_path / "out")], capsys)
    assert f"labels.npy: label {NUM_CLASSES + 2} (at index 7; 1 of 100 are) is outside [0, {NUM_CLASSES})" in line, line
    # in range for a model with more classes: the same folder is evaluated
    ok = main(get_args_parser().parse_args([*PLANTED, "--num-classes", str(NUM_CLASSES + 3), "--suites", "cifar-c",
                                            "--cifar-c-dir", str(tmp_path / "cifar"), "--corruptions", "fog",
                                            "--output", str(tmp_path / "out13")]))
    assert ok["planted_label_reader"]["rows"][0]["total"] == 20


def test_each_row_keeps_which_images_were_right_in_the_sets_order():
    from timm_fcl.robustness.hits import pack_counts, pack_hits, unpack_counts, unpack_hits

    rng = np.random.RandomState(3)
    labels = rng.randint(0, NUM_CLASSES, 29)
    right = rng.rand(29) < 0.6
    predicted = np.where(right, labels, (labels + 1) % NUM_CLASSES)
    images = np.zeros((29, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = [plant(p) for p in predicted]
    model = load_models(["planted_label_reader"], checkpoints=["none"], num_classes=NUM_CLASSES,
                        data_overrides={"mean": (0, 0, 0), "std": (1, 1, 1)})
    sets = [EvalSet("clean", "clean", 0, ArrayDataset(images, labels))]
    (row,) = run(models=model, sets=sets, suite_presets={}, batch_size=4)["planted_label_reader"]["rows"]
    assert np.array_equal(unpack_hits(row["hits"], row["total"]), right)  # across 8 batches, in order
    assert row["correct"] == right.sum() and len(row["hits"]) == 8  # 29 bits in 4 bytes, base64
    with pytest.raises(ValueError, match="cannot hold exactly"):
        unpack_hits(row["hits"], 40)
    assert unpack_hits(pack_hits([]), 0).size == 0
    counts = rng.randint(0, 96, 50)
    assert np.array_equal(unpack_counts(pack_counts(counts)), counts)
    with pytest.raises(ValueError, match="0, 255"):
        pack_counts([256])


def test_a_plot_of_clean_and_noisy_sets_only_is_named_for_them_and_labels_its_bars(tmp_path, monkeypatch):
    """The plot was corruptions.png, without values or sample counts, even when it showed only clean / UN / NUN."""
    import matplotlib.axes

    from timm_fcl.robustness.reports import write_reports

    rows = [{"model": "m", "suite": s, "corruption": s, "severity": 0, "accuracy": a, "top5": 100.0, "correct": 0,
             "correct_top5": 0, "total": 500} for s, a in (("clean", 90.25), ("un", 40.5))]
    labels, titles = [], []
    real_bar_label, real_title = matplotlib.axes.Axes.bar_label, matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "bar_label", lambda ax, bars, **kw: labels.append(
        [b.get_height() for b in bars]) or real_bar_label(ax, bars, **kw))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **kw: titles.append(text)
                        or real_title(ax, text, *a, **kw))
    paths = write_reports({"m": {"rows": rows, "summaries": {}}}, tmp_path)
    assert [p.name for p in paths] == ["results.json", "results.csv", "clean_and_noisy.png"]
    assert paths[2].stat().st_size > 5_000 and not (tmp_path / "corruptions.png").exists()
    assert labels == [[90.25, 40.5]] and titles == ["clean and noisy test sets (500 images each)"]


def test_undecodable_images_are_left_out_and_counted_never_replaced(tmp_path, capsys):
    """67 of 200 truncated test PNGs were replaced by their neighbours (timm's dataset) while the log said 200
    samples: now they are left out, counted in the row (and the log), and the accuracy is over the readable ones."""
    for label in range(2):
        folder = tmp_path / "clean" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(5):
            image = np.full((32, 32, 3), 128, np.uint8)
            image[0, 0, 0] = plant(label)
            Image.fromarray(image).save(folder / f"{i}.png")
    for victim in ("class0/1.png", "class1/3.png", "class1/4.png"):
        path = tmp_path / "clean" / victim
        path.write_bytes(path.read_bytes()[:40])  # truncated inside the image data
    argv = [*PLANTED, "--suites", "clean", "--data-dir", str(tmp_path / "clean"), "--split", "", "--img-size", "32",
            "--output", str(tmp_path / "out")]
    capsys.readouterr()
    row = main(get_args_parser().parse_args(argv))["planted_label_reader"]["rows"][0]
    assert (row["total"], row["correct"], row["unreadable"]) == (7, 7, 3)
    err = capsys.readouterr().err
    assert "3 image(s) cannot be decoded and are left out, e.g." in err and "class0/1.png" in err


def test_an_image_folder_is_labelled_by_the_exports_label_names(tmp_path):
    """timm_fcl.eval numbered an image folder's classes by their sorted names, ignoring the label_names an export
    stores: with label_names c, a, b the images of a were scored as class 0, c's class."""
    from timm_fcl.robustness.evaluation import CleanSource

    for name in ("a", "b", "c"):
        (tmp_path / "clean" / name).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / "clean" / name / "0.png")
    clean = CleanSource(data_dir=str(tmp_path / "clean"), dataset="", split="")
    sets, _ = build_sets(suites=["clean"], data_config={"input_size": (3, 32, 32), "crop_pct": 1.0}, clean=clean,
                         label_names=["c", "a", "b"])
    by_class = {Path(p).parent.name: int(label) for p, label in zip(sorted(
        str(p) for p in (tmp_path / "clean").rglob("*.png")), sets[0].data.labels)}
    assert by_class == {"a": 1, "b": 2, "c": 0}
    unnamed, _ = build_sets(suites=["clean"], data_config={"input_size": (3, 32, 32), "crop_pct": 1.0}, clean=clean)
    assert list(unnamed[0].data.labels) == [0, 1, 2]  # sorted folder names without label_names
