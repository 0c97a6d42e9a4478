"""Probes: an oracle scores 1, a random tiny Llama scores near chance, buckets add up."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from longred_pl.errors import UserError
from longred_pl.eval.evaluator import default_copy_distances
from longred_pl.eval.probes import (
    PASSKEY_FILLER,
    bucket_edges,
    copy_task_ids,
    greedy_decode,
    passkey_min_length,
    passkey_probe,
    passkey_prompt,
    position_bucket_perplexity,
    repeat_copy_probe,
    token_nll,
)
from longred_pl.eval.report import at_chance

VOCAB = 128
SPAN = 8


class LagOracle(nn.Module):
    """Predicts at position ``p`` the token at ``p + 1 - (span + d)``: a perfect copier.

    A repeat-copy sequence of ``T = 2 * span + d`` tokens puts each second-copy token
    ``span + d = T - span`` positions after its original.
    """

    def __init__(self, vocab: int, span: int) -> None:
        super().__init__()
        self.vocab, self.span = vocab, span
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        lag = length - self.span
        source = (torch.arange(length) + 1 - lag).clamp(min=0)
        logits = torch.zeros(batch, length, self.vocab)
        logits.scatter_(2, input_ids[:, source].unsqueeze(-1), 1.0)
        return logits


class InductionOracle(nn.Module):
    """At the last position, predicts what followed the longest earlier match of the suffix."""

    def __init__(self, vocab: int, context: int = 24) -> None:
        super().__init__()
        self.vocab, self.context = vocab, context

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids[0].tolist()
        logits = torch.zeros(1, len(ids), self.vocab)
        for m in range(min(self.context, len(ids) - 1), 0, -1):
            suffix = ids[-m:]
            starts = [s for s in range(len(ids) - m) if ids[s : s + m] == suffix]
            if starts:
                logits[0, -1, ids[starts[-1] + m]] = 1.0
                break
        return logits


class CharTokenizer:
    """Character-level tokenizer with the two methods ``passkey_probe`` uses."""

    bos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def tiny_random_llama(vocab: int = VOCAB, window: int = 256) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_copy_task_ids_layout():
    ids = copy_task_ids(3, SPAN, 5, VOCAB, torch.Generator().manual_seed(0), bos_token_id=1)
    assert ids.shape == (3, 1 + 2 * SPAN + 5)
    assert (ids[:, 0] == 1).all()
    assert torch.equal(ids[:, 1 : 1 + SPAN], ids[:, -SPAN:])


def test_oracle_copier_scores_one_at_every_distance():
    gen = torch.Generator().manual_seed(0)
    scores = repeat_copy_probe(LagOracle(VOCAB, SPAN), VOCAB, [0, 3, 40], SPAN, 4, gen)
    assert list(scores) == [0, 3, 40]
    assert all(acc == 1.0 for acc in scores.values())


def test_a_wrong_lag_scores_near_chance():
    class OffByOne(LagOracle):
        def forward(self, input_ids):
            return super().forward(input_ids).roll(1, dims=1)

    gen = torch.Generator().manual_seed(0)
    scores = repeat_copy_probe(OffByOne(VOCAB, SPAN), VOCAB, [16], SPAN, 16, gen)
    assert scores[16] < 0.1


def test_random_tiny_llama_scores_near_chance():
    gen = torch.Generator().manual_seed(0)
    scores = repeat_copy_probe(tiny_random_llama(), VOCAB, [0, 32, 128], SPAN, 8, gen, batch_size=3)
    assert all(0.0 <= acc < 0.1 for acc in scores.values())


def test_probe_is_reproducible_with_a_generator():
    model = tiny_random_llama()
    first = repeat_copy_probe(model, VOCAB, [4], SPAN, 4, torch.Generator().manual_seed(3))
    again = repeat_copy_probe(model, VOCAB, [4], SPAN, 4, torch.Generator().manual_seed(3))
    assert first == again


def test_passkey_oracle_retrieves_the_key_and_a_random_model_does_not():
    tok = CharTokenizer()
    prompt = passkey_prompt(tok, 600, 0.5, 12345)
    assert abs(len(tok.encode(prompt)) - 600) < 100
    assert prompt.endswith("What is the pass key? The pass key is")
    gen = torch.Generator().manual_seed(0)
    scores = passkey_probe(
        InductionOracle(256), tok, [300, 600], [0.0, 1.0], 2, gen, max_new_tokens=7
    )
    assert scores == {300: {0.0: 1.0, 1.0: 1.0}, 600: {0.0: 1.0, 1.0: 1.0}}
    random_scores = passkey_probe(tiny_random_llama(vocab=256), tok, [300], [0.5], 2, gen)
    assert random_scores == {300: {0.5: 0.0}}


def test_greedy_decode_with_cache_matches_recomputation():
    model = tiny_random_llama()
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    cached = greedy_decode(model, ids, 5)
    seq = ids
    for _ in range(5):
        nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert cached == seq[0, 12:].tolist()


def test_uniform_model_has_vocab_perplexity_in_every_bucket():
    class Uniform(nn.Module):
        def forward(self, input_ids):
            return torch.zeros(*input_ids.shape, VOCAB)

    ids = torch.randint(0, VOCAB, (2, 33))
    rows = position_bucket_perplexity(Uniform(), [ids[:1], ids[1:]], buckets=4)
    assert [(r["start"], r["end"]) for r in rows] == [(0, 8), (8, 16), (16, 25), (25, 33)]
    assert [r["tokens"] for r in rows] == [2 * 7, 2 * 8, 2 * 9, 2 * 8]
    assert all(r["ppl"] == pytest.approx(VOCAB, rel=1e-5) for r in rows)


def test_bucket_losses_match_per_token_nll_and_chunking():
    model = tiny_random_llama()
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    full = token_nll(model, ids, chunk_size=0)
    chunked = token_nll(model, ids, chunk_size=7)
    logits_nll = torch.nn.functional.cross_entropy(
        model(input_ids=ids).logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none"
    )
    assert torch.allclose(full, chunked, atol=1e-5)
    assert torch.allclose(full, logits_nll, atol=1e-5)
    rows = position_bucket_perplexity(model, ids, buckets=[1, 10, 40], chunk_size=7)
    assert rows[0]["loss"] == pytest.approx(full[:, 0:9].mean().item(), rel=1e-5)
    assert rows[1]["loss"] == pytest.approx(full[:, 9:].mean().item(), rel=1e-5)
    assert rows[1]["ppl"] == pytest.approx(math.exp(rows[1]["loss"]), rel=1e-6)


def test_bad_bucket_edges_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        bucket_edges([0, 5, 5], 10)
    with pytest.raises(ValueError, match="buckets must be in"):
        bucket_edges(20, 10)


class PairTokenizer(CharTokenizer):
    """Characters, but ". T" and "e " are one token each, and a BOS (id 1) is prepended.

    Counts are not additive (pieces merge across sentence boundaries) and special tokens
    change the length: what a real tokenizer does to a prompt built from counted pieces.
    """

    PAIRS = (". T", "e ")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids, i = ([1] if add_special_tokens else []), 0
        while i < len(text):
            pair = next((p for p in self.PAIRS if text.startswith(p, i)), None)
            ids.append(0 if pair else ord(text[i]))
            i += len(pair) if pair else 1
        return ids


class BosCharTokenizer(CharTokenizer):
    """Characters with a BOS (id 1) prepended, as Llama's tokenizers do."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + super().encode(text)


@pytest.mark.parametrize(
    "tokenizer",
    [CharTokenizer(), BosCharTokenizer(), PairTokenizer()],
    ids=["char", "bos", "pairs"],
)
def test_passkey_prompt_fits_the_length_exactly_as_the_probe_encodes_it(tokenizer):
    per_filler = len(tokenizer.encode(PASSKEY_FILLER, add_special_tokens=False))
    # every remainder modulo the filler's length, then two long prompts
    for length in [*range(300, 300 + per_filler + 1), 1024, 4000]:
        for depth in (0.0, 0.5, 1.0):
            prompt = passkey_prompt(tokenizer, length, depth, 54321)
            size = len(tokenizer.encode(prompt))  # what passkey_probe feeds the model
            assert length - 2 * per_filler < size <= length, (length, depth, size)
            assert "The pass key is 54321." in prompt
    head = passkey_prompt(tokenizer, 4000, 0.0, 54321).index("54321")
    tail = passkey_prompt(tokenizer, 4000, 1.0, 54321).index("54321")
    assert head < 300 < 3000 < tail  # depth 0 = right after the intro, 1 = before the question


def test_passkey_prompt_refuses_a_length_below_its_fixed_text():
    shortest = passkey_min_length(CharTokenizer())
    passkey_prompt(CharTokenizer(), shortest, 0.5, 12345)
    with pytest.raises(UserError, match=f"--passkey-lengths {shortest - 1}: .* {shortest} tokens"):
        passkey_prompt(CharTokenizer(), shortest - 1, 0.5, 12345)


def test_default_copy_distances_are_capped_unless_asked():
    assert default_copy_distances(32768, 16) == [0, 4, 16, 64, 256, 1024, 4096]
    assert default_copy_distances(32768, 16, max_distance=0)[-1] == 32768 - 33
    assert default_copy_distances(256, 8)[-1] == 256 - 17  # a small window is probed whole
    assert at_chance(0.0, 1 / 128, 14) and not at_chance(3 / 14, 1 / 128, 14)
    assert at_chance(1 / 14, 1 / 128, 14)  # 1 hit in 14: p = 0.10 (exact binomial test)
