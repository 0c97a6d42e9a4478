"""Resume seeks: the resumed stream is bit-identical and skips by counting, not reading."""

import itertools
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import write_tiny_shards
from torch.utils.data import DataLoader

from longred_pl.data import shards as shards_mod
from longred_pl.data.datamodule import MixedLengthStream, stream_index
from longred_pl.data.prepare import write_shards
from longred_pl.data.schedule import PUBLISHED_SCHEDULE
from longred_pl.data.shards import ShardFaults, StreamConfig, consumer_stream, read_shard


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """37 samples in shards of 5: a short last shard, and remainder shards for most C."""
    return write_tiny_shards(tmp_path_factory.mktemp("awkward") / "s", 8, 37, 5, seed=5)


class Decodes:
    """Counts decoded samples and opened shards (in this process)."""

    def __init__(self, monkeypatch):
        self.samples, self.opened = 0, []
        decode, members = shards_mod.decode_member, shards_mod._members

        def counting_decode(*args):
            self.samples += 1
            return decode(*args)

        def counting_members(url, *args):
            self.opened.append(url)
            return members(url, *args)

        monkeypatch.setattr(shards_mod, "decode_member", counting_decode)
        monkeypatch.setattr(shards_mod, "_members", counting_members)


def stream(index, consumer, consumers, buffer, skip=0):
    faults = ShardFaults("short", index.shards, consumer, index.counts)
    return consumer_stream(index.shards, 8, consumer, consumers, 11, "short", buffer, skip, faults)


@pytest.mark.parametrize("consumers", [1, 2, 3, 5])
@pytest.mark.parametrize("buffer", [1, 2, 7, 40])
def test_seek_is_bit_identical_and_reads_little(awkward, monkeypatch, consumers, buffer):
    """Skips within and across epochs (one epoch is 37/C samples), remainder shards included."""
    index = stream_index(awkward, "data.short.urls")
    for consumer in range(consumers):
        full = list(itertools.islice(stream(index, consumer, consumers, buffer), 110))
        for skip in (1, 2, 6, 7, 8, 12, 19, 36, 37, 38, 74, 99):
            count = Decodes(monkeypatch)
            resumed = stream(index, consumer, consumers, buffer, skip)
            first = next(resumed)
            # a seek decodes the rebuilt buffer and one more sample, never the skipped ones
            assert count.samples <= max(buffer, 1) + 1, (skip, count.samples)
            rest = [first, *itertools.islice(resumed, 110 - skip - 1)]
            assert all(np.array_equal(a, b) for a, b in zip(full[skip:], rest, strict=True))
            monkeypatch.undo()


def test_seek_opens_only_late_shards(awkward, monkeypatch):
    index = stream_index(awkward, "data.short.urls")
    count = Decodes(monkeypatch)
    next(stream(index, 0, 1, 2, skip=37 * 3 + 30))  # epoch 3, sample 30: its 7th of 8 shards
    assert len(set(count.opened)) <= 3


def loader_batches(cfg, rank, world, workers, start, n, faults=()):
    ds = MixedLengthStream(
        cfg, list(PUBLISHED_SCHEDULE), rank, world, workers, 7, 5, start, None, faults
    )
    return list(itertools.islice(iter(DataLoader(ds, batch_size=None, num_workers=workers)), n))


@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (2, 1), (3, 2)])
def test_resumed_loader_equals_uninterrupted(tiny_shards, world, workers):
    """Ranks x workers consumers; cuts inside the first epoch of every stream and past it."""
    cfg = {
        "long": StreamConfig(tiny_shards["long"], 256, 1),
        "short": StreamConfig(tiny_shards["short"], 16, 2),
        "s2l": StreamConfig(tiny_shards["s2l"], 64, 1),
    }
    for rank in range(world):
        full = loader_batches(cfg, rank, world, workers, 0, 90)
        for cut in (3, 17, 50, 81):
            resumed = loader_batches(cfg, rank, world, workers, cut, 90 - cut)
            assert [b["index"] for b in resumed] == list(range(cut, 90))
            for a, b in zip(full[cut:], resumed, strict=True):
                assert a["kind"] == b["kind"] and torch.equal(a["input_ids"], b["input_ids"])


def test_without_index_resume_replays_and_says_so(tiny_shards, tmp_path, monkeypatch):
    shutil.copytree(tiny_shards["short"], tmp_path / "short")
    (tmp_path / "short" / "index.json").unlink()
    cfg = {"short": StreamConfig(str(tmp_path / "short"), 16, 2)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh start has nothing to say
        ds = MixedLengthStream(cfg, ["short"], 0, 1, 0, 7, 5)
    full = list(itertools.islice(iter(DataLoader(ds, batch_size=None)), 60))
    with pytest.warns(
        UserWarning, match=r"data\.short\.urls: sample counts unknown .* reads and drops"
    ):
        ds = MixedLengthStream(cfg, ["short"], 0, 1, 0, 7, 5, start=45)
    count = Decodes(monkeypatch)
    resumed = list(itertools.islice(iter(DataLoader(ds, batch_size=None)), 15))
    assert count.samples >= 45 * 2  # replayed: every skipped sample was decoded again
    for a, b in zip(full[45:], resumed, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])


def write_packed(path, seq_len, lengths, samples_per_shard, seed=0):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 1000, size=n) for n in lengths]
    write_shards(
        docs,
        path,
        seq_len,
        samples_per_shard=samples_per_shard,
        pack=True,
        vocab_size=1000,
        tokenizer_name="random",
        source="tests",
    )
    return str(path)


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("consumers, buffer", [(1, 7), (3, 2), (2, 40)])
def test_seek_with_document_starts_is_exact(tmp_path, monkeypatch, many, consumers, buffer):
    """Packed shards (a doc_starts member before each sample): ids and starts resume
    bit-identical; with over 128 documents in some samples the shards are walked."""
    lengths = np.random.default_rng(3).integers(1, 20, size=300).tolist()
    if many:
        lengths[100:100] = [1] * 300  # one-token documents: over 128 in a sample
    url = write_packed(tmp_path / "p", 256 if many else 16, lengths, 5)
    index = stream_index(url, "data.short.urls")
    seq_len = index.seq_len

    def stream(consumer, skip=0):
        faults = ShardFaults("short", index.shards, consumer, index.counts)
        return consumer_stream(
            index.shards, seq_len, consumer, consumers, 11, "short", buffer, skip, faults, True
        )

    every = [s for u in index.shards for s in read_shard(u, seq_len, doc_starts=True)]
    assert many == any(len(starts) > 128 for _, starts in every)
    total = index.total // consumers
    for consumer in range(consumers):
        full = list(itertools.islice(stream(consumer), 3 * total))
        assert all(s[1][0] == 0 for s in full)
        for skip in (1, total - 1, total + 3, 2 * total + 1):
            count = Decodes(monkeypatch)
            resumed = stream(consumer, skip)
            first = next(resumed)
            if not many:
                assert count.samples <= max(buffer, 1) + 1, (skip, count.samples)
            rest = [first, *itertools.islice(resumed, 3 * total - skip - 1)]
            for (a, sa), (b, sb) in zip(full[skip:], rest, strict=True):
                assert np.array_equal(a, b) and np.array_equal(sa, sb)
            monkeypatch.undo()
