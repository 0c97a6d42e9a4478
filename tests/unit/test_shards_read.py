"""Reading a few samples of a shard: found by offset when regular, walked when not."""

import io
import tarfile

import numpy as np
import pytest
from conftest import write_tiny_shards

from longred_pl.data.shards import ShardFaults, expand_urls, read_shard


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


def pick(url, wanted, seq_len):
    local = {i: n for n, i in enumerate(wanted)}
    return list(ShardFaults("x").read(url, seq_len, 0, local, max(wanted) + 1))


def test_prepared_shard_jumps_to_the_samples(tmp_path, headers):
    url = expand_urls(write_tiny_shards(tmp_path / "s", 16, 64, samples_per_shard=64))[0]
    every = list(read_shard(url, 16))
    headers[0] = 0
    got = pick(url, [40, 50, 63], 16)
    assert all(np.array_equal(a, every[i]) for a, i in zip(got, [40, 50, 63], strict=True))
    assert headers[0] <= 20  # a few to open, two (pax + tar) per wanted sample; a walk: 128


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
