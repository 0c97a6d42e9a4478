"""Corrupt or truncated shards are skipped with a warning and counted; all bad is an error."""

import itertools
import shutil

import pytest
from torch.utils.data import DataLoader

from longred_pl.data.datamodule import MixedLengthStream
from longred_pl.data.shards import StreamConfig, expand_urls


def copy_with_damage(src, dst, damage):
    shutil.copytree(src, dst)
    shards = expand_urls(str(dst))
    for index, how in damage.items():
        data = open(shards[index], "rb").read()
        with open(shards[index], "wb") as handle:
            handle.write(data[: len(data) // 2] if how == "truncate" else b"\x00garbage" * 100)
    return shards


def batches(path, n, seq_len=16, batch=2):
    ds = MixedLengthStream(
        {"short": StreamConfig(str(path), seq_len, batch)}, ["short"], 0, 1, 1, 0, 1
    )
    return list(itertools.islice(iter(DataLoader(ds, batch_size=None)), n))


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_bad_shard_in_the_middle_is_skipped(tiny_shards, tmp_path, how):
    shards = copy_with_damage(tiny_shards["short"], tmp_path / "short", {3: how})
    with pytest.warns(UserWarning, match=r"skipping unreadable shard .*shard-00003\.tar"):
        got = batches(tmp_path / "short", 40)  # 80 samples: a whole epoch of 64 and more
    assert len(got) == 40
    assert got[-1]["bad_shards"] == 1
    healthy = batches(tiny_shards["short"], 1)
    assert healthy[0]["bad_shards"] == 0
    assert len(shards) == 8


def test_every_shard_bad_is_a_clear_error(tiny_shards, tmp_path):
    copy_with_damage(tiny_shards["short"], tmp_path / "short", dict.fromkeys(range(8), "garbage"))
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=r"none of its 8 shard\(s\) could be read"),
    ):
        batches(tmp_path / "short", 1)
