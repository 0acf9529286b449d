"""Shards checked against their _info.json before the first step: counts from the tar headers (timm_fcl.data.tarindex)
that differ from the listed ones stop the run with one line, a malformed _info.json says so, and a sample without a
label is left out alone (not its shard), the epoch one sample shorter, and logged."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.transforms import ToTensor

from train_helpers import summary_rows, CIFAR_WDS, TOY_RUN, one_error_line, run, train_cmd

TOY = [*TOY_RUN, "-b", "16", "--log-interval", "4", "--epochs", "1", "--workers", "0"]
MISSING_KEY, MISSING_SHARD = "train-00000050", "toy-train-000001.tar"  # the 3rd sample of the 2nd shard (48 each)


def _copy(toy: Path, folder: Path) -> Path:
    shutil.copytree(toy, folder)
    return folder


def _edit_info(folder: Path, edit) -> Path:
    info = json.loads((folder / "_info.json").read_text())
    edit(info)
    (folder / "_info.json").write_text(json.dumps(info))
    return folder


def _drop_member(shard: Path, name: str) -> None:
    """Rewrite the tar without one member, the others unchanged and in order."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m, tar.extractfile(m).read()))
    assert name in [m.name for m, _ in members]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name != name:
                tar.addfile(m, io.BytesIO(data))


@pytest.fixture(scope="module")
def unlabelled(toy, tmp_path_factory) -> Path:
    """The toy shards (192 training samples) with sample train-00000050 lacking its .cls; _info.json unchanged."""
    folder = _copy(toy, tmp_path_factory.mktemp("unlabelled") / "shards")
    _drop_member(folder / MISSING_SHARD, f"{MISSING_KEY}.cls")
    return folder


def _refused_before_any_step(name: str, proc, out: Path) -> str:
    line = one_error_line(name, proc.returncode, proc.stderr)
    assert " step " not in proc.stderr, proc.stderr[-3000:]
    assert not out.exists(), f"{name}: the refused run left {sorted(p.name for p in out.iterdir())}"
    return line


# ----------------------------------------------------------------------------- (a) counts that differ from _info.json
def test_info_claiming_more_samples_than_the_shards_hold_stops_before_any_step(toy, tmp_path):
    def five_more(info):
        split = info["splits"]["train"]
        split["shard_lengths"][-1] += 5
        split["num_samples"] += 5

    shards = _edit_info(_copy(toy, tmp_path / "shards"), five_more)
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(shards), "--output", str(out)))
    line = _refused_before_any_step("five more", proc, out)
    assert "split 'train'" in line and "lists 197 samples, its shards hold 192" in line, line
    assert "toy-train-000003.tar: listed 53, holds 48" in line, line


@pytest.mark.parametrize("case, lengths, expected", [
    ("fewer", [48, 48, 48, 40], "lists 184 samples, its shards hold 192 (1 shard(s) differ, e.g. "
                                "toy-train-000003.tar: listed 40, holds 48)"),
    # the total is right, two shards are not: each shard is compared, not just the sum
    ("moved", [48, 50, 46, 48], "lists 192 samples, its shards hold 192 (2 shard(s) differ, e.g. "
                                "toy-train-000001.tar: listed 50, holds 48)"),
])
def test_each_shard_is_compared_with_its_listed_length(toy, tmp_path, case, lengths, expected):
    from timm_fcl.data import DataError, create_source

    def relist(info):
        info["splits"]["train"].update(shard_lengths=lengths, num_samples=sum(lengths))

    shards = _edit_info(_copy(toy, tmp_path / case), relist)
    with pytest.raises(DataError) as exn:
        create_source("wds/toy", str(shards), "train")
    assert str(exn.value) == f"split 'train': {shards}/_info.json {expected}"
    create_source("wds/toy", str(shards), "validation")  # the other split is fine


def test_a_pattern_split_is_checked_against_its_total(toy):
    from timm_fcl.data import DataError, create_source

    pattern = "toy-train-{000000..000003}.tar"  # relative to --data-dir
    assert len(create_source("wds/toy", str(toy), f"{pattern}|192")) == 192
    with pytest.raises(DataError, match=r"^split '.*\|200': its pattern gives 200 samples, its shards hold 192$"):
        create_source("wds/toy", str(toy), f"{pattern}|200")


def test_info_listing_a_shard_twice_is_refused(toy, tmp_path):
    """An _info.json that lists shard 0 twice (and not shard 1) trained shard 0 twice an epoch and never read shard 1,
    with no word: now it is refused before the run, naming the shard."""
    from timm_fcl.data import DataError, create_source

    def twice(info):
        split = info["splits"]["train"]
        split["filenames"][1] = split["filenames"][0]
    shards = _edit_info(_copy(toy, tmp_path / "shards"), twice)
    first = json.loads((shards / "_info.json").read_text())["splits"]["train"]["filenames"][0]
    with pytest.raises(DataError, match=f"split 'train': lists shard {first} twice"):
        create_source("wds/toy", str(shards), "train")


def test_a_validation_split_with_no_readable_sample_is_an_error_not_the_best_epoch(toy, tmp_path):
    """Validation shards that cannot be read validated on 0 samples with loss 0.0, which became the best epoch; now
    the epoch stops with one error line and no best epoch is written."""
    shards = _copy(toy, tmp_path / "shards")
    for name in json.loads((shards / "_info.json").read_text())["splits"]["validation"]["filenames"]:
        (shards / name).write_bytes(b"not a tar" * 100)
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(shards), "--output", str(out)))
    line = one_error_line("unreadable validation", proc.returncode, proc.stderr)
    assert line == "train_fcl.py: error: the validation split 'validation' gave no readable sample (can its shards or " \
        "images be read?): there is nothing to judge the epoch by", line
    assert not (out / "best.json").exists() and not (out / "model_best").exists()


# ------------------------------------------------------------------------------------------ (b) a malformed _info.json
def test_malformed_info_json_is_one_line_of_its_own(toy, tmp_path):
    shards = _copy(toy, tmp_path / "shards")
    cut = '{"name": "toy", "splits": {"train": '
    (shards / "_info.json").write_text(cut)
    with pytest.raises(json.JSONDecodeError) as why:
        json.loads(cut)
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(shards), "--output", str(out)))
    line = _refused_before_any_step("cut json", proc, out)
    assert line == f"train_fcl.py: error: {shards}/_info.json is not valid JSON ({why.value})", line
    assert str(why.value).startswith("Expecting value: line 1 column")
    assert "not found" not in proc.stderr


@pytest.mark.parametrize("content, expected", [
    (b"", "_info.json is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    (b"\xff\xfe{}", "_info.json is not valid JSON (not UTF-8 text: invalid start byte at byte 0)"),
    (b"[1, 2]", "_info.json: expected an object, got list"),
    (b'"toy"', "_info.json: expected an object, got str"),
    (b"{}", "_info.json lists no split 'train' (its splits: none)"),
    (b'{"splits": {"validation": {}}}', "_info.json lists no split 'train' (its splits: validation)"),
])
def test_malformed_info_json_messages(toy, tmp_path, content, expected):
    from timm_fcl.data import DataError, create_source

    shards = _copy(toy, tmp_path / "shards")
    (shards / "_info.json").write_bytes(content)
    with pytest.raises(DataError) as exn:
        create_source("wds/toy", str(shards), "train")
    assert str(exn.value) == f"{shards}/{expected}"


# ------------------------------------------------------------------------------------- (c) a sample without a label
def _image_hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1((x * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest() for x in images]


def _all_samples(root: Path, split: str = "train") -> dict[str, str]:
    """{key: image hash} of every sample of the split, read with webdataset."""
    import webdataset as wds
    from PIL import Image

    info = json.loads((root / "_info.json").read_text())["splits"][split]
    out = {}
    for name in info["filenames"]:
        for s in wds.tarfile_to_samples()([{"url": str(root / name)}]):
            out[s["__key__"]] = _image_hashes(ToTensor()(Image.open(io.BytesIO(s["png"])).convert("RGB"))[None])[0]
    return out


def _one_epoch(source, **kw) -> tuple[list[str], object]:
    from timm_fcl.data import EpochStream, make_loader

    stream = EpochStream(source, transform=ToTensor(), is_training=True, seed=0, batch_size=16, num_workers=0, **kw)
    stream.set_epoch(0)
    seen = [h for x, _ in make_loader(stream, num_workers=0) for h in _image_hashes(x)]
    return seen, stream


def test_a_sample_without_a_label_is_left_out_alone_and_the_epoch_is_one_shorter(unlabelled, caplog):
    from timm_fcl.data import create_source

    source = create_source("wds/toy", str(unlabelled), "train")
    assert len(source) == 191 and source.incomplete == 1
    assert source.incomplete_example == f"{MISSING_KEY} in {MISSING_SHARD}"
    everything = _all_samples(unlabelled)
    assert len(everything) == 192  # webdataset still yields it (an image without .cls)
    with caplog.at_level("WARNING", logger="timm_fcl.data.streams"):
        seen, stream = _one_epoch(source)
    assert len(seen) == 191  # every image of the epoch, read once: one fewer than the 192 listed
    assert sorted(seen) == sorted(h for k, h in everything.items() if k != MISSING_KEY)  # the rest of its shard too
    assert stream.skipped() == (0, 0, 0)  # no shard skipped, nothing repeated, every image decoded
    assert stream.incomplete_per_epoch() == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"epoch 0: 1 sample(s) of split 'train' without a label (.cls) or an image left out, 191 remain "
        f"(e.g. {MISSING_KEY} in {MISSING_SHARD})"]


def test_an_uncounted_shard_skips_the_sample_when_read_and_refills_the_quota(unlabelled):
    """A shard not counted before the run (e.g. a URL) is numbered as _info.json lists it: the sample without a label
    is found while reading, skipped alone and counted, and the quota refilled by one repeat."""
    from timm_fcl.data import WdsSource, wds_split

    urls, lengths, _ = wds_split(str(unlabelled), "train")
    seen, stream = _one_epoch(WdsSource(urls, lengths))
    everything = _all_samples(unlabelled)
    assert len(seen) == 192 and len(set(seen)) == 191
    assert set(seen) == {h for k, h in everything.items() if k != MISSING_KEY}
    assert stream.skipped() == (0, 1, 0) and stream.incomplete_read() == 1


def test_training_on_shards_with_a_sample_without_a_label(unlabelled, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd(*TOY, "--data-dir", str(unlabelled), "--output", str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"epoch 0: 1 sample(s) of split 'train' without a label (.cls) or an image left out, 191 remain "
            f"(e.g. {MISSING_KEY} in {MISSING_SHARD})") in proc.stderr
    assert "skipping unreadable shard" not in proc.stderr
    row = summary_rows(out)[-1]
    assert (row["bad_shards"], row["repeated_samples"], row["replaced_undecodable"]) == ("0", "0", "0")
    assert int(row["step"]) == 12  # ceil(191 / 16)


# --------------------------------------------------------------------------------------- the header count itself
def _webdataset_counts(path: Path) -> tuple[int, int]:
    import webdataset as wds

    from timm_fcl.data.shard_info import is_complete

    samples = list(wds.tarfile_to_samples()([{"url": str(path)}]))
    return len(samples), sum(is_complete(set(s)) for s in samples)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("compress", [False, True])
def test_header_count_matches_webdataset(tmp_path, fmt, compress):
    from timm_fcl.data.shard_info import is_complete
    from timm_fcl.data.tarindex import count_shard

    deep = "d" * 60 + "/" + "e" * 60  # a 121-character folder: ustar's prefix, GNU's long name, pax's path
    members = [("a.png", b"x"), ("a.cls", b"1"), ("b.jpg", b"x"), ("b.txt", b"hi"),  # b: no label
               ("__meta__", b"skipped"), ("noext", b"skipped"), ("c.PNG", b"x"), ("c.cls", b"2"),
               (f"{deep}/f.png", b"x"), (f"{deep}/f.cls", b"3"), (f"{deep}/g.cls", b"4"),  # g: no image
               ("h.x.png", b"x"), ("h.x.cls", b"5")]  # key h, extensions x.png and x.cls: not an image
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("folder")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / ("s.tar.gz" if compress else "s.tar")
    path.write_bytes(gzip.compress(buf.getvalue()) if compress else buf.getvalue())
    count = count_shard(path, is_complete)
    assert (count.samples, count.complete) == _webdataset_counts(path) == (6, 3)
    assert count.first_incomplete == "b" and count.ended
    cut = tmp_path / ("cut.tar.gz" if compress else "cut.tar")
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert not count_shard(cut, is_complete).ended


def test_a_truncated_gzip_shard_keeps_its_listed_length_and_a_warning(toy, tmp_path, caplog):
    from timm_fcl.data import create_source

    shards = _copy(toy, tmp_path / "shards")
    victim = shards / MISSING_SHARD
    victim.write_bytes(gzip.compress(victim.read_bytes())[:2000])
    with caplog.at_level("WARNING", logger="timm_fcl.data.shard_info"):
        source = create_source("wds/toy", str(shards), "train")
    assert source.lengths == [48, 48, 48, 48] and source.counted == [True, False, True, True]
    assert any("cannot be read to its end" in r.getMessage() and MISSING_SHARD in r.getMessage()
               for r in caplog.records)


@pytest.mark.skipif(not (CIFAR_WDS / "_info.json").exists(), reason=f"CIFAR-10 shards not found at {CIFAR_WDS}")
@pytest.mark.parametrize("where", [0.3, 0.5, 0.8])
def test_a_gzip_shard_corrupt_mid_stream_is_a_shard_that_cannot_be_read_not_a_wrong_info(toy, tmp_path, caplog, where):
    """A gzip shard corrupt in the middle blamed _info.json ("lists 600, its shards hold 451") where the docs promise
    that a corrupt shard is skipped with a warning: it now counts as a shard that cannot be read to its end."""
    from timm_fcl.data import create_source

    shards = _copy(toy, tmp_path / "shards")
    victim = shards / MISSING_SHARD
    packed = bytearray(gzip.compress(victim.read_bytes()))
    at = int(len(packed) * where)
    packed[at:at + 16] = bytes(b ^ 0x5A for b in packed[at:at + 16])
    victim.write_bytes(bytes(packed))
    with caplog.at_level("WARNING", logger="timm_fcl.data.shard_info"):
        source = create_source("wds/toy", str(shards), "train")
    assert source.lengths == [48, 48, 48, 48] and source.counted == [True, False, True, True]
    assert any("cannot be read to its end" in r.getMessage() and MISSING_SHARD in r.getMessage()
               for r in caplog.records)


def test_cifar10_train_shards_count_as_listed_from_the_headers_alone(monkeypatch):
    # the count reads tar headers only: no member's data is extracted and no image decoded
    import tarfile

    from PIL import Image

    from timm_fcl.data import create_source

    def refuse(*args, **kwargs):
        raise AssertionError("the count read a member's data")
    monkeypatch.setattr(tarfile.TarFile, "extractfile", refuse)
    monkeypatch.setattr(Image, "open", refuse)
    source = create_source("wds/cifar10", str(CIFAR_WDS), "train")
    assert len(source) == 50000 and all(source.counted) and source.incomplete == 0
