"""The resume seek's shuffle replay on input numbers equals the real buffer shuffle."""

import itertools

import numpy as np
import pytest

from longred_pl.data.shards import _shuffled, index_url, shard_name, shuffle_state


@pytest.mark.parametrize("buffer", [2, 3, 8, 40])
@pytest.mark.parametrize("total", [0, 1, 5, 9, 41, 100])
def test_shuffle_state_continues_the_real_shuffle(total, buffer):
    """For every skip: the held numbers plus the rng continue into the same outputs."""
    full = list(_shuffled(iter(range(total)), buffer, np.random.default_rng(3)))
    assert sorted(full) == list(range(total))
    for skip in range(1, total + 1):
        rng = np.random.default_rng(3)
        held, draining = shuffle_state(total, buffer, rng, skip)
        if draining:
            rest = held
        else:
            pool = list(held)
            rest = list(_shuffled(iter(range(buffer + skip, total)), buffer, rng, pool))
        assert rest == full[skip:], (skip, draining)


def test_shard_names_and_index_locations():
    assert shard_name("/data/long/shard-00003.tar") == "shard-00003.tar"
    assert index_url("/data/long/shard-00003.tar") == "/data/long/index.json"
    pipe = "pipe:aws s3 cp s3://bucket/long/shard-00003.tar -"
    assert shard_name(pipe) == "shard-00003.tar"
    assert index_url(pipe) == "pipe:aws s3 cp s3://bucket/long/index.json -"
    assert shard_name("https://host/long/shard-00001.tar?sig=x") == "shard-00001.tar"
    assert index_url("pipe:cat") is None  # no shard name to replace: counts unknown
    assert list(itertools.islice(_shuffled(iter([]), 4, np.random.default_rng(0)), 1)) == []
