"""MixedLengthDataModule over tiny shards: schedule, splitting, exact resume, safety,
document masks."""

import dataclasses
import io
import itertools
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from longred_pl.data.datamodule import MixedLengthDataModule, MixedLengthStream
from longred_pl.data.prepare import write_shards
from longred_pl.data.schedule import PUBLISHED_SCHEDULE
from longred_pl.data.shards import StreamConfig, expand_urls, read_shard
from longred_pl.errors import UserError


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


# --- document masks (issue 22) -------------------------------------------------------------


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Packed shards (short 16, s2l 64, val 64 tokens) of random documents of 1-11 tokens,
    the short ones again as written before format_version 2, and every sample's starts."""
    root = tmp_path_factory.mktemp("packed")
    out = {}
    for name, seq_len, docs, seed in (
        ("short", 16, 300, 1),
        ("s2l", 64, 300, 2),
        ("val", 64, 200, 3),
    ):
        rng = np.random.default_rng(seed)
        write_shards(
            [rng.integers(0, 1000, size=n) for n in rng.integers(1, 12, size=docs)],
            root / name,
            seq_len,
            samples_per_shard=8,
            pack=True,
            vocab_size=1000,
            tokenizer_name="random",
            source="tests",
        )
        out[name] = str(root / name)
    old = root / "old"
    old.mkdir()
    index = json.loads((root / "short" / "index.json").read_text())
    del index["format_version"], index["document_boundaries"]
    (old / "index.json").write_text(json.dumps(index))
    for shard in index["shards"]:
        src, dst = root / "short" / shard["name"], old / shard["name"]
        with tarfile.open(src) as src, tarfile.open(dst, "w") as dst:
            for member in src.getmembers():
                if member.name.endswith(".input_ids.u32"):
                    dst.addfile(member, src.extractfile(member))
    out["old"] = str(old)
    out["starts"] = {
        tuple(ids.tolist()): starts.tolist()
        for name, seq_len in (("short", 16), ("val", 64))
        for url in expand_urls(out[name])
        for ids, starts in read_shard(url, seq_len, doc_starts=True)
    }
    return out


def check_document_ids(batch, starts):
    """`document_ids`: LongTensor like `input_ids`, each row counting documents from 0 at
    its starts, so non-decreasing."""
    ids, docs = batch["input_ids"], batch["document_ids"]
    assert docs.dtype == torch.long and docs.shape == ids.shape
    for row, doc in zip(ids, docs, strict=True):
        first = starts[tuple(row.tolist())]
        assert doc[0] == 0 and bool((doc.diff() >= 0).all())
        assert [0, *(torch.nonzero(doc.diff()).flatten() + 1).tolist()] == first
        assert doc[-1] == len(first) - 1


def mixed(tiny_shards, packed, **masks):
    cfg = {
        "long": StreamConfig(tiny_shards["long"], 256, 1),
        "short": StreamConfig(packed["short"], 16, 2),
        "s2l": StreamConfig(packed["s2l"], 64, 1),
    }
    return {k: dataclasses.replace(c, document_mask=masks.get(k)) for k, c in cfg.items()}


def test_packed_batches_carry_document_ids(tiny_shards, packed):
    ds = MixedLengthStream(mixed(tiny_shards, packed), list(PUBLISHED_SCHEDULE), 0, 1, 1, 0, 4)
    batches = take(ds, 32)
    plain = {"kind", "input_ids", "index", "bad_shards", "faults"}
    for batch in batches:
        if batch["kind"] == "short":  # packed: on by default
            assert set(batch) == plain | {"document_ids"}
            check_document_ids(batch, packed["starts"])
        else:  # long: unpacked shards; s2l: packed, never masked
            assert set(batch) == plain
    assert any(int(b["document_ids"].max()) > 0 for b in batches if b["kind"] == "short")
    off = MixedLengthStream(mixed(tiny_shards, packed, short=False), ["short"], 0, 1, 1, 0, 4)
    assert all("document_ids" not in b for b in take(off, 4))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly_with_document_ids(tiny_shards, packed, workers):
    cfg, schedule = mixed(tiny_shards, packed), list(PUBLISHED_SCHEDULE)
    full = take(MixedLengthStream(cfg, schedule, 0, 1, workers, 7, 4), 90, workers)
    for cut in (5, 41):
        ds = MixedLengthStream(cfg, schedule, 0, 1, workers, 7, 4, start=cut)
        for a, b in zip(full[cut:], take(ds, 90 - cut, workers), strict=True):
            assert a.keys() == b.keys() and torch.equal(a["input_ids"], b["input_ids"])
            if "document_ids" in a:
                assert torch.equal(a["document_ids"], b["document_ids"])


def test_document_mask_settings_are_said_and_checked(tiny_shards, packed, capsys):
    cfg = mixed(tiny_shards, packed)
    dm = MixedLengthDataModule(
        **cfg,
        val_short=StreamConfig(packed["val"], 64, 2),
        val_long=StreamConfig(tiny_shards["long"], 256, 1, document_mask=False),
    )
    assert dm.document_masks == {
        "long": False,
        "short": True,
        "s2l": False,
        "val_short": True,
        "val_long": False,
    }
    dm.setup("fit")
    assert capsys.readouterr().err.splitlines() == [
        "[longred] data.long: document masks off (shards record no document boundaries: "
        "written with --no-pack: one document per sample)",
        "[longred] data.short: document masks on (shards record document boundaries)",
        "[longred] data.s2l: document masks off for s2l (the published recipe reads an s2l "
        "sample at skipped positions as one text)",
        "[longred] data.val_short: document masks on (shards record document boundaries)",
        "[longred] data.val_long: document masks off (data.val_long.document_mask: false)",
    ]
    old = StreamConfig(packed["old"], 16, 2)
    dm = MixedLengthDataModule(short=old, schedule=["short"])
    assert dm.document_masks == {"short": False}
    assert "written before format_version 2" in dm.document_mask_lines[0]
    refusals = {
        "short": (
            dataclasses.replace(old, document_mask=True),
            r"^data\.short\.document_mask: true, but the shards of data\.short\.urls record no "
            r"document boundaries \(written before format_version 2.*\); re-run `longred "
            r"prepare --pack` for this stream, or set data\.short\.document_mask to false$",
        ),
        "long": (
            dataclasses.replace(cfg["long"], document_mask=True),
            r"^data\.long\.document_mask: true, .*\(written with --no-pack: one document per "
            r"sample\); re-run `longred prepare --pack`",
        ),
        "s2l": (
            dataclasses.replace(cfg["s2l"], document_mask=True),
            r"^data\.s2l\.document_mask: true is not supported: document masks are not applied "
            r"to the s2l stream \(the published recipe .*\); set data\.s2l\.document_mask to false",
        ),
    }
    for kind, (stream, message) in refusals.items():
        with pytest.raises(UserError, match=message) as refused:
            MixedLengthDataModule(**{kind: stream}, schedule=[kind])
        assert "\n" not in str(refused.value)
    with pytest.raises(UserError, match=r"^data\.val_short\.document_mask: true, but"):
        MixedLengthDataModule(
            **cfg, val_short=StreamConfig(packed["old"], 16, 2, document_mask=True)
        )


def test_validation_batches_carry_document_ids(packed):
    from longred_pl.data.datamodule import FixedStream

    masked = list(FixedStream("short", StreamConfig(packed["val"], 64, 2), 0, 1, None))
    assert len(masked) > 2
    for batch in masked:
        assert set(batch) == {"kind", "input_ids", "document_ids"}
        check_document_ids(batch, packed["starts"])
    cfg = StreamConfig(packed["val"], 64, 2, document_mask=False)
    plain = list(FixedStream("short", cfg, 0, 1, None))
    assert [set(b) for b in plain] == [{"kind", "input_ids"}] * len(masked)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(masked, plain))
