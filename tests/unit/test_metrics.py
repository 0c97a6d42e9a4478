"""Evaluation metrics: hand-computed cases, invariants, and accumulation over updates."""

from __future__ import annotations

import math

import pytest
import torch

from longred_pl.eval.metrics import (
    AttentionKL,
    HiddenStateCosine,
    TokenPerplexity,
    attention_kl,
    next_token_nll,
    token_cosine,
)


def _causal_softmax(scores_BHQK: torch.Tensor) -> torch.Tensor:
    q, k = scores_BHQK.shape[-2:]
    mask = torch.ones(q, k, dtype=torch.bool).tril()
    return scores_BHQK.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def test_attention_kl_of_identical_causal_distributions_is_zero():
    gen = torch.Generator().manual_seed(0)
    p = _causal_softmax(torch.randn(2, 3, 5, 5, generator=gen) * 4)
    kl = attention_kl(p, p.clone())
    assert kl.shape == (2, 3, 5)
    assert torch.isfinite(kl).all()
    assert kl.abs().max() < 1e-6


def test_attention_kl_two_element_case_by_hand():
    teacher = torch.tensor([0.75, 0.25]).view(1, 1, 1, 2)
    student = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert attention_kl(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    # KL(teacher || student) is not symmetric: swapping the arguments changes the value.
    swapped = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert attention_kl(teacher, student).item() == pytest.approx(swapped, rel=1e-6)


def test_attention_kl_is_finite_when_the_student_puts_zero_mass_on_a_teacher_key():
    teacher = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    student = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    kl = attention_kl(student, teacher)
    assert torch.isfinite(kl).all() and kl.item() > 5.0


def test_attention_kl_runs_in_fp32_for_bf16_inputs():
    p = _causal_softmax(torch.randn(1, 2, 4, 4)).bfloat16()
    assert attention_kl(p, p).dtype == torch.float32


def test_cosine_of_identical_states_is_one_and_of_opposite_is_minus_one():
    h = torch.randn(2, 7, 16)
    assert torch.allclose(token_cosine(h, h.clone()), torch.ones(2, 7), atol=1e-6)
    assert torch.allclose(token_cosine(-h, h), -torch.ones(2, 7), atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        token_cosine(h, h[:, :3])


def test_perplexity_of_uniform_logits_is_the_vocab_size():
    vocab = 37
    ids = torch.randint(0, vocab, (3, 11))
    metric = TokenPerplexity()
    metric.update(next_token_nll(torch.zeros(3, 11, vocab), ids))
    assert metric.compute().item() == pytest.approx(vocab, rel=1e-5)
    assert int(metric.count) == 3 * 10
    assert metric.compute_loss().item() == pytest.approx(math.log(vocab), rel=1e-6)


def test_next_token_nll_reads_logit_t_for_token_t_plus_one():
    ids = torch.tensor([[0, 1, 2]])
    logits = torch.full((1, 3, 3), -30.0)
    logits[0, 0, 1] = 30.0  # position 0 predicts token 1 (correct)
    logits[0, 1, 0] = 30.0  # position 1 predicts token 0 (wrong; 2 is next)
    nll = next_token_nll(logits, ids)
    assert nll.shape == (1, 2)
    assert nll[0, 0] < 1e-6 and nll[0, 1] > 50


def test_accumulating_updates_equals_one_big_update():
    gen = torch.Generator().manual_seed(1)
    nll = torch.rand(4, 9, generator=gen) * 3
    student = [torch.randn(4, 9, 8, generator=gen) for _ in range(3)]
    teacher = [s + 0.5 * torch.randn(4, 9, 8, generator=gen) for s in student]
    att_s = [_causal_softmax(torch.randn(4, 2, 9, 9, generator=gen)) for _ in range(2)]
    att_t = [_causal_softmax(torch.randn(4, 2, 9, 9, generator=gen)) for _ in range(2)]

    whole = (TokenPerplexity(), HiddenStateCosine(3), AttentionKL(2))
    whole[0].update(nll)
    whole[1].update(student, teacher)
    whole[2].update(att_s, att_t)
    parts = (TokenPerplexity(), HiddenStateCosine(3), AttentionKL(2))
    for rows in (slice(0, 1), slice(1, 4)):
        parts[0].update(nll[rows])
        parts[1].update([s[rows] for s in student], [t[rows] for t in teacher])
        parts[2].update({i: a[rows] for i, a in enumerate(att_s)}, [a[rows] for a in att_t])
    for one, many in zip(whole, parts, strict=True):
        assert torch.allclose(one.compute(), many.compute(), rtol=1e-6)

    expected_cos = torch.stack(
        [token_cosine(s, t).mean() for s, t in zip(student, teacher, strict=True)]
    )
    assert torch.allclose(whole[1].compute(), expected_cos, atol=1e-6)
    expected_kl = torch.stack(
        [attention_kl(s, t).mean() for s, t in zip(att_s, att_t, strict=True)]
    )
    assert torch.allclose(whole[2].compute(), expected_kl, atol=1e-6)
    assert whole[0].compute().item() == pytest.approx(
        math.exp(nll.double().mean().item()), rel=1e-6
    )


def test_metric_states_reduce_by_sum_for_distributed_sync():
    for metric in (TokenPerplexity(), HiddenStateCosine(2), AttentionKL(2)):
        assert metric._reductions and all(
            fn is not None and fn.__name__.endswith("sum") for fn in metric._reductions.values()
        )


def test_wrong_number_of_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 3 student hidden states"):
        HiddenStateCosine(3).update([torch.zeros(1, 2, 4)] * 2, [torch.zeros(1, 2, 4)] * 3)
