"""Readers of the official CIFAR-C / ImageNet-C layouts, the evaluation command, Table 3 summaries and mCE."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models import register_model

from timm_fcl.model_io import ModelError
from timm_fcl.robustness.cli import get_args_parser, main
from timm_fcl.robustness.corruptions import BENCHMARK_CORRUPTIONS
from timm_fcl.robustness.datasets import cifar_c_sets, generated_suite_dir, imagenet_c_sets
from timm_fcl.robustness.evaluation import build_sets, evaluate_accuracy, load_models, model_label, run
from timm_fcl.robustness.metrics import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, summarize_corruptions

NUM_CLASSES = 10


def plant(label: int) -> int:
    """Grey level that encodes a label; wide steps survive JPEG."""
    return 20 * label + 10


class PlantedLabelReader(torch.nn.Module):
    """Predicts the label encoded in the top-left pixel of channel 0 (inputs in [0, 1], i.e. mean 0 and std 1)."""

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        label = ((x[:, 0, 0, 0] * 255 - 10) / 20).round().long().clamp(0, self.num_classes - 1)
        return torch.nn.functional.one_hot(label, self.num_classes).float()


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


def make_imagenet_c(root: Path, corruptions=("snow", "contrast"), per_class: int = 5) -> list:
    """Three classes whose wnids sort differently from their creation order; returns the sorted wnids."""
    wnids = ["n0300", "n0100", "n0200"]
    index = {w: i for i, w in enumerate(sorted(wnids))}
    for ci, name in enumerate(corruptions):
        for severity in range(1, 6):
            for w in wnids:
                folder = root / name / str(severity) / w
                folder.mkdir(parents=True)
                for i in range(per_class):
                    good = i < correct_count(ci, severity, per_class)
                    value = plant(index[w] if good else 9)  # 9: a class no image has
                    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(folder / f"{w}_{i}.JPEG", quality=85)
    return sorted(wnids)


def accuracy(dataset) -> float:
    correct, total = evaluate_accuracy(PlantedLabelReader(), dataset, mean=(0, 0, 0), std=(1, 1, 1), batch_size=7)
    return correct / total


def test_cifar_c_reader_labels_and_severity_order(tmp_path):
    make_cifar_c(tmp_path)
    sets = cifar_c_sets(tmp_path)
    assert [(c, s) for c, s, _ in sets] == [(c, s) for c in ("gaussian_noise", "fog") for s in range(1, 6)]
    for corruption, severity, data in sets:
        expected = correct_count(("gaussian_noise", "fog").index(corruption), severity, 20) / 20
        assert accuracy(data) == expected, (corruption, severity)


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
        "--model", "planted_label_reader", "--suites", "cifar-c", "imagenet-c", "--cifar-c-dir",
        str(tmp_path / "cifar"), "--imagenet-c-dir", str(tmp_path / "inc"), "--mean", "0", "0", "0",
        "--std", "1", "1", "1", "--output", str(tmp_path / "out")])
    results = main(args)
    rows = results["planted_label_reader"]["rows"]
    assert len(rows) == 20
    for row in rows:
        if row["suite"] == "cifar-c":
            expected = correct_count(("gaussian_noise", "fog").index(row["corruption"]), row["severity"], 20) / 20
        else:
            expected = correct_count(("snow", "contrast").index(row["corruption"]), row["severity"], 5) / 5
        assert row["accuracy"] == expected, row
    summary = results["planted_label_reader"]["summaries"]["cifar-c"]
    assert summary["per_corruption"] == {"gaussian_noise": 0.6, "fog": 0.6}  # (0.2 + ... + 1.0) / 5 either way
    assert json.loads((tmp_path / "out" / "results.json").read_text())["planted_label_reader"]["rows"] == rows
    with open(tmp_path / "out" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 20
    assert (tmp_path / "out" / "corruptions.png").stat().st_size > 10_000


def test_eval_command_clear_errors(tmp_path):
    parse = get_args_parser().parse_args
    with pytest.raises(ModelError, match="checkpoint"):
        main(parse(["--model", "resnet18", "--checkpoint", str(tmp_path / "missing.safetensors")]))
    with pytest.raises(ModelError, match="model.safetensors"):
        main(parse(["--model", str(tmp_path)]))
    with pytest.raises(ModelError, match="neither a timm model"):
        main(parse(["--model", "no_such_model_xyz"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(parse(["--model", "planted_label_reader", "--suites", "clean", "--data-dir", str(tmp_path / "nope")]))
    with pytest.raises(ValueError, match="--cifar-c-dir"):
        main(parse(["--model", "planted_label_reader", "--suites", "cifar-c"]))


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
            image[0, 0, 0] = plant(label if i < 3 else 9)  # 3 of 4 images per class readable: clean accuracy 0.75
            image[8:24, 8:24] = np.random.RandomState(i).randint(0, 256, (16, 16, 3))
            Image.fromarray(image).save(folder / f"{i}.png")
    suites = ["clean", "generated", "un", "nun"]
    argv = ["--model", "planted_label_reader", "--suites", *suites, "--data-dir", str(tmp_path / "clean"),
            "--split", "", "--train-split", "", "--corruptions", "contrast", "jpeg_compression", "--mean", "0", "0",
            "0", "--std", "1", "1", "1", "--img-size", "32", "--cache-dir", str(tmp_path / "cache"),
            "--output", str(tmp_path / "out")]
    rows = main(get_args_parser().parse_args(argv))["planted_label_reader"]["rows"]
    by_suite = {}
    for row in rows:
        by_suite.setdefault(row["suite"], []).append(row)
    assert [r["accuracy"] for r in by_suite["clean"]] == [0.75]
    assert [(r["corruption"], r["severity"]) for r in by_suite["generated"]] == [
        (c, s) for c in ("contrast", "jpeg_compression") for s in range(1, 6)]
    assert all(r["total"] == 12 for r in rows)
    # 15% of the pixels replaced: the planted pixel survives in about 85% of the images
    assert 0.3 <= by_suite["un"][0]["accuracy"] <= 0.75 and 0.0 <= by_suite["nun"][0]["accuracy"] <= 0.75
    again = main(get_args_parser().parse_args(argv))["planted_label_reader"]["rows"]
    assert again == rows  # cached corruptions and seeded noise: identical rerun


def test_eval_command_compares_two_models_and_earlier_results(tmp_path):
    make_cifar_c(tmp_path / "cifar", n=10)
    common = ["--suites", "cifar-c", "--cifar-c-dir", str(tmp_path / "cifar"), "--mean", "0", "0", "0",
              "--std", "1", "1", "1", "--batch-size", "5"]
    first = main(get_args_parser().parse_args(
        ["--model", "planted_label_reader", *common, "--output", str(tmp_path / "one")]))
    both = main(get_args_parser().parse_args(
        ["--model", "resnet18", "--checkpoint", "none", "--num-classes", str(NUM_CLASSES), *common,
         "--compare", str(tmp_path / "one" / "results.json"), "--output", str(tmp_path / "two")]))
    assert list(both) == ["resnet18", "planted_label_reader"]
    assert both["planted_label_reader"] == json.loads(json.dumps(first["planted_label_reader"]))
    with open(tmp_path / "two" / "results.csv") as f:
        assert {row["model"] for row in csv.DictReader(f)} == {"resnet18", "planted_label_reader"}


def test_evaluation_as_a_library_with_keyword_arguments(tmp_path):
    make_cifar_c(tmp_path, corruptions=("fog",), n=10)
    models = load_models(["planted_label_reader"], data_overrides={"mean": (0, 0, 0), "std": (1, 1, 1)})
    sets, presets = build_sets(suites=["cifar-c"], data_config=models[0].data_config, cifar_c_dir=str(tmp_path))
    results = run(models=models, sets=sets, suite_presets=presets, batch_size=4)
    assert [r["accuracy"] for r in results["planted_label_reader"]["rows"]] == [0.2, 0.4, 0.6, 0.8, 1.0]
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
