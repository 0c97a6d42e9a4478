"""Shard faults: nothing silent, transient errors retried, bad shards kept through resume.

Corrupt or truncated shards are skipped with a warning and counted; all bad is an error;
a shard listed in index.json but gone, or present but unlisted, is refused up front.
"""

import collections
import importlib
import itertools
import os
import re
import shutil
import threading
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from longred_pl.data import shards as shards_mod
from longred_pl.data.datamodule import MixedLengthDataModule, MixedLengthStream
from longred_pl.data.shards import StreamConfig, expand_urls
from longred_pl.errors import UserError


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


def test_listed_shard_deleted_is_an_error_at_construction(tiny_shards, tmp_path):
    """Before: the stream trained on 7 of 8 shards and train/bad_shards stayed 0."""
    shutil.copytree(tiny_shards["short"], tmp_path / "short")
    (tmp_path / "short" / "shard-00003.tar").unlink()
    with pytest.raises(
        UserError,
        match=r"^data\.short\.urls: .*index\.json lists 1 shard\(s\) missing from .*: "
        r"shard-00003\.tar; restore them, or re-run `longred prepare`",
    ):
        MixedLengthDataModule(
            short=StreamConfig(str(tmp_path / "short"), 16, 2), schedule=["short"]
        )


def test_unlisted_shard_is_refused(tiny_shards, tmp_path):
    shutil.copytree(tiny_shards["short"], tmp_path / "short")
    shutil.copy(tmp_path / "short" / "shard-00000.tar", tmp_path / "short" / "extra.tar")
    with pytest.raises(UserError, match=r"^data\.val_short\.urls: extra\.tar in .* not listed"):
        MixedLengthDataModule(
            val_short=StreamConfig(str(tmp_path / "short"), 16, 2),
            schedule=["short"],
            short=StreamConfig(tiny_shards["short"], 16, 2),
        )


class Breaking:
    """A shard file whose reads fail (connection reset) from byte ``after`` on."""

    def __init__(self, handle, after):
        self.handle, self.after = handle, after

    def read(self, n=-1):
        if self.handle.tell() >= self.after:
            raise ConnectionResetError("connection reset by peer (injected)")
        return self.handle.read(n)

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.fixture
def flaky(monkeypatch):
    """``flaky(name, times)``: the next ``times`` opens of shard ``name`` break at sample 4."""
    wds_gopen = importlib.import_module("webdataset.gopen")  # the module, not the function

    real, state = wds_gopen.gopen, {"opens": collections.Counter(), "left": {}}
    monkeypatch.setattr(shards_mod, "RETRY_BACKOFF_S", 0.0)  # the test need not wait

    def gopen(url, mode="rb", **kwargs):
        handle, name = real(url, mode, **kwargs), os.path.basename(url)
        state["opens"][name] += 1
        if state["left"].get(name, 0) > 0:
            state["left"][name] -= 1
            return Breaking(handle, after=4 * MEMBER_BYTES + 100)
        return handle

    monkeypatch.setattr(wds_gopen, "gopen", gopen)

    def arm(name, times):
        state["left"][name] = times
        return state["opens"]

    return arm


MEMBER_BYTES = 1024  # a 16-token sample: tar header, 64 bytes padded to 512 (no pax header)


def stream_batches(path, n, start=0, faults=(), buffer=5):
    ds = MixedLengthStream(
        {"short": StreamConfig(str(path), 16, 2)},
        ["short"],
        0,
        1,
        0,
        3,
        buffer,
        start,
        None,
        faults,
    )
    return list(itertools.islice(iter(DataLoader(ds, batch_size=None)), n))


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b)
    )


def test_transient_error_is_retried_from_the_failed_sample(tiny_shards, flaky):
    """Before: one OSError made the shard bad (its last 4 samples lost, bad_shards 1)."""
    healthy = stream_batches(tiny_shards["short"], 40)
    opens = flaky("shard-00003.tar", times=1)
    with pytest.warns(
        UserWarning, match=r"read error in .*shard-00003\.tar at sample 4 .*retry 1 of 2"
    ):
        got = stream_batches(tiny_shards["short"], 40)
    assert same(got, healthy)
    assert got[-1]["bad_shards"] == 0 and not any(b["faults"] for b in got)
    assert opens["shard-00003.tar"] == 3  # epoch 0: failed + retried; epoch 1: once


def test_shard_that_keeps_failing_is_recorded_and_resume_matches(tiny_shards, flaky):
    """Bad in epoch 0 only (the store recovers): the record keeps the resumed run exact."""
    opens = flaky("shard-00003.tar", times=shards_mod.READ_ATTEMPTS)
    with pytest.warns(UserWarning) as caught:
        full = stream_batches(tiny_shards["short"], 60)  # 60 samples in epoch 0, 60 of epoch 1
    said = [str(w.message) for w in caught]
    assert sum("retry" in m for m in said) == shards_mod.READ_ATTEMPTS - 1
    assert any(re.search(r"skipping unreadable shard .*shard-00003\.tar", m) for m in said)
    assert opens["shard-00003.tar"] == shards_mod.READ_ATTEMPTS + 1
    carrier = next(i for i, b in enumerate(full) if b["faults"])
    (record,) = full[carrier]["faults"]
    assert record["ended"] == 4 and record["epoch"] == 0 and "3 attempts" in record["error"]
    cut = carrier + 3
    assert cut < 30  # still in epoch 0: the stream diverges if the record is not applied
    resumed = stream_batches(tiny_shards["short"], 60 - cut, cut, [record])
    assert same(resumed, full[cut:])
    assert not same(stream_batches(tiny_shards["short"], 60 - cut, cut), full[cut:])


def test_corrupt_shard_record_travels_through_the_checkpoint(tiny_shards, tmp_path):
    copy_with_damage(tiny_shards["short"], tmp_path / "short", {5: "truncate"})
    dm = MixedLengthDataModule(
        short=StreamConfig(str(tmp_path / "short"), 16, 2),
        schedule=["short"],
        num_workers=0,
        shuffle_buffer=5,
        seed=3,
    )
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    with pytest.warns(UserWarning, match="skipping unreadable shard"):
        full = list(itertools.islice(iter(dm.train_dataloader()), 70))
    for batch in full[:50]:
        dm.on_before_batch_transfer(batch, 0)
    state = dm.state_dict()
    assert state["consumed"] == 50 and dm.bad_shards == 1
    assert [(r["stream"], r["url"].endswith("shard-00005.tar")) for r in state["faults"]] == [
        ("short", True),
        ("short", True),
    ]  # met in epoch 0 and again in epoch 1
    again = MixedLengthDataModule(
        short=StreamConfig(str(tmp_path / "short"), 16, 2),
        schedule=["short"],
        num_workers=0,
        shuffle_buffer=5,
        seed=3,
    )
    again.load_state_dict(state)
    resumed = list(itertools.islice(iter(again.train_dataloader()), 20))
    assert same(resumed, full[50:])


class ThreadStrategy:
    """``all_gather`` across threads, one thread per rank (stands in for a process group)."""

    def __init__(self, world):
        self.barrier, self.slots, self.root_device = (
            threading.Barrier(world),
            {},
            torch.device("cpu"),
        )

    def all_gather(self, tensor):
        rank = threading.current_thread().rank
        self.barrier.wait()
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        out = torch.stack([self.slots[r] for r in sorted(self.slots)])
        self.barrier.wait()
        return out


def test_every_ranks_faults_reach_rank_zeros_checkpoint(tiny_shards):
    strategy, states = ThreadStrategy(2), {}

    def rank_main(rank):
        threading.current_thread().rank = rank
        dm = MixedLengthDataModule(
            short=StreamConfig(tiny_shards["short"], 16, 2), schedule=["short"]
        )
        dm.trainer = SimpleNamespace(
            training=True, global_rank=rank, world_size=2, strategy=strategy
        )
        record = {
            "stream": "short",
            "consumer": rank,
            "epoch": 0,
            "shard": 3 + rank,
            "url": f"u{rank}",
            "ended": rank,
            "error": "x" * (rank * 50),
        }
        dm.on_before_batch_transfer({"index": 0, "faults": [record] * (rank + 1)}, 0)
        states[rank] = dm.state_dict()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert states[0]["faults"] == states[1]["faults"]
    assert [(r["consumer"], r["shard"]) for r in states[0]["faults"]] == [(0, 3), (1, 4)]
