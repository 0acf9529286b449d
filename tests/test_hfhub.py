"""Publishing with --dry-run and loading with plain timm (local-dir: and an offline hf-hub: cache)."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hfhub.model_card import CITATION, build_model_card
from hfhub.publish import PublishError, cli, find_export, main as publish_main, get_args_parser
from timm_fcl import FCLConfig
from timm_fcl.robustness.corruptions import CORRUPTION_GROUPS
from train_helpers import ROOT, make_shards, run, train_cmd

LOGITS = r"""
import json, sys
import timm, torch
model = timm.create_model(sys.argv[1], pretrained=True).eval()
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    logits = model(x)
print(json.dumps({"logits": logits.tolist(), "timm_fcl": any(m.startswith("timm_fcl") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short CPU FCL run of resnet18 on toy shards, with an evaluation JSON beside it."""
    root = tmp_path_factory.mktemp("hub")
    shards = make_shards(root / "shards")
    out = root / "run"
    proc = run(train_cmd("--model", "resnet18", "--dataset", "wds/toy", "--data-dir", str(shards), "--img-size", "16",
                         "--crop-pct", "1", "-b", "16", "--epochs", "1", "--sched", "step", "--warmup-epochs", "0",
                         "--lr", "0.05", "--method", "fcl", "--fcl-k", "64", "--fcl-start-epochs", "0.5",
                         "--no-progress", "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text(json.dumps({"run": {"spec": str(out), "unit": "percent", "rows": [
        {"suite": "clean", "corruption": "", "severity": 0, "accuracy": 91.0},
        {"suite": "un", "corruption": "", "severity": 0, "accuracy": 42.0}],
        "summaries": {"generated": {"mean_19": 61.0, "mean_15": 60.0, "groups": {"noise": 30.0, "blur": 70.0}}}}}))
    return out


def plain_timm_logits(name: str, x_path: Path, env_extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no timm_fcl on the path
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", LOGITS, name, str(x_path)], capture_output=True, text=True,
                          env=env, cwd=x_path.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def published(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dry") / "card"
    publish_main(get_args_parser().parse_args([str(trained), "--repo-id", "fcl-org/resnet18-toy", "--dry-run",
                                               str(folder)]))
    return folder


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """Logits of the trained model, loaded through the exporter's own files, on a fixed batch."""
    import timm
    from safetensors.torch import load_file
    cfg = json.loads((trained / "model" / "config.json").read_text())
    model = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"]).eval()
    model.load_state_dict(load_file(trained / "model" / "model.safetensors"))
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("x") / "x.pt"
    torch.save(x, path)  # a test input, not a checkpoint
    with torch.no_grad():
        return path, model(x)


def test_dry_run_folder_loads_with_plain_timm_local_dir(published, reference):
    assert sorted(p.name for p in published.iterdir()) == ["README.md", "config.json", "eval_results.json",
                                                          "model.safetensors"]
    x_path, want = reference
    got = plain_timm_logits(f"local-dir:{published}", x_path)
    assert not got["timm_fcl"]
    assert torch.equal(torch.tensor(got["logits"]), want)


def test_offline_hf_hub_cache_loads_with_plain_timm(published, reference, tmp_path):
    cache = tmp_path / "hub"
    snap = cache / "models--fcl-org--resnet18-toy" / "snapshots" / ("0" * 40)
    shutil.copytree(published, snap)
    (cache / "models--fcl-org--resnet18-toy" / "refs").mkdir()
    (cache / "models--fcl-org--resnet18-toy" / "refs" / "main").write_text("0" * 40)
    x_path, want = reference
    got = plain_timm_logits("hf-hub:fcl-org/resnet18-toy", x_path,
                            {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")})
    assert torch.equal(torch.tensor(got["logits"]), want)


def test_model_card_header_parses_and_carries_the_numbers(published):
    text = (published / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["library_name"] == "timm" and "timm-fcl" in header["tags"]
    assert "| test set | metric | value (%) |" in text
    assert "| clean | top-1 accuracy | 91.00 |" in text and "| un | top-1 accuracy | 42.00 |" in text
    assert "mean accuracy, 19 corruptions | 61.00" in text
    for param in ("| method | fcl |", "| k | 64 |", "| tau |", "| sigma |", "| weight |"):
        assert param in text, param
    assert 'timm.create_model("hf-hub:fcl-org/resnet18-toy", pretrained=True)' in text
    assert "Plain timm loads it (no timm-fcl import)" in text and "import timm_fcl" not in text  # timm has resnet18


def test_no_pickle_is_written_and_pickle_only_folders_are_refused(trained, published, tmp_path):
    pickled = [p for p in list(published.rglob("*")) + list((trained / "model").rglob("*"))
               if p.suffix in (".pth", ".pt", ".bin", ".pkl", ".ckpt")]
    assert not pickled
    only_pth = tmp_path / "old"
    only_pth.mkdir()
    (only_pth / "checkpoint.pth").write_bytes(b"not really a pickle")
    with pytest.raises(PublishError, match="only pickled weights"):
        find_export(only_pth)
    proc = subprocess.run([sys.executable, "-m", "hfhub.publish", str(only_pth), "--repo-id", "a/b", "--dry-run",
                           str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("hfhub.publish: error:") and len(proc.stderr.strip().splitlines()) == 1


def card_table(text: str, section: str) -> dict:
    """{first cell: second cell} of the markdown table under ``## section``."""
    body = text.split(f"## {section}\n")[1].split("\n## ")[0]
    cells = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("| ")]
    return {c[0].strip(): c[1].strip() for c in cells[2:]}  # past the header and the --- row


def test_card_takes_fcl_settings_from_resolved_yaml():
    fcl = {f.name: f.default for f in dataclasses.fields(FCLConfig)}
    fcl.update(method="fcl", k=64, start_step=500, ramp_steps=250, input_std=[0.25, 0.25, 0.25])
    resolved = {"fcl": fcl, "fcl_schedule_epochs": {"start": 2, "ramp": 1}, "lr": 0.4, "global_batch": 1024,
                "world_size": 8}
    args = {"method": "fcl", "fcl_k": 8, "lr": None, "patch_gaussian": False, "patch_gaussian_size": 25}
    text = build_model_card("org/name", {"architecture": "resnet18"}, train_args=args, resolved=resolved)
    params = card_table(text, "FCL hyper-parameters")
    # every FCLConfig field, from the resolved file rather than the flags, and the schedule in epochs too
    assert set(params) == set(fcl) | {"start_epochs", "ramp_epochs"}
    assert params["k"] == "64" and params["start_step"] == "500" and params["ramp_steps"] == "250"
    assert params["start_epochs"] == "2" and params["ramp_epochs"] == "1"
    recipe = card_table(text, "Training recipe")
    assert recipe["lr"] == "0.4" and recipe["global_batch"] == "1024"
    assert not any(k.startswith("patch_gaussian") for k in recipe)  # off: no Patch Gaussian settings


def test_card_of_an_older_run_reads_the_fcl_flags_and_shows_patch_gaussian_when_on():
    args = {"method": "xe_gauss", "fcl_sigma": 0.3, "fcl_start_epochs": None, "patch_gaussian": True,
            "patch_gaussian_size": 16, "patch_gaussian_sigma": 0.2}
    text = build_model_card("org/name", {"architecture": "resnet18"}, train_args=args)
    assert card_table(text, "FCL hyper-parameters") == {"method": "xe_gauss", "sigma": "0.3"}
    recipe = card_table(text, "Training recipe")
    assert recipe["patch_gaussian_size"] == "16" and recipe["patch_gaussian_sigma"] == "0.2"


def test_card_recipe_shows_zero_settings_and_the_train_subset():
    args = {"model": "resnet18", "method": "xe", "smoothing": 0.0, "weight_decay": 0, "mixup": 0.0, "train_subset": 100,
            "val_holdout": 0, "sched": "cosine", "decay_milestones": [90, 180], "decay_rate": 0.1,
            "model_ema": False, "model_ema_decay": 0.9998, "clip_grad": None, "aa": None}
    recipe = card_table(build_model_card("org/name", {"architecture": "resnet18"}, train_args=args), "Training recipe")
    assert recipe["smoothing"] == "0.0" and recipe["weight_decay"] == "0" and recipe["mixup"] == "0.0"
    assert recipe["train_subset"] == "100"
    # unset, off, or read by another schedule only: no row
    assert not {"val_holdout", "decay_milestones", "decay_rate", "model_ema", "model_ema_decay", "clip_grad",
                "aa"} & set(recipe)
    step = card_table(build_model_card("o/n", {}, train_args={**args, "sched": "step", "train_subset": None,
                                                              "decay_epochs": 30}), "Training recipe")
    assert step["decay_epochs"] == "30" and step["decay_rate"] == "0.1" and "train_subset" not in step


def test_published_card_parses_with_huggingface_hub_and_equals_the_run(trained, published):
    from huggingface_hub import ModelCard

    card = ModelCard.load(published / "README.md")
    results = json.loads((trained / "eval" / "results.json").read_text())["run"]
    want = {(r["suite"], "top-1 accuracy", r["accuracy"]) for r in results["rows"]}
    summary = results["summaries"]["generated"]
    want |= {("generated", "mean accuracy, 19 corruptions", summary["mean_19"]),
             ("generated", "mean accuracy, 15 corruptions", summary["mean_15"])}
    want |= {("generated", f"{g} group mean ({', '.join(CORRUPTION_GROUPS[g])})", v)
             for g, v in summary["groups"].items()}
    got = {(r.dataset_config, r.metric_name, r.metric_value) for r in card.data.eval_results}
    assert got == want and {r.dataset_type for r in card.data.eval_results} == {"toy"}
    resolved = yaml.safe_load((trained / "resolved.yaml").read_text())
    assert resolved["fcl"]["start_step"] > 0  # --fcl-start-epochs 0.5 became steps
    want_fcl = {"method": "fcl", **resolved["fcl"], "start_epochs": resolved["fcl_schedule_epochs"]["start"],
                "ramp_epochs": resolved["fcl_schedule_epochs"]["ramp"]}
    assert card_table(card.content, "FCL hyper-parameters") == {k: str(v) for k, v in want_fcl.items()}
    assert card.data.base_model is None and "Trained from scratch." in card.content
    assert "@misc{" in card.content and "Feature Contrastive Learning" in card.content.split("## Citation")[1]


def test_published_results_carry_no_local_path():
    """The published eval_results.json carried the absolute path of the user's --checkpoint."""
    from hfhub.publish import without_local_paths

    results = {"resnet18:model": {"spec": "resnet18", "weights": "checkpoint /home/me/runs/a/model/model.safetensors"},
               "run": {"spec": "local-dir:/home/me/runs/a/model", "weights": "own (hub / export folder)"}}
    public = without_local_paths(results)
    assert public["resnet18:model"]["weights"] == "checkpoint model.safetensors"
    assert public["run"] == {"spec": "a", "weights": "own (hub / export folder)"}
    assert "/home/me" not in json.dumps(public)


def test_published_files_name_this_run_not_imagenet_nor_local_paths(trained, published):
    config = json.loads((published / "config.json").read_text())
    pcfg = config["pretrained_cfg"]
    assert pcfg["tag"] == "fcl_toy"
    assert not {"hf_hub_id", "url", "file", "paper_ids", "origin_url", "license"} & set(pcfg)
    assert pcfg["input_size"] == [3, 16, 16] and pcfg["crop_pct"] == 1 and pcfg["classifier"] == "fc"
    assert config["num_classes"] == 10 == pcfg["num_classes"]
    assert json.loads((published / "eval_results.json").read_text())["run"]["spec"] == "run"
    for path in published.iterdir():
        if path.suffix in (".json", ".md"):
            assert str(trained.parent) not in path.read_text(), path.name


def evaluated(images: int, corruptions, severities, preset: str = "cifar") -> dict:
    """timm_fcl.eval's results of one model: clean, UN and NUN on ``images`` images, and the generated suite's
    ``corruptions`` x ``severities`` on ``images`` images each, summarized as the evaluation does."""
    from timm_fcl.robustness.metrics import summarize_corruptions

    def row(suite, corruption, severity, accuracy):
        return {"suite": suite, "corruption": corruption, "severity": severity, "accuracy": accuracy,
                "correct": round(accuracy * images / 100), "total": images}

    rows = [row("clean", "clean", 0, 90.0), row("un", "uniform_noise", 0, 50.0), row("nun", "nonuniform_noise", 0, 49.0)]
    accuracy = {(c, s): 60.0 + i + s for i, c in enumerate(corruptions) for s in severities}
    rows += [row("generated", c, s, a) for (c, s), a in accuracy.items()]
    summary = summarize_corruptions(accuracy)
    return {"run": {"unit": "percent", "rows": rows, "summaries": {"generated": dict(summary, preset=preset)}}}


def test_card_names_the_images_and_corruptions_behind_each_value_as_the_results_give_them():
    from huggingface_hub import ModelCard

    from timm_fcl.robustness.corruptions import BENCHMARK_CORRUPTIONS, CORRUPTIONS

    def card(results):
        text = build_model_card("o/n", {"architecture": "resnet18"}, train_args={"dataset": "wds/cifar10"},
                                eval_results=results)
        index = {(r.dataset_config, r.metric_name): r for r in ModelCard(text).data.eval_results}
        table = {(c[0].strip(), c[1].strip()): c[3].strip() for c in
                 (line.strip("|").split("|") for line in text.split("## Evaluation\n")[1].splitlines()
                  if line.startswith("| ") and "---" not in line)}
        return text, index, table

    text, index, table = card(evaluated(10000 // 5, CORRUPTIONS, range(1, 6)))
    assert index[("un", "top-1 accuracy")].dataset_name == "cifar10 (un): uniform_noise on 2,000 images"
    assert index[("clean", "top-1 accuracy")].dataset_name == "cifar10 (clean): 2,000 images"
    generated = index[("generated", "mean accuracy, 19 corruptions")].dataset_name
    assert generated.startswith("cifar10 (generated): 19 corruptions x 5 severities (1-5), 2,000 images each, "
                                "generated from the clean images with the official generators' cifar parameters: "
                                "gaussian_noise, shot_noise, ")
    assert all(name in generated for name in CORRUPTIONS)
    mean_15 = "mean accuracy, 15 corruptions (without speckle_noise, gaussian_blur, spatter, saturate)"
    assert ("generated", mean_15) in index
    assert ("generated", "noise group mean (gaussian_noise, shot_noise, impulse_noise)") in index
    assert table[("un", "top-1 accuracy")] == "uniform_noise on 2,000 images"
    assert table[("generated", mean_15)] == "15 corruptions x 5 severities (1-5), 2,000 images each"
    assert table[("generated", "noise group mean (gaussian_noise, shot_noise, impulse_noise)")] == \
        "3 corruptions x 5 severities (1-5), 2,000 images each"

    # other data, another card: 500 images, the 15 benchmark corruptions at severities 1-3 only
    text, index, table = card(evaluated(500, BENCHMARK_CORRUPTIONS, range(1, 4), preset="imagenet"))
    assert index[("nun", "top-1 accuracy")].dataset_name == "cifar10 (nun): nonuniform_noise on 500 images"
    assert ("generated", "mean accuracy, 19 corruptions") not in index
    generated = index[("generated", "mean accuracy, 15 corruptions")].dataset_name
    assert generated.startswith("cifar10 (generated): 15 corruptions x 3 severities (1-3), 500 images each, "
                                "generated from the clean images with the official generators' imagenet "
                                "parameters: ")
    assert "speckle_noise" not in text and "2,000" not in text
    assert table[("generated", "mean accuracy, 15 corruptions")] == "15 corruptions x 3 severities (1-3), 500 images each"


def test_every_fcl_setting_a_card_lists_is_documented():
    """The card lists every FCLConfig field; the README's hyper-parameter table explains each one."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| `FCLConfig` field |")[1].split("\n\n")[0]
    documented = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    assert {f.name for f in dataclasses.fields(FCLConfig)} <= documented


def test_card_cites_the_paper_as_its_text_gives_it():
    text = build_model_card("o/n", {"architecture": "resnet18"})
    citation = text.split("## Citation")[1]
    paper = (ROOT.parent / "shared" / "paper" / "feature-contrastive-learning.txt")
    title = "Balancing Robustness and Sensitivity using Feature Contrastive Learning"
    if paper.is_file():  # the paper's first lines: its title, "Anonymous authors", its venue
        head = paper.read_text().splitlines()[:6]
        assert head[0].lower() == title.lower() and "Anonymous authors" in head and "Paper under double-blind review" in head
    assert f"title = {{{title}}}" in citation and "Paper under double-blind review" in citation
    assert "author" not in citation.split("note")[0]  # no invented author, not even "Anonymous"
    assert CITATION in citation and CITATION in (ROOT / "README.md").read_text()  # the README cites it alike


def test_base_model_of_fine_tunes():
    from hfhub.model_card import base_model

    assert base_model({"model": "hf-hub:org/base", "pretrained": True})[0] == "org/base"
    assert base_model({"model": "resnet18", "pretrained": True})[0] == "timm/resnet18.a1_in1k"
    for flag in ("pretrained_path", "initial_checkpoint"):
        hub_id, sentence = base_model({"model": "resnet18", "pretrained": True, flag: "/secret/dir/w.safetensors"})
        assert hub_id is None and "`w.safetensors`" in sentence and "/secret" not in sentence
    text = build_model_card("o/n", {"architecture": "resnet18"}, train_args={"model": "hf-hub:org/base"})
    assert yaml.safe_load(text.split("---\n")[1])["base_model"] == "org/base"


def test_a_fine_tune_of_a_zoo_entry_names_the_entrys_hub_repository(tmp_path):
    """The zoo's continuations start from the zoo's pre-training by --initial-checkpoint, a local file: the card names
    that entry's Hub repository as base_model when the file is the entry's weights (by its folder's tag, and by its
    bytes where the file is still there), and never for other bytes or another folder."""
    import timm

    import timm_fcl  # noqa: F401  (registers the zoo's tags)
    from hfhub.model_card import base_model

    tag = "resnet20_cifar.xe_pretrain_cifar10"
    hub_id = timm.models.get_pretrained_cfg(tag).hf_hub_id
    moved = {"model": "resnet20_cifar", "initial_checkpoint": f"/elsewhere/zoo/{tag}/model.safetensors"}
    assert base_model(moved)[0] == hub_id and f"the zoo's `{tag}`" in base_model(moved)[1]
    copy = tmp_path / tag / "model.safetensors"
    copy.parent.mkdir()
    shutil.copy(ROOT / "zoo" / tag / "model.safetensors", copy)
    assert base_model({"initial_checkpoint": str(copy)})[0] == hub_id  # the same bytes
    copy.write_bytes(copy.read_bytes()[:-4] + b"\0\0\0\0")
    hub, sentence = base_model({"initial_checkpoint": str(copy)})
    assert hub is None and "local weights file `model.safetensors`" in sentence  # other bytes: not the entry
    assert base_model({"initial_checkpoint": "/x/resnet20_cifar.no_such_tag/model.safetensors"})[0] is None
    assert base_model({"initial_checkpoint": f"/x/{tag}/other.safetensors"})[0] is None


def one_line_refusal(argv, capsys) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hfhub.publish: error:") and len(err.splitlines()) == 1, err
    return err


def export_copy(trained: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(trained / "model" / name, folder / name)
    return folder


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_symlink_out_of_the_export_is_refused(trained, tmp_path, capsys, name):
    export = export_copy(trained, tmp_path / "export")
    (export / name).unlink()
    (export / name).symlink_to(trained / "model" / name)  # a valid file, but outside what is published
    err = one_line_refusal([str(export), "--repo-id", "a/b", "--dry-run", str(tmp_path / "out")], capsys)
    assert "outside" in err and not (tmp_path / "out").exists()


def test_a_symlinked_eval_json_out_of_the_run_is_refused(trained, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    export_copy(trained, run_dir / "model")
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").symlink_to(trained / "eval" / "results.json")
    err = one_line_refusal([str(run_dir), "--repo-id", "a/b", "--dry-run", str(tmp_path / "out")], capsys)
    assert "results.json" in err and "outside" in err


@pytest.mark.parametrize("content", ['{"m": {"rows": [{"suite": "clean", "severity": 0, "accuracy": 7}]}}',
                                     '{"m": {"unit": "percent", "rows": [{"suite": "clean", "severity": 0, '
                                     '"accuracy": 107}]}}',
                                     '{"m": {"unit": "permille", "rows": []}}', '[1, 2]', '{"m": {"rows": 3}}',
                                     '{not json'])
def test_a_malformed_eval_json_is_one_line(trained, tmp_path, capsys, content):
    bad = tmp_path / "results.json"
    bad.write_text(content)
    err = one_line_refusal([str(trained), "--repo-id", "a/b", "--eval", str(bad), "--dry-run", str(tmp_path / "o")],
                           capsys)
    assert "is not a results.json of timm_fcl.eval" in err


def test_an_older_eval_json_in_fractions_is_refused_in_one_line(trained, tmp_path, capsys):
    """An entry without "unit": "percent" (as timm_fcl.eval wrote it before accuracies were in percent) is refused,
    not converted: nothing is staged."""
    older = tmp_path / "results.json"
    older.write_text(json.dumps({"run": {"spec": "run", "rows": [
        {"suite": "clean", "corruption": "", "severity": 0, "accuracy": 0.8918, "top5": 0.9947}],
        "summaries": {"generated": {"mean_19": 0.6804321, "preset": "cifar"}}}}))
    err = one_line_refusal([str(trained), "--repo-id", "a/b", "--eval", str(older), "--dry-run", str(tmp_path / "out")],
                           capsys)
    assert "is not a results.json of timm_fcl.eval" in err and "accuracies in None, not 'percent'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["args.yaml", "resolved.yaml"])
@pytest.mark.parametrize("content, expected", [("- a list\n- of flags\n", "is not a mapping of settings: it holds a list"),
                                               ("just words\n", "is not a mapping of settings: it holds a str"),
                                               ("epochs: [1\n", "is not YAML")])
def test_a_run_yaml_that_is_not_a_mapping_is_one_line(trained, tmp_path, capsys, name, content, expected):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    (run_dir / name).write_text(content)
    err = one_line_refusal([str(run_dir), "--repo-id", "a/b", "--dry-run", str(tmp_path / "out")], capsys)
    assert f"{run_dir / name} {expected}" in err and not (tmp_path / "out").exists()


def test_a_non_empty_dry_run_folder_needs_overwrite_and_then_only_an_earlier_dry_runs(trained, tmp_path, capsys):
    """`--dry-run RUN/checkpoints --overwrite` deleted every training state of the run: --overwrite now replaces only
    a folder an earlier dry run wrote, and refuses, in one line and touching nothing, one holding anything else."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("kept")
    argv = [str(trained), "--repo-id", "a/b", "--dry-run", str(out)]
    assert "not empty" in one_line_refusal(argv, capsys)
    assert "holds files a dry run does not write (old.txt)" in one_line_refusal(argv + ["--overwrite"], capsys)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    (out / "old.txt").unlink()
    assert cli(argv) == 0
    staged = ["README.md", "config.json", "eval_results.json", "model.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == staged
    (out / "README.md").write_text("edited")
    assert cli(argv + ["--overwrite"]) == 0  # an earlier dry run's folder is replaced whole
    assert sorted(p.name for p in out.iterdir()) == staged and (out / "README.md").read_text() != "edited"

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    states = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    err = one_line_refusal([str(run_dir), "--repo-id", "a/b", "--dry-run", str(run_dir / "checkpoints"),
                            "--overwrite"], capsys)
    assert "holds files a dry run does not write" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == states and states


def test_a_pickle_named_model_safetensors_is_one_line(trained, tmp_path):
    export = export_copy(trained, tmp_path / "export")
    torch.save({"w": torch.zeros(2)}, export / "model.safetensors")  # a pickle (zip) under the safetensors name
    proc = subprocess.run([sys.executable, "-m", "hfhub.publish", str(export), "--repo-id", "a/b", "--dry-run",
                           str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "is not a safetensors file" in err and not (tmp_path / "x").exists()


def test_console_script_runs_publish(trained, tmp_path, capsys):
    from hfhub.cli import main as console_main

    assert console_main([str(trained), "--repo-id", "a/b", "--dry-run", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "README.md").is_file()
    assert console_main([str(tmp_path / "missing"), "--repo-id", "a/b"]) == 2
    assert capsys.readouterr().err.strip().endswith("is not a folder")


@pytest.mark.slow
def test_pip_install_gives_timm_fcl_publish_outside_the_checkout(tmp_path):
    """`pip install --no-deps .` into a fresh venv (no torch: --help must not need it), run from elsewhere."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    venv_python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv_python), "install", "-q", "--no-deps", str(src)],
                   check=True, timeout=600)
    shutil.rmtree(src)
    proc = subprocess.run([str(tmp_path / "venv" / "bin" / "timm-fcl-publish"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: timm-fcl-publish") and "--dry-run FOLDER" in proc.stdout


def test_an_older_export_is_published_without_imagenet_provenance(trained, tmp_path):
    export = export_copy(trained, tmp_path / "export")
    config = json.loads((export / "config.json").read_text())
    config["pretrained_cfg"].update(tag="a1_in1k", paper_ids="arXiv:2110.00476", license="apache-2.0",
                                    origin_url="https://github.com/huggingface/pytorch-image-models")
    (export / "config.json").write_text(json.dumps(config))
    publish_main(get_args_parser().parse_args([str(export), "--repo-id", "a/b", "--no-eval", "--dry-run",
                                               str(tmp_path / "out")]))
    pcfg = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    assert pcfg["tag"] == "timm_fcl" and not {"paper_ids", "license", "origin_url"} & set(pcfg)
    assert pcfg["input_size"] == config["pretrained_cfg"]["input_size"]


# ------------------------------------------------------------------------ the numbers of the weights that are published
def _evaluate(model: Path, data: Path, out: Path) -> dict:
    from timm_fcl.robustness.cli import main as eval_main, get_args_parser as eval_parser

    return eval_main(eval_parser().parse_args(["--model", str(model), "--suites", "clean", "--data-dir", str(data),
                                               "--dataset", "wds/toy", "--split", "validation", "--workers", "0",
                                               "--output", str(out)]))


def test_an_export_is_published_with_its_own_numbers_never_another_exports(trained, tmp_path, capsys):
    import timm
    from safetensors.torch import load_file
    from timm_fcl.run.export import export_model

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    shutil.rmtree(run_dir / "eval")
    # a best epoch whose weights differ from the last epoch's (here: the last epoch's, shifted)
    cfg = json.loads((run_dir / "model" / "config.json").read_text())
    model = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"])
    model.load_state_dict({k: v + 0.05 if v.is_floating_point() else v
                           for k, v in load_file(run_dir / "model" / "model.safetensors").items()})
    export_model(model, run_dir / "model_best", data_config=timm.data.resolve_model_data_config(model))
    data = trained.parent / "shards"
    last = _evaluate(run_dir, data, run_dir / "eval")  # the run's evaluation measures model/
    capsys.readouterr()
    argv = [str(run_dir / "model_best"), "--repo-id", "a/b", "--dry-run", str(tmp_path / "out")]
    err = one_line_refusal(argv, capsys)
    assert f"{run_dir / 'eval' / 'results.json'} was measured on other weights than " \
           f"{run_dir / 'model_best' / 'model.safetensors'}" in err, err
    assert not (tmp_path / "out").exists()

    best = _evaluate(run_dir / "model_best", data, run_dir / "model_best" / "eval")
    capsys.readouterr()
    (label_best, result_best), = best.items()
    (_, result_last), = last.items()
    assert result_best["weights_sha256"] != result_last["weights_sha256"]
    assert cli(argv) == 0
    published = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert [r["accuracy"] for r in published[label_best]["rows"]] == [r["accuracy"] for r in result_best["rows"]]
    assert cli([str(run_dir), "--repo-id", "a/b", "--dry-run", str(tmp_path / "out_model")]) == 0  # model/: its own
    published = json.loads((tmp_path / "out_model" / "eval_results.json").read_text())
    assert [r["weights_sha256"] for r in published.values()] == [result_last["weights_sha256"]]

    shutil.rmtree(run_dir / "eval")
    shutil.rmtree(run_dir / "model_best" / "eval")
    err = one_line_refusal([str(run_dir), "--repo-id", "a/b", "--dry-run", str(tmp_path / "none")], capsys)
    assert f"no evaluation of {run_dir / 'model'}" in err and "--no-eval" in err, err
