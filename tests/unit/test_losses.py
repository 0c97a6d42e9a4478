"""Objectives against hand-computed values and invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from longred_pl.losses import (
    IGNORE_INDEX,
    chunked_next_token_loss,
    hidden_cosine_loss,
    mean_cosine_distance,
    shift_labels,
)


def test_cosine_distance_hand_computed():
    # token 0: identical vectors (cos 1); token 1: orthogonal (cos 0); token 2: opposite (cos -1)
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    t = torch.tensor([[[3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]])
    # mean cos = (1 + 0 - 1) / 3 = 0 -> distance 1
    assert mean_cosine_distance(s, t).item() == pytest.approx(1.0)
    assert mean_cosine_distance(s[:, :2], t[:, :2]).item() == pytest.approx(0.5)


def test_cosine_loss_sums_selected_layers_only():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(2, 5, 4, generator=g) for _ in range(4)]
    b = [x.clone() for x in a]
    b[2] = -b[2]  # cos -1 everywhere at index 2 -> distance 2
    assert hidden_cosine_loss(a, b, [0, 1, 3]).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine_loss(a, b, [1, 2]).item() == pytest.approx(2.0, abs=1e-6)
    as_dict = {i: a[i] for i in (1, 2)}
    assert hidden_cosine_loss(as_dict, b, [1, 2]).item() == pytest.approx(2.0, abs=1e-6)


def test_cosine_loss_rejects_empty_and_mismatch():
    with pytest.raises(ValueError, match="at least one layer"):
        hidden_cosine_loss([torch.zeros(1, 1, 2)], [torch.zeros(1, 1, 2)], [])
    with pytest.raises(ValueError, match="differ in shape"):
        mean_cosine_distance(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))


def test_shift_labels():
    ids = torch.tensor([[5, 6, 7]])
    assert shift_labels(ids).tolist() == [[6, 7, IGNORE_INDEX]]


def test_ce_of_uniform_logits_is_log_vocab():
    hidden = torch.zeros(2, 6, 4)
    weight = torch.randn(10, 4)
    labels = shift_labels(torch.randint(0, 10, (2, 6)))
    loss = chunked_next_token_loss(hidden, weight, labels, chunk_size=3)
    assert loss.item() == pytest.approx(math.log(10), rel=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_chunked_equals_plain_value_and_grads(chunk):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 9, 8, generator=g, requires_grad=True)
    weight = torch.randn(20, 8, generator=g, requires_grad=True)
    ids = torch.randint(0, 20, (3, 9), generator=g)
    labels = shift_labels(ids)
    labels[0, 2] = IGNORE_INDEX
    ref = F.cross_entropy(
        (hidden @ weight.t()).reshape(-1, 20), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
    ref_grads = torch.autograd.grad(ref, [hidden, weight])
    out = chunked_next_token_loss(hidden, weight, labels, chunk_size=chunk)
    grads = torch.autograd.grad(out, [hidden, weight])
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("chunk", [0, 1, 4, 100])
def test_chunked_token_nll_equals_plain(chunk):
    from longred_pl.losses import chunked_token_nll

    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 9, 8, generator=g)
    weight = torch.randn(20, 8, generator=g)
    ids = torch.randint(0, 20, (2, 9), generator=g)
    plain = F.cross_entropy(
        (hidden[:, :-1] @ weight.t()).transpose(1, 2), ids[:, 1:], reduction="none"
    )
    torch.testing.assert_close(chunked_token_nll(hidden, weight, ids, chunk), plain)


def test_chunked_loss_mixed_dtypes_match_fp32():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 8, 16, generator=g)
    weight = torch.randn(32, 16, generator=g, requires_grad=True)
    labels = shift_labels(torch.randint(0, 32, (2, 8), generator=g))
    h16 = hidden.bfloat16().requires_grad_()
    out = chunked_next_token_loss(h16, weight, labels, chunk_size=5)
    out.backward()
    assert h16.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    ref_h = hidden.clone().requires_grad_()
    ref_w = weight.detach().clone().requires_grad_()
    ref = chunked_next_token_loss(ref_h, ref_w, labels, chunk_size=0)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(weight.grad, ref_w.grad, rtol=5e-2, atol=5e-3)


def test_chunked_loss_all_ignored_is_zero():
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    weight = torch.randn(10, 8)
    labels = torch.full((1, 4), IGNORE_INDEX)
    out = chunked_next_token_loss(hidden, weight, labels, chunk_size=2)
    out.backward()
    assert out.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0
