"""train_fcl.py end to end on the CPU: multi-process training and export, kill and resume, epoch coverage across ranks,
mixed precision, bad inputs. On shards the tests write themselves and, for the multi-process CIFAR run, on
../shared/data/cifar10-wds (skipped when absent)."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from train_helpers import (summary_rows, CIFAR_WDS, ROOT, TOY_RUN, env, make_shards, one_error_line, run, train_cmd,
                           tree_digest)

TOY = [*TOY_RUN, "-b", "16", "--log-interval", "4"]


# ------------------------------------------------------------------------------------ two processes, export, plain timm
PLAIN_TIMM_CHECK = r"""
import io, json, sys
import timm, torch, webdataset as wds
from PIL import Image
model_dir, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = timm.create_model("local-dir:" + model_dir, pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
split = json.load(open(root + "/_info.json"))["splits"]["test"]
wanted = {i * split["num_samples"] // n for i in range(n)}
xs, ys, start = [], [], 0
for name, length in zip(split["filenames"], split["shard_lengths"]):
    for j, s in enumerate(wds.tarfile_to_samples()([{"url": root + "/" + name}])):
        if start + j in wanted:
            xs.append(transform(Image.open(io.BytesIO(s["png"])).convert("RGB")))
            ys.append(int(s["cls"]))
    start += length
with torch.no_grad():
    logits = torch.cat([model(x) for x in torch.stack(xs).split(50)])
y = torch.tensor(ys)
print(json.dumps({"top1": 100.0 * (logits.argmax(1) == y).float().mean().item(), "n": len(ys),
                  "loss": torch.nn.functional.cross_entropy(logits, y).item(),
                  "timm_fcl_imported": any(m.startswith("timm_fcl") for m in sys.modules)}))
"""


@pytest.mark.skipif(not (CIFAR_WDS / "_info.json").exists(), reason=f"CIFAR-10 shards not found at {CIFAR_WDS}")
def test_cifar_two_processes_exports_a_model_plain_timm_reproduces(tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd("--model", "resnet18", "--dataset", "wds/cifar10", "--data-dir", str(CIFAR_WDS),
                         "--val-split", "test", "--method", "fcl", "--img-size", "32", "--crop-pct", "1",
                         "--train-subset", "256", "--val-subset", "200", "-b", "32", "--epochs", "1",
                         "--sched", "step", "--warmup-epochs", "0", "--lr", "0.05", "--workers", "1",
                         "--log-interval", "2", "--fcl-k", "64", "--no-progress", "--output", str(out),
                         processes=2))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es)" in proc.stderr
    assert any(" lr " in line and " fcl " in line and " weight " in line and "img/s" in line
               for line in proc.stderr.splitlines())
    row = summary_rows(out)[-1]
    assert int(row["eval_samples"]) == 200  # each validation sample counted once over the 2 ranks
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "config.json").exists()
    check = subprocess.run([sys.executable, "-c", PLAIN_TIMM_CHECK, str(out / "model"), str(CIFAR_WDS), "200"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300,
                           env={**env(), "PYTHONPATH": ""})
    assert check.returncode == 0, check.stderr[-3000:]
    plain = json.loads(check.stdout.strip().splitlines()[-1])
    assert not plain["timm_fcl_imported"] and plain["n"] == 200
    assert abs(plain["top1"] - float(row["eval_top1"])) <= 0.5  # at most one near-tie flips across batchings
    assert plain["loss"] == pytest.approx(float(row["eval_loss"]), rel=1e-3)


# --------------------------------------------------------------------------------------------------- kill -9 and resume
def test_sigkill_mid_epoch_then_same_command_resumes_to_identical_weights(toy, tmp_path):
    from safetensors.torch import load_file

    args = [*TOY, "--data-dir", str(toy), "--epochs", "2", "--workers", "2", "--checkpoint-interval", "3",
            "--state-hist", "10"]
    straight = run(train_cmd(*args, "--output", str(tmp_path / "straight")))
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    cmd = train_cmd(*args, "--output", str(out))
    victim = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("step_*")) and time.time() < deadline:
        assert victim.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert saved and saved[-1] != "step_000000024"  # killed before the end (2 epochs x 12 steps)

    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    a, b = load_file(tmp_path / "straight" / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed, uninterrupted = summary_rows(out), summary_rows(tmp_path / "straight")
    assert [r["eval_top1"] for r in resumed] == [r["eval_top1"] for r in uninterrupted]
    # the epoch cut by the kill reports the loss of all its steps, those before the resume included
    assert [(r["train_loss"], r["train_ce"], r["train_fcl"]) for r in resumed] == \
        [(r["train_loss"], r["train_ce"], r["train_fcl"]) for r in uninterrupted]


# ------------------------------------------------------------------------------------------ every sample once per epoch
def _all_hashes(root: Path) -> list[str]:
    import webdataset as wds
    from torchvision.transforms.functional import pil_to_tensor

    info = json.loads((root / "_info.json").read_text())["splits"]["train"]
    hashes = []
    for name in info["filenames"]:
        for s in wds.tarfile_to_samples()([{"url": str(root / name)}]):
            img = pil_to_tensor(Image.open(io.BytesIO(s["png"])).convert("RGB"))
            hashes.append(hashlib.sha1(img.numpy().tobytes()).hexdigest())
    return hashes


@pytest.mark.parametrize("processes", [1, 2])
def test_every_training_sample_is_read_once_per_epoch_across_ranks(tmp_path, processes):
    # 200 samples in 5 shards (48, 48, 48, 48, 8): shards cannot be dealt evenly to 2 ranks or 4 workers
    root = make_shards(tmp_path / "shards", train=200, val=8, shard_size=48)
    everything = _all_hashes(root)
    assert len(set(everything)) == 200
    probe = str(ROOT / "tests" / "stream_probe.py")
    cmd = [sys.executable, probe] if processes == 1 else \
        train_cmd(processes=processes)[:-1] + [probe]
    proc = run(cmd + [str(root), str(tmp_path), "16"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(processes)]
    for workers in ("0", "2"):
        seen = [h for rank in ranks for h in rank[workers]["hashes"]]
        assert sorted(seen) == sorted(everything), f"workers={workers}: a sample missing or read twice"
        batches = {rank[workers]["batches"] for rank in ranks}
        assert len(batches) == 1, "ranks must take the same number of steps"
        assert batches == {ranks[0][workers]["expected_batches"]}


def test_stream_ranges_partition_exactly():
    from timm_fcl.data.partition import stream_range, subset_positions

    for n, streams, b in [(200, 4, 16), (199, 2, 16), (10, 3, 4), (97, 8, 3)]:
        train = [stream_range(n, streams, s, equal=True, batch_size=b) for s in range(streams)]
        val = [stream_range(n, streams, s, equal=False) for s in range(streams)]
        assert len({len(r) for r in train}) == 1  # equal quotas: equal steps on every rank
        covered = [i for r in train for i in r]
        assert len(covered) == len(set(covered)) and n - len(covered) < streams + streams  # at most a remainder
        assert sorted(i for r in val for i in r) == list(range(n))
    assert list(subset_positions(10000, 4, spread=True)) == [0, 2500, 5000, 7500]
    assert list(subset_positions(10000, 4, spread=False)) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------------------ mixed precision
def test_bf16_autocast_runs_on_cpu_and_fp16_is_refused(toy, tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    import timm
    from timm_fcl.training.checks import check_mixed_precision
    from timm_fcl.training.flags import ConfigError
    from train_fcl import evaluate
    from timm_fcl.data import EpochStream, create_source, make_loader
    from torchvision.transforms import ToTensor

    AcceleratorState._reset_state(True)
    try:
        accelerator = Accelerator(mixed_precision="bf16", cpu=True)
        model = timm.create_model("resnet18", num_classes=10)
        dtypes = []
        model.conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        stream = EpochStream(create_source("wds/toy", str(toy), "validation"), transform=ToTensor(),
                             is_training=False, seed=0, batch_size=16, num_workers=0)
        metrics = evaluate(model, make_loader(stream, num_workers=0), accelerator, num_classes=10,
                           split="validation")
    finally:
        AcceleratorState._reset_state(True)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert metrics["samples"] == 64 and 0.0 <= metrics["top1"] <= 100.0

    # 32 px, not the toy's 16: on the CPU, torch's bf16 weight gradient of a stride-2 3x3 convolution over a 1x1 map
    # (resnet18's layer4 at 16 px) is wrong and often NaN, which the divergence guard rightly stops
    bf16 = run(train_cmd(*TOY, "--img-size", "32", "--data-dir", str(toy), "--epochs", "1", "--workers", "0",
                         "--train-subset", "64", "--mixed-precision", "bf16", "--output", str(tmp_path / "bf16")))
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    assert float(summary_rows(tmp_path / "bf16")[-1]["train_loss"]) > 0

    check_mixed_precision("fp16", "cuda")  # accepted where a GPU exists
    with pytest.raises(ConfigError):
        check_mixed_precision("fp16", "cpu")
    fp16 = run(train_cmd(*TOY, "--data-dir", str(toy), "--mixed-precision", "fp16", "--output", str(tmp_path / "fp16")))
    assert one_error_line("fp16", fp16.returncode, fp16.stderr) == \
        "train_fcl.py: error: --mixed-precision fp16 needs a GPU; on the CPU use bf16 or no"
    assert not (tmp_path / "fp16").exists()


# -------------------------------------------------------------------------------------------- bad inputs and bad shards
def test_bad_inputs_give_one_error_line_and_keep_what_was_saved(toy, tmp_path):
    import timm
    from safetensors.torch import save_file

    out = tmp_path / "run"
    good = run(train_cmd(*TOY, "--data-dir", str(toy), "--epochs", "1", "--workers", "0", "--output", str(out)))
    assert good.returncode == 0, good.stderr[-3000:]
    before = tree_digest(out)

    ckpt = tmp_path / "seven.safetensors"
    save_file(timm.create_model("resnet18", num_classes=7).state_dict(), str(ckpt))
    bad_labels = make_shards(tmp_path / "bad", bad_label_at=5)
    pickled = tmp_path / "pickled.safetensors"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), pickled)  # a pickle under the name
    base = [*TOY, "--workers", "0"]
    cases = {
        "data dir": ([*base, "--data-dir", str(tmp_path / "nowhere")], "does not exist"),
        "model": ([*base, "--data-dir", str(toy), "--model", "resnet_nonexistent"], "unknown model 'resnet_nonexistent'"),
        "method": ([*base, "--data-dir", str(toy), "--method", "magic"], "invalid choice: 'magic'"),
        "classes": ([*base, "--data-dir", str(toy), "--num-classes", "10", "--initial-checkpoint", str(ckpt)],
                    "contradicts --initial-checkpoint"),
        "pickle": ([*base, "--data-dir", str(toy), "--initial-checkpoint", str(pickled)],
                   f"--initial-checkpoint {pickled} is not a safetensors file"),
        # resumes the finished run above and trains a second epoch, which meets label 13
        "labels": ([*base, "--data-dir", str(bad_labels), "--epochs", "2"], "outside [0, 10)"),
    }
    copies = {k: tmp_path / f"copy{i}" for i, k in enumerate(cases)}  # one each: a run locks its --output
    for copy in copies.values():
        shutil.copytree(out, copy)
    procs = {k: subprocess.Popen(train_cmd(*argv, "--output", str(copies[k])), env=env(), cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, (argv, _) in cases.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        line = one_error_line(name, proc.returncode, stderr)
        assert cases[name][1] in line, f"{name}: {line}"
        assert tree_digest(copies[name]) == before, name  # nothing already saved was lost or changed


def _spoil_images(shard: Path, count: int) -> None:
    """The shard with its first ``count`` images' bytes made undecodable (the tar itself stays readable)."""
    import tarfile
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read()))
    spoiled = 0
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name.endswith(".png") and spoiled < count:
                data, spoiled = b"not an image", spoiled + 1
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    assert spoiled == count


def test_truncated_shard_and_undecodable_images_are_skipped_counted_and_the_run_goes_on(toy, tmp_path):
    """A shard cut in half is skipped and its quota refilled by repeats; 3 undecodable training images are replaced
    by neighbours, 2 undecodable validation images are left out: each counted in its own summary.csv column."""
    shards = tmp_path / "shards"
    shutil.copytree(toy, shards)
    victim = shards / "toy-train-000001.tar"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    _spoil_images(shards / "toy-train-000002.tar", 3)
    _spoil_images(shards / "toy-validation-000000.tar", 2)
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(shards), "--epochs", "1", "--workers", "0", "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping unreadable shard" in proc.stderr and "toy-train-000001.tar" in proc.stderr
    row = summary_rows(out)[-1]
    assert int(row["bad_shards"]) == 1
    assert 0 < int(row["repeated_samples"]) <= 48  # the lost half shard, refilled to keep the step count
    assert int(row["step"]) == 12
    replaced = int(row["replaced_undecodable"])  # a bad image may come again among the refill's repeats
    assert 3 <= replaced <= 3 + int(row["repeated_samples"]) and row["val_undecodable_left_out"] == "2"
    assert f"epoch 0: {replaced} undecodable training image(s) replaced by a neighbour in their batch" in proc.stderr
    assert "epoch 0: 2 undecodable validation image(s) left out, validated on 62" in proc.stderr
    assert re.search(r"validation: top1 [0-9.]+ top5 [0-9.]+ loss [0-9.]+ on 62 samples", proc.stderr)


def test_cheaper_mode_and_compile_flags_reach_the_regularizer():
    from timm_fcl.training.flags import ConfigError, fcl_config
    from train_fcl import get_args_parser
    args = get_args_parser().parse_args(["--fcl-fraction", "0.25", "--fcl-every", "4", "--fcl-perturbed-chunks", "2",
                                         "--torchcompile"])
    cfg = fcl_config(args, {"std": (0.5, 0.5, 0.5)}, updates_per_epoch=10)
    assert (cfg.fraction, cfg.every, cfg.perturbed_chunks) == (0.25, 4, 2)
    assert args.torchcompile == "inductor" and get_args_parser().parse_args([]).torchcompile is None
    with pytest.raises(ConfigError, match="fraction must lie in"):
        fcl_config(get_args_parser().parse_args(["--fcl-fraction", "0"]), {"std": (1.0,)}, 10)


def test_a_plateau_schedule_without_warmup_trains_at_lr_from_the_first_epoch(toy, tmp_path):
    """timm's plateau scheduler sets its warmup lr when stepped at epoch 0; a fresh run never steps it there."""
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(toy), "--epochs", "2", "--workers", "0", "--train-subset", "32",
                         "--val-subset", "16", "--sched", "plateau", "--warmup-epochs", "0", "--method", "xe",
                         "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [float(r["lr"]) for r in summary_rows(out)] == pytest.approx([0.05, 0.05])


def test_summary_lr_is_the_epochs_own_lr_as_logged(toy, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(toy), "--epochs", "3", "--workers", "0", "--train-subset", "32",
                         "--decay-epochs", "1", "--decay-rate", "0.1", "--log-interval", "1", "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = {}
    for line in proc.stderr.splitlines():
        m = re.search(r" epoch (\d+) step \d+ batch \d+/\d+ lr ([0-9.e-]+) ", line)
        if m:
            logged.setdefault(int(m.group(1)), set()).add(float(m.group(2)))
    rows = summary_rows(out)
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.005, 0.0005])
    for r in rows:  # every step of the epoch logged the lr its summary row shows
        assert [float(r["lr"])] * len(logged[int(r["epoch"])]) == pytest.approx(sorted(logged[int(r["epoch"])])), logged
