"""timm_fcl.data.holdout: a fixed validation split carved from training shards."""
import json

import pytest

from timm_fcl.data import DataError, wds_split
from timm_fcl.data.holdout import _samples, carve_validation
from train_helpers import make_shards


def read(folder, split):
    urls, _, _ = wds_split(str(folder), split)
    return list(_samples(urls))


def test_carved_splits_partition_the_training_split_deterministically(tmp_path):
    source = make_shards(tmp_path / "toy", train=192, shard_size=48)
    info = carve_validation(source, tmp_path / "a", val_size=40, seed=3, shard_size=50)
    train, val = read(tmp_path / "a", "train"), read(tmp_path / "a", "validation")
    original = read(source, "train")
    assert (len(train), len(val)) == (152, 40)
    assert info["splits"]["train"]["shard_lengths"] == [50, 50, 50, 2]
    assert sorted(train + val) == sorted(original)  # every image once, with its label
    kept = [s for s in original if s in train]
    assert train == kept  # the training images keep their (shuffled) order
    again = carve_validation(source, tmp_path / "b", val_size=40, seed=3, shard_size=50)
    assert read(tmp_path / "b", "validation") == val and again["holdout"] == info["holdout"]
    other = carve_validation(source, tmp_path / "c", val_size=40, seed=4, shard_size=50)
    assert read(tmp_path / "c", "validation") != val and other["holdout"]["seed"] == 4


def test_an_existing_carve_is_reused_and_a_different_one_refused(tmp_path):
    source = make_shards(tmp_path / "toy", train=96, shard_size=48)
    carve_validation(source, tmp_path / "out", val_size=16)
    stamp = (tmp_path / "out" / "_info.json").stat().st_mtime_ns
    assert carve_validation(source, tmp_path / "out", val_size=16)["holdout"]["val_size"] == 16
    assert (tmp_path / "out" / "_info.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other shards"):
        carve_validation(source, tmp_path / "out", val_size=20)
    with pytest.raises(DataError, match="val_size"):
        carve_validation(source, tmp_path / "new", val_size=96)
    assert json.loads((tmp_path / "out" / "_info.json").read_text())["splits"]["validation"]["num_samples"] == 16
