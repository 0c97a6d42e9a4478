"""MixedLengthDataModule over tiny shards: schedule, splitting, exact resume, safety."""

import io
import itertools
import pickle
import tarfile

import pytest
import torch
from torch.utils.data import DataLoader

from longred_pl.data.datamodule import MixedLengthDataModule, MixedLengthStream
from longred_pl.data.schedule import PUBLISHED_SCHEDULE
from longred_pl.data.shards import StreamConfig, expand_urls, read_shard


def streams(shards, b_long=1, b_short=2, b_s2l=1):
    return {
        "long": StreamConfig(shards["long"], 256, b_long),
        "short": StreamConfig(shards["short"], 16, b_short),
        "s2l": StreamConfig(shards["s2l"], 64, b_s2l),
    }


def take(dataset, n, workers=0):
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return list(itertools.islice(iter(loader), n))


def test_batches_follow_schedule(tiny_shards):
    ds = MixedLengthStream(streams(tiny_shards), list(PUBLISHED_SCHEDULE), 0, 1, 1, 0, 4)
    batches = take(ds, 32)
    assert [b["kind"] for b in batches] == list(PUBLISHED_SCHEDULE) * 2
    assert [b["index"] for b in batches] == list(range(32))
    shapes = {b["kind"]: tuple(b["input_ids"].shape) for b in batches}
    assert shapes == {"long": (1, 256), "short": (2, 16), "s2l": (1, 64)}
    assert all(b["input_ids"].dtype == torch.long for b in batches)


def _rows(batches, kind):
    return [tuple(r.tolist()) for b in batches if b["kind"] == kind for r in b["input_ids"]]


@pytest.mark.parametrize("world, workers", [(1, 2), (2, 1), (2, 2), (3, 2)])
def test_no_duplicates_across_ranks_and_workers(tiny_shards, world, workers):
    seen = []
    per_rank = 32 // world  # 64 short samples in batches of 2: 32 batches per epoch in all
    for rank in range(world):
        ds = MixedLengthStream(streams(tiny_shards), ["short"], rank, world, workers, 0, 1)
        seen += _rows(take(ds, per_rank, workers), "short")
    assert len(seen) == len(set(seen)) == 2 * per_rank * world


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cut", [5, 16, 23])
def test_resume_continues_exactly(tiny_shards, workers, cut):
    cfg = streams(tiny_shards)
    full = take(MixedLengthStream(cfg, list(PUBLISHED_SCHEDULE), 0, 1, workers, 7, 4), 60, workers)
    resumed = take(
        MixedLengthStream(cfg, list(PUBLISHED_SCHEDULE), 0, 1, workers, 7, 4, start=cut),
        60 - cut,
        workers,
    )
    assert [b["index"] for b in resumed] == list(range(cut, 60))
    for a, b in zip(full[cut:], resumed):
        assert a["kind"] == b["kind"]
        assert torch.equal(a["input_ids"], b["input_ids"])


def test_seed_changes_order(tiny_shards):
    a = take(MixedLengthStream(streams(tiny_shards), ["short"], 0, 1, 1, 0, 8), 4)
    b = take(MixedLengthStream(streams(tiny_shards), ["short"], 0, 1, 1, 1, 8), 4)
    assert any(not torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))


def test_datamodule_state_roundtrip_and_checks(tiny_shards):
    dm = MixedLengthDataModule(**{k: v for k, v in streams(tiny_shards).items()})
    dm.consumed = 37
    state = dm.state_dict()
    other = MixedLengthDataModule(**{k: v for k, v in streams(tiny_shards).items()})
    other.load_state_dict(state)
    assert other.consumed == 37
    assert other.train_dataloader().dataset.start == 37
    changed = MixedLengthDataModule(
        **{k: v for k, v in streams(tiny_shards).items()}, num_workers=3
    )
    with pytest.raises(ValueError, match="num_workers"):
        changed.load_state_dict(state)


def test_schedule_needs_its_streams(tiny_shards):
    cfg = streams(tiny_shards)
    with pytest.raises(ValueError, match="data.s2l is not set"):
        MixedLengthDataModule(long=cfg["long"], short=cfg["short"])
    MixedLengthDataModule(long=cfg["long"], schedule=["long"])


def test_zero_batch_size(tiny_shards):
    cfg = streams(tiny_shards, b_short=0)
    with pytest.raises(ValueError, match="data.short.batch_size"):
        MixedLengthDataModule(**cfg)


def test_urls_that_match_nothing(tmp_path):
    with pytest.raises(ValueError, match="matches no shard"):
        expand_urls(str(tmp_path / "missing-{000..003}.tar"))
    with pytest.raises(ValueError, match="matches no shard"):
        expand_urls(str(tmp_path))


def test_brace_and_glob_urls(tiny_shards):
    shards = expand_urls(tiny_shards["short"])
    assert len(shards) == 8
    assert expand_urls(tiny_shards["short"] + "/shard-{00000..00001}.tar") == shards[:2]
    assert expand_urls(tiny_shards["short"] + "/*.tar") == shards


def test_wrong_sample_length_is_named(tiny_shards):
    url = expand_urls(tiny_shards["short"])[0]
    with pytest.raises(ValueError, match="has 16 tokens but its stream's seq_len is 32"):
        next(read_shard(url, 32))


class Boom:
    def __reduce__(self):
        return (pytest.fail, ("unpickled!",))


def test_pickle_member_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        payload = pickle.dumps(Boom())
        info = tarfile.TarInfo("000000.input_ids.pkl")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="not a token sample"):
        next(read_shard(str(path), 4))


def test_capped_validation_spreads_over_the_stream(tiny_shards):
    from longred_pl.data.datamodule import FixedStream

    # 64 samples, 2 batches of 2 wanted: every 16th sample, i.e. samples 0, 16, 32, 48
    capped = list(FixedStream("short", StreamConfig(tiny_shards["short"], 16, 2), 0, 1, 2))
    everything = list(FixedStream("short", StreamConfig(tiny_shards["short"], 16, 64), 0, 1, None))
    rows = torch.cat([b["input_ids"] for b in capped])
    assert torch.equal(rows, everything[0]["input_ids"][[0, 16, 32, 48]])


@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("count", [3, 5, 7, 11])
def test_validation_ranks_run_equal_batches(tmp_path, count, indexed):
    """Before: 3 samples, batch 1, 2 ranks gave rank 0 two batches and rank 1 one (FSDP hangs)."""
    from conftest import write_tiny_shards

    from longred_pl.data.datamodule import FixedStream
    from longred_pl.errors import UserError

    path = write_tiny_shards(tmp_path / "val", 16, count, samples_per_shard=2, seed=count)
    if not indexed:  # the rule needs no counts: every rank reads the whole stream
        (tmp_path / "val" / "index.json").unlink()
    for world, batch, cap in itertools.product((1, 2, 3, 4), (1, 2, 3), (None, 1, 2)):
        cfg = StreamConfig(path, 16, batch)
        # a capped, indexed stream reads every stride-th sample; full rounds only, capped
        stride = max(1, count // (cap * batch * world)) if cap and indexed else 1
        rounds = len(range(0, count, stride)) // (world * batch)
        want = rounds if cap is None else min(cap, rounds)
        if want == 0:
            for rank in range(world):
                with pytest.raises(
                    UserError, match=r"data\.val_short: .* fill no validation batch"
                ):
                    list(FixedStream("short", cfg, rank, world, cap))
            continue
        per_rank = [list(FixedStream("short", cfg, rank, world, cap)) for rank in range(world)]
        assert [len(b) for b in per_rank] == [want] * world, (world, batch, cap)
        rows = [tuple(r.tolist()) for b in per_rank for x in b for r in x["input_ids"]]
        assert len(rows) == len(set(rows)) == want * world * batch
