"""Packed samples read with document masks: each document as if read alone (cp=1).

The cp>1 attention is checked against unsharded masked attention in
tests/integration/test_cp_attention.py; here the module's terms and validation.
"""

import pytest
import torch
from test_module import make_module

from longred_pl.forward import run_model
from longred_pl.losses import IGNORE_INDEX, shift_labels
from longred_pl.parallel.microbatch import Layout, rank_view
from longred_pl.positions import document_position_ids

LENGTHS = (5, 1, 7, 3)  # a document of one token, and one cut at the row's end


def _packed(generator_seed: int = 0):
    g = torch.Generator().manual_seed(generator_seed)
    docs = [torch.randint(0, 128, (n,), generator=g) for n in LENGTHS]
    ids = torch.cat(docs).unsqueeze(0)
    document_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)]).unsqueeze(0)
    return docs, ids, document_ids


def test_positions_restart_and_labels_never_cross_a_document():
    docs, ids, document_ids = _packed()
    pos = document_position_ids(document_ids)
    assert pos.tolist() == [[*range(5), 0, *range(7), *range(3)]]
    labels = shift_labels(ids, document_ids)
    starts = [0, 5, 6, 13]
    for start in starts[1:]:
        assert labels[0, start - 1] == IGNORE_INDEX  # no prediction across the boundary
    kept = (labels != IGNORE_INDEX).sum().item()
    assert kept == sum(n - 1 for n in LENGTHS)  # each document predicts its own next tokens
    assert torch.equal(shift_labels(ids)[0, :4], labels[0, :4])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_forward_reads_each_document_alone(tiny_llama, attn):
    """transformers reads restarting positions without a mask as packed sequences: checked."""
    from longred_pl.models import load_causal_lm, load_config

    model = load_causal_lm(tiny_llama, load_config(tiny_llama), attn, "float32")
    docs, ids, document_ids = _packed()
    view = rank_view(ids, None, Layout(), document_ids)
    with torch.no_grad():
        packed = run_model(model, ids, [2], view["position_ids"], packed=True)[0][2]
        alone = torch.cat([run_model(model, d.unsqueeze(0), [2])[0][2] for d in docs], dim=1)
        unmasked = run_model(model, ids, [2], view["position_ids"], packed=False)[0][2]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)  # an explicit mask would leak


def test_long_term_and_validation_equal_the_documents_read_alone(tiny_llama):
    """L_long of a packed row = the token-weighted mean of each document's own loss; the
    validation NLLs are each document's NLLs, none across a boundary."""
    module = make_module(tiny_llama)
    docs, ids, document_ids = _packed(1)
    batch = {"kind": "long", "input_ids": ids, "document_ids": document_ids}
    with torch.no_grad():
        packed = module.L_long(batch)
        nll_packed = module.token_nll(ids, documents=document_ids)
        nll_alone = [module.token_nll(d.unsqueeze(0)).reshape(-1) for d in docs if len(d) > 1]
    alone = torch.cat(nll_alone)
    torch.testing.assert_close(packed, alone.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nll_packed.reshape(-1), alone, rtol=1e-5, atol=1e-5)


def test_short_term_reads_each_document_alone_in_teacher_and_student(tiny_llama):
    """L_short of a packed row = the token-weighted mean of each document's own L_short."""
    module = make_module(tiny_llama, distill_layers=[1, 2])
    with torch.no_grad():
        for p in module.student.parameters():  # a student that differs from its teacher
            p.add_(0.05 * torch.randn_like(p))
    docs, ids, document_ids = _packed(2)
    with torch.no_grad():
        packed = module.L_short({"kind": "short", "input_ids": ids, "document_ids": document_ids})
        unmasked = module.L_short({"kind": "short", "input_ids": ids})
        alone = [module.L_short({"kind": "short", "input_ids": d.unsqueeze(0)}) for d in docs]
    weighted = sum(n * loss for n, loss in zip(LENGTHS, alone)) / sum(LENGTHS)
    torch.testing.assert_close(packed, weighted, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(packed, unmasked, rtol=1e-3)


def test_document_ids_are_cleared_when_the_stage_ends(tiny_llama):
    from longred_pl.parallel.document_attention import get_document_ids

    module = make_module(tiny_llama)
    _, ids, document_ids = _packed()
    module.training_step({"kind": "long", "input_ids": ids, "document_ids": document_ids}, 0)
    assert get_document_ids() is not None
    module.teardown("fit")
    assert get_document_ids() is None
