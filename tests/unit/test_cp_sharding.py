"""Head-tail sharding for context parallelism: layout, round trip, labels, refusals."""

from __future__ import annotations

import pytest
import torch

from longred_pl.errors import UserError
from longred_pl.losses import IGNORE_INDEX, shift_labels
from longred_pl.parallel.sharding import (
    check_cp_length,
    chunk_indices,
    cp_mean,
    cp_token_mean,
    shard_batch,
    shard_sequence,
    unshard_sequence,
)


def test_rank_holds_chunks_r_and_2cp_minus_1_minus_r():
    x_BT = torch.arange(16).view(1, 16)
    assert shard_sequence(x_BT, 0, 2).tolist() == [[0, 1, 2, 3, 12, 13, 14, 15]]
    assert shard_sequence(x_BT, 1, 2).tolist() == [[4, 5, 6, 7, 8, 9, 10, 11]]
    assert [chunk_indices(r, 4) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_causal_work_is_equal_on_every_rank(cp):
    """Query at position p attends to p + 1 keys: every rank sums to the same count."""
    pos_BT = torch.arange(8 * cp).view(1, -1)
    work = [int((shard_sequence(pos_BT, r, cp) + 1).sum()) for r in range(cp)]
    assert len(set(work)) == 1


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
@pytest.mark.parametrize("dim", [1, 2])
def test_shard_unshard_round_trip(cp, dim):
    x = torch.randn(2, 3 * 2 * cp, 3 * 2 * cp, 5)
    shards = [shard_sequence(x, r, cp, dim=dim) for r in range(cp)]
    assert all(s.shape[dim] == x.shape[dim] // cp for s in shards)
    assert torch.equal(unshard_sequence(shards, dim=dim), x)


def test_labels_are_shifted_before_sharding():
    ids_BT = torch.randint(0, 100, (3, 24))
    parts = [shard_batch(ids_BT, r, 3, with_labels=True) for r in range(3)]
    labels_BT = unshard_sequence([p["labels"] for p in parts])
    assert torch.equal(labels_BT, shift_labels(ids_BT))
    for rank, part in enumerate(parts):
        pos_BS = part["position_ids"]
        ids_next = torch.where(pos_BS + 1 < 24, pos_BS + 1, 0)
        keep = part["labels"] != IGNORE_INDEX
        # each kept label is the token after this position in the *whole* sequence
        assert torch.equal(part["labels"][keep], ids_BT.gather(1, ids_next)[keep])
        # the last token of each chunk keeps its label, except the global last one
        assert keep[:, 3].all() and keep[:, -1].all() == (rank != 0)
    total_ignored = sum(int((p["labels"] == IGNORE_INDEX).sum()) for p in parts)
    assert total_ignored == ids_BT.shape[0]


def test_positions_masks_and_skipped_ids():
    ids_BT = torch.arange(16).view(2, 8)
    part = shard_batch(ids_BT, 1, 2)
    assert part["position_ids"].tolist() == [[2, 3, 4, 5]] * 2  # default 0..T-1, sharded
    assert part["attention_mask"].dtype == ids_BT.dtype and bool(part["attention_mask"].all())
    skipped_BT = torch.tensor([[0, 1, 5, 9, 40, 41, 90, 91]] * 2)
    part = shard_batch(ids_BT, 0, 2, position_ids_BT=skipped_BT)
    assert part["position_ids"].tolist() == [[0, 1, 90, 91]] * 2
    assert "labels" not in part


@pytest.mark.parametrize(
    ("seq_len", "cp", "hint"), [(30, 2, "28 or 32"), (2, 2, "e.g. 4"), (100, 3, "96 or 102")]
)
def test_bad_lengths_are_refused_with_field_and_nearest_values(seq_len, cp, hint):
    with pytest.raises(UserError, match=r"^data\.long\.seq_len=") as err:
        check_cp_length(seq_len, cp, field="data.long.seq_len")
    assert hint in str(err.value)
    with pytest.raises(UserError, match="input_ids"):
        shard_batch(torch.zeros(1, seq_len, dtype=torch.long), 0, cp)


def test_valid_lengths_pass():
    for seq_len, cp in [(4, 2), (32768, 8), (8192, 1), (6, 3)]:
        check_cp_length(seq_len, cp)
    with pytest.raises(UserError, match="context_parallel_size"):
        check_cp_length(8, 0)


def test_reductions_are_identities_without_a_group():
    mean = torch.tensor(2.5, requires_grad=True)
    assert cp_token_mean(mean, 7, None) is mean
    assert cp_mean(mean, None) is mean
