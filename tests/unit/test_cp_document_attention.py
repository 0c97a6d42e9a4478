"""Document-masked attention (issue 22) in one process: the kernel, its CP sharding
simulated rank by rank, the cp=1 SDPA path, the dispatch of ``longred_ring``, the state and
its refusals. The real multi-process runs (gloo, 2 and 4 ranks) are in
``tests/integration/test_cp_attention.py``.

Reference: eager softmax over the whole sequence with an explicit boolean mask
``same document AND key <= query``. Measured differences are float rounding (~1e-7 in fp32).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from longred_pl.errors import UserError
from longred_pl.parallel import document_attention as da
from longred_pl.parallel.sharding import shard_sequence, unshard_sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "integration"))
import cp_cases  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _no_document_ids_left():
    """The ids are process-wide: a failing test must not leave them set for the next."""
    yield
    da.set_document_ids(None)


def eager_reference(q, k, v, w, ids_BT, scale, documents=True):
    """Whole-sequence masked attention by eager softmax: out and q/k/v gradients."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    kr, vr = (x.repeat_interleave(g, dim=1) for x in (k, v))
    t = q.shape[2]
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None]
    if documents:
        allowed = allowed & (ids_BT[:, :, None] == ids_BT[:, None, :])
    scores = (q @ kr.transpose(-1, -2)) * scale
    out = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ vr
    (out * w).sum().backward()
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def simulate(q, k, v, w, ids_BT, cp, scale, block):
    """The all-gather kernel of every rank of a cp group, in one process: the gathered K/V
    is the rank-major stack of the shards, and the reduce-scatter a sum over ranks."""
    documents = da.DocumentIds.of(ids_BT)
    shards = [[shard_sequence(x, r, cp, dim=2) for r in range(cp)] for x in (q, k, v, w)]
    kv = torch.stack([torch.stack([shards[1][r], shards[2][r]]) for r in range(cp)])
    outs, dqs, dkv = [], [], torch.zeros(kv.shape)
    for r in range(cp):
        segments = da.rank_segments(r, cp, q.shape[2])
        q_r, w_r = shards[0][r], shards[3][r]
        out, lse = da._local_forward(q_r, kv, documents, segments, scale, block)
        dq, dkv_r = da._local_backward(w_r, q_r, kv, out, lse, documents, segments, scale, block)
        outs.append(out)
        dqs.append(dq)
        dkv += dkv_r
    return {
        "out": unshard_sequence(outs, dim=2),
        "dq": unshard_sequence(dqs, dim=2),
        "dk": unshard_sequence(list(dkv[:, 0]), dim=2),
        "dv": unshard_sequence(list(dkv[:, 1]), dim=2),
    }


def test_the_document_condition_matters_for_these_inputs():
    q, k, v, w = cp_cases.document_attention_inputs()
    ids = cp_cases.document_ids()
    masked = eager_reference(q, k, v, w, ids, cp_cases.SCALE)
    causal = eager_reference(q, k, v, w, ids, cp_cases.SCALE, documents=False)
    for name in ("out", "dq", "dk", "dv"):
        assert (masked[name][:2] - causal[name][:2]).abs().max() > 1e-1, name
        torch.testing.assert_close(masked[name][2], causal[name][2])  # row 2: one document


@pytest.mark.parametrize("cp", [1, 2, 4])
@pytest.mark.parametrize("block", [cp_cases.DOC_BLOCK, 5, da.BLOCK_SIZE])
def test_sharded_kernel_matches_unsharded_masked_attention(cp, block):
    q, k, v, w = cp_cases.document_attention_inputs()
    ids = cp_cases.document_ids()
    want = eager_reference(q, k, v, w, ids, cp_cases.SCALE)
    got = simulate(q, k, v, w, ids, cp, cp_cases.SCALE, block)
    for name in ("out", "dq", "dk", "dv"):
        torch.testing.assert_close(got[name], want[name], **TOL, msg=name)


def test_document_attention_without_a_group_is_the_whole_sequence():
    q, k, v, w = cp_cases.document_attention_inputs()
    ids = cp_cases.document_ids()
    want = eager_reference(q, k, v, w, ids, cp_cases.SCALE)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out = da.cp_document_attention(*x, ids, None, cp_cases.SCALE, block_size=cp_cases.DOC_BLOCK)
    (out * w).sum().backward()
    for name, got in zip(("out", "dq", "dk", "dv"), (out, *(t.grad for t in x)), strict=True):
        torch.testing.assert_close(got.detach(), want[name], **TOL, msg=name)


@pytest.mark.parametrize("block", [None, cp_cases.DOC_BLOCK, 7])
def test_document_sdpa_matches_eager_and_full_mask_sdpa(block):
    q, k, v, w = cp_cases.document_attention_inputs()
    ids = cp_cases.document_ids()
    want = eager_reference(q, k, v, w, ids, cp_cases.SCALE)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out = da.document_sdpa(*x, ids, cp_cases.SCALE, block_size=block)
    (out * w).sum().backward()
    for name, got in zip(("out", "dq", "dk", "dv"), (out, *(t.grad for t in x)), strict=True):
        torch.testing.assert_close(got.detach(), want[name], **TOL, msg=name)
    mask = torch.ones(48, 48, dtype=torch.bool).tril() & (ids[:, :, None] == ids[:, None, :])
    full = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask[:, None], scale=cp_cases.SCALE, enable_gqa=True
    )
    torch.testing.assert_close(out.detach(), full, **TOL)


def test_key_blocks_stay_within_chunks_and_map_to_rank_major_buffers():
    assert list(da._key_blocks(3, 20, 4, 6)) == [
        (3, 6),
        (6, 10),
        (10, 12),
        (12, 16),
        (16, 18),
        (18, 20),
    ]
    # cp=2, chunks of 6: chunk 0 -> rank 0 [0:6], 1 -> rank 1 [0:6], 2 -> rank 1 [6:12], 3 -> rank 0 [6:12]
    assert da._rank_major(2, 6, 6, 2) == (0, slice(2, 6))
    assert da._rank_major(7, 9, 6, 2) == (1, slice(1, 3))
    assert da._rank_major(12, 18, 6, 2) == (1, slice(6, 12))
    assert da._rank_major(20, 24, 6, 2) == (0, slice(8, 12))


def test_document_starts_and_first_keys():
    docs = da.DocumentIds.of(torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 1]]))
    assert docs.starts_BT.tolist() == [[0, 0, 2, 2, 2, 5], [0, 1, 1, 1, 1, 1]]
    assert docs.first_key([0, 3, 5]) == [0, 1, 1]  # the smallest over the batch


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "document_ids" in message
    return message


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        (torch.tensor([[0, 0, 1, 0]]), "non-decreasing"),
        (torch.tensor([[0.0, 1.0]]), ".long()"),
        (torch.tensor([0, 0, 1]), "[batch, seq_len]"),
        ([[0, 1]], "[batch, seq_len]"),
    ],
)
def test_bad_document_ids_are_refused_on_one_line(ids, says):
    with pytest.raises(UserError) as err:
        da.set_document_ids(ids)
    assert says in _one_line(err)
    assert da.get_document_ids() is None


def test_ids_not_of_the_whole_sequence_are_refused():
    q, k, v, _ = cp_cases.document_attention_inputs()
    ids = cp_cases.document_ids()
    with pytest.raises(UserError) as err:
        da.document_sdpa(q, k, v, ids[:, :24])
    assert "before sharding" in _one_line(err)
    with pytest.raises(UserError) as err:  # a shard of cp=2 taken for the whole sequence
        da.cp_document_attention(q[:, :, :24], k[:, :, :24], v[:, :, :24], ids, None)
    _one_line(err)
    with pytest.raises(UserError) as err:  # decoding with a cache
        da.document_sdpa(q[:, :, -1:], k, v, ids)
    assert "set_document_ids(None)" in _one_line(err)


def test_state_is_process_wide_and_the_context_restores_it():
    ids = cp_cases.document_ids()
    assert da.get_document_ids() is None
    with da.document_mask(ids):
        assert torch.equal(da.get_document_ids().ids_BT, ids)
        with da.document_mask(None):
            assert da.get_document_ids() is None
        assert da.get_document_ids() is not None
    assert da.get_document_ids() is None
    da.set_document_ids(ids)
    try:
        assert torch.equal(da.get_document_ids().ids_BT, ids)  # holds until replaced
    finally:
        da.set_document_ids(None)


class _Attn(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2  # read by transformers' sdpa function (GQA)


def test_longred_ring_dispatches_on_document_ids_outside_cp():
    from longred_pl.parallel.ring_attention import ring_attention_forward, ring_mask

    q, k, v, _ = cp_cases.document_attention_inputs()
    ids = cp_cases.document_ids()
    plain, _ = ring_attention_forward(_Attn(), q, k, v, None, scaling=cp_cases.SCALE)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(plain, want.transpose(1, 2))
    with da.document_mask(ids):
        junk = torch.zeros(3, 1, 48, 48, dtype=torch.bool)  # any mask given is ignored
        got, _ = ring_attention_forward(_Attn(), q, k, v, junk, scaling=cp_cases.SCALE)
        assert ring_mask(batch_size=3, cache_position=torch.arange(48), kv_length=48) is None
    masked = da.document_sdpa(q, k, v, ids, cp_cases.SCALE)
    assert torch.equal(got, masked.transpose(1, 2))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_llama_with_document_ids_equals_transformers_packed_sequences(tiny_llama, checkpointing):
    """cp=1: ``longred_ring`` with document ids set computes what sdpa computes when
    transformers reads restarting position ids as packed sequences (its own masks); the
    gradients too, with gradient checkpointing recomputing attention after the forward."""
    import longred_pl.parallel  # noqa: F401  (registers longred_ring)
    from longred_pl.models import load_causal_lm, load_config

    ids_BT, docs_BT, w_BTD = cp_cases.document_llama_inputs()
    pos_BT = cp_cases.restarting_positions(docs_BT)
    results = {}
    for impl in ("sdpa", "longred_ring"):
        model = load_causal_lm(tiny_llama, load_config(tiny_llama), impl).train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        da.set_document_ids(docs_BT if impl == "longred_ring" else None)
        try:
            out = model.model(input_ids=ids_BT, position_ids=pos_BT, use_cache=False)
            hidden = out.last_hidden_state
            (hidden * w_BTD).sum().backward()
        finally:
            da.set_document_ids(None)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results[impl] = hidden.detach(), grads
    (h_ref, g_ref), (h_got, g_got) = results["sdpa"], results["longred_ring"]
    torch.testing.assert_close(h_got, h_ref, **TOL)
    assert g_got.keys() == g_ref.keys() and len(g_ref) > 5
    for name, grad in g_ref.items():  # measured: <= 4e-7 of the largest entry
        assert (g_got[name] - grad).abs().max() <= 5e-6 * grad.abs().max(), name
