"""Reading a few samples of a shard: found by offset when regular, walked when not;
packed shards' document starts (format_version 2) and the shards written before them."""

import io
import json
import tarfile

import numpy as np
import pytest
from conftest import write_tiny_shards

from longred_pl.data.index import stream_index
from longred_pl.data.prepare import write_shards
from longred_pl.data.shards import ShardFaults, expand_urls, read_shard
from longred_pl.errors import UserError


@pytest.fixture
def headers(monkeypatch):
    """Counts tar headers parsed (each member costs one, or two with a pax header)."""
    count = [0]
    real = tarfile.TarInfo.fromtarfile.__func__

    def counting(cls, tar):
        count[0] += 1
        return real(cls, tar)

    monkeypatch.setattr(tarfile.TarInfo, "fromtarfile", classmethod(counting))
    return count


def pick(url, wanted, seq_len, doc_starts=False):
    local = {i: n for n, i in enumerate(wanted)}
    return list(ShardFaults("x").read(url, seq_len, 0, local, max(wanted) + 1, doc_starts))


def test_prepared_shard_jumps_to_the_samples(tmp_path, headers):
    url = expand_urls(write_tiny_shards(tmp_path / "s", 16, 64, samples_per_shard=64))[0]
    every = list(read_shard(url, 16))
    headers[0] = 0
    got = pick(url, [40, 50, 63], 16)
    assert all(np.array_equal(a, every[i]) for a, i in zip(got, [40, 50, 63], strict=True))
    assert headers[0] <= 20  # a few to open, one per wanted sample; a walk: 64 and more


def test_irregular_shard_is_walked(tmp_path, headers):
    """A long name at sample 5 adds a pax header, one member's size: from there on a jump
    lands on the previous member's valid header, and only its key tells."""
    path = tmp_path / "odd.tar"
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 100, 8).astype("<u4") for _ in range(12)]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, sample in enumerate(samples):
            name = f"{i:03d}.input_ids.u32" if i != 5 else f"{i:03d}.input_ids.u32".rjust(120, "/")
            info = tarfile.TarInfo(name)
            info.size = sample.nbytes
            tar.addfile(info, io.BytesIO(sample.tobytes()))
    headers[0] = 0
    got = pick(str(path), [3, 7, 11], 8)
    assert all(np.array_equal(a, samples[i]) for a, i in zip(got, [3, 7, 11], strict=True))
    assert headers[0] >= 12  # walked


# --- document starts (format_version 2, issue 22) -----------------------------------------


def write_packed(path, seq_len, lengths, samples_per_shard=64, vocab=1000, seed=0):
    """Packed shards of random documents of these lengths, and each window's starts."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=n) for n in lengths]
    write_shards(
        docs,
        path,
        seq_len,
        samples_per_shard=samples_per_shard,
        pack=True,
        vocab_size=vocab,
        tokenizer_name="random",
        source="tests",
    )
    firsts = np.cumsum([0, *lengths])[:-1]
    starts = [
        [0, *(int(f) - w * seq_len for f in firsts if w * seq_len < f < (w + 1) * seq_len)]
        for w in range(sum(lengths) // seq_len)
    ]
    return str(path), starts


def as_old_format(src, dst):
    """The shards as written before format_version 2: no doc_starts members, index without
    `format_version` / `document_boundaries`."""
    dst.mkdir()
    index = json.loads((src / "index.json").read_text())
    del index["format_version"], index["document_boundaries"]
    (dst / "index.json").write_text(json.dumps(index))
    for shard in index["shards"]:
        with (
            tarfile.open(src / shard["name"]) as old,
            tarfile.open(dst / shard["name"], "w") as new,
        ):
            for member in old.getmembers():
                if member.name.endswith(".input_ids.u32"):
                    new.addfile(member, old.extractfile(member))
    return str(dst)


def test_packed_shard_reads_its_document_starts(tmp_path):
    lengths = np.random.default_rng(1).integers(1, 40, size=120).tolist()
    url, starts = write_packed(tmp_path / "p", 32, lengths, samples_per_shard=1000)
    plain = list(read_shard(expand_urls(url)[0], 32))
    paired = list(read_shard(expand_urls(url)[0], 32, doc_starts=True))
    assert all(isinstance(s, np.ndarray) for s in plain)  # old call sites: ids only
    assert len(plain) == len(paired) == len(starts)
    for ids, (same, first), expected in zip(plain, paired, starts, strict=True):
        assert np.array_equal(ids, same) and first.tolist() == expected


def test_packed_shard_jumps_to_the_samples_and_their_starts(tmp_path, headers):
    lengths = np.random.default_rng(2).integers(1, 40, size=200).tolist()
    url, starts = write_packed(tmp_path / "p", 16, lengths)
    url = expand_urls(url)[0]
    every = list(read_shard(url, 16))
    headers[0] = 0
    got = pick(url, [40, 50, 63], 16, doc_starts=True)
    assert [s.tolist() for _, s in got] == [starts[i] for i in (40, 50, 63)]
    assert all(np.array_equal(a, every[i]) for (a, _), i in zip(got, [40, 50, 63], strict=True))
    assert headers[0] <= 16  # a few to open, two per wanted sample; a walk: 128 and more
    assert all(isinstance(a, np.ndarray) for a in pick(url, [3, 9], 16))


def test_many_documents_in_a_sample_are_walked_exactly(tmp_path, headers):
    """Over 128 documents make a doc_starts member longer than one block: the stride breaks
    from that sample on, a check says so, and the shard is walked."""
    lengths = [40] * 20 + [1] * 300 + [40] * 20  # sample 3 holds 150+ documents
    url, starts = write_packed(tmp_path / "p", 256, lengths)
    url = expand_urls(url)[0]
    assert max(len(s) for s in starts) > 128
    every = list(read_shard(url, 256))
    headers[0] = 0
    wanted = [0, 2, 3, len(starts) - 1]
    got = pick(url, wanted, 256, doc_starts=True)
    assert [s.tolist() for _, s in got] == [starts[i] for i in wanted]
    assert all(np.array_equal(a, every[i]) for (a, _), i in zip(got, wanted, strict=True))
    assert headers[0] >= 2 * len(starts)  # walked


def test_old_format_shards_read_and_have_no_boundaries(tmp_path):
    url, _ = write_packed(tmp_path / "new", 16, [7, 30, 3, 12, 25, 9] * 4)
    old = as_old_format(tmp_path / "new", tmp_path / "old")
    new_samples = [s for u in expand_urls(url) for s in read_shard(u, 16)]
    old_samples = [s for u in expand_urls(old) for s in read_shard(u, 16)]
    assert all(np.array_equal(a, b) for a, b in zip(new_samples, old_samples, strict=True))
    assert stream_index(url, "data.short.urls").document_boundaries
    index = stream_index(old, "data.short.urls")
    assert not index.document_boundaries and not index.unpacked and index.complete
    with pytest.raises(UserError, match=r"no '000000000\.doc_starts\.u32' member .*--pack"):
        next(read_shard(expand_urls(old)[0], 16, doc_starts=True))


def test_unpacked_shards_have_no_boundaries(tmp_path):
    index = stream_index(write_tiny_shards(tmp_path / "s", 16, 8), "data.long.urls")
    assert not index.document_boundaries and index.unpacked


@pytest.mark.parametrize(
    "starts, why", [([0, 5, 3], "not strictly increasing"), ([2, 5], "not from 0"), ([0, 16], "")]
)
def test_bad_document_starts_are_refused(tmp_path, starts, why):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (
            ("000.doc_starts.u32", np.array(starts, "<u4").tobytes()),
            ("000.input_ids.u32", np.arange(16, dtype="<u4").tobytes()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert len(list(read_shard(str(path), 16))) == 1  # not asked for: not read
    with pytest.raises(UserError, match=rf"'000\.doc_starts\.u32' does not hold .*{why}"):
        list(read_shard(str(path), 16, doc_starts=True))
