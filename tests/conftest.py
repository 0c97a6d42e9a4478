"""Shared fixtures: CPU only, no network, tiny models saved with ``save_pretrained``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TINY_VOCAB = 128
TINY_WINDOW = 64


def save_tiny_llama(path, vocab_size=TINY_VOCAB, window=TINY_WINDOW, layers=2, seed=0, hidden=32):
    """A tiny random Llama written with ``save_pretrained`` (the real loading path runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def write_tiny_shards(path, seq_len, num_samples, samples_per_shard=8, seed=0, vocab=TINY_VOCAB):
    """Random-token shards written by the library's own shard writer."""
    from longred_pl.data.prepare import write_shards

    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=seq_len) for _ in range(num_samples)]
    write_shards(
        docs,
        path,
        seq_len,
        samples_per_shard=samples_per_shard,
        pack=False,
        vocab_size=vocab,
        tokenizer_name="random",
        source="tests",
    )
    return str(path)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shards")
    return {
        "long": write_tiny_shards(root / "long", 4 * TINY_WINDOW, 24, seed=1),
        "short": write_tiny_shards(root / "short", 16, 64, seed=2),
        "s2l": write_tiny_shards(root / "s2l", TINY_WINDOW, 32, seed=3),
        "val_short": write_tiny_shards(root / "val_short", TINY_WINDOW, 8, seed=4),
    }
