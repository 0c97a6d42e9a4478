"""The FLOP and memory arithmetic of the GPU smoke, against hand-computed cases."""

import pytest

from benchmarks.gpu_smoke.flops import (
    GIB,
    Shape,
    forward_flops,
    long_microstep_bytes,
    microstep_flops,
)

# 2 layers, hidden 4, 2 heads of 2 (h_q = 4), 1 kv head (kv = 2), intermediate 8, vocab 10
TINY = Shape(layers=2, hidden=4, heads_dim=4, kv_dim=2, intermediate=8, vocab=10)


def test_layer_parameters_by_hand():
    # q 4x4 + o 4x4 + k 4x2 + v 4x2 + gate, up, down 3 x 4x8
    assert TINY.layer_params == 16 + 16 + 8 + 8 + 96
    assert TINY.params == 2 * 144 + 2 * 10 * 4


def test_forward_and_training_flops_by_hand():
    tokens = 3
    dense = 2 * 2 * 144 * tokens  # 2 P per token
    attention = 2 * 2 * 4 * tokens**2  # 2 T^2 h_q per layer
    head = 2 * 10 * 4
    assert forward_flops(TINY, tokens, 1, True) == dense + attention + head * tokens
    assert forward_flops(TINY, tokens, 2, False) == 2 * (dense + attention + head)
    assert microstep_flops(TINY, "long", tokens, 1, "L_long") == 3 * (dense + attention + head * 3)
    # distillation: student trained (head on one position) + teacher forward
    assert microstep_flops(TINY, "short", tokens, 1, "L_short") == 4 * (dense + attention + head)


def test_llama3_8b_memory_estimate_at_128k_on_8_ranks():
    from types import SimpleNamespace

    config = SimpleNamespace(
        num_hidden_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        head_dim=128,
    )
    shape = Shape.of(config)
    assert shape.params == pytest.approx(8.03e9, rel=1e-3)
    parts = long_microstep_bytes(shape, 131072, ranks=8, cp=1)
    assert parts["checkpointed_inputs"] == pytest.approx(32.0)  # 32 x 131072 x 4096 x 2 B
    assert parts["head_chunk"] == pytest.approx(4096 * 128256 * 4 / GIB)
    cp4 = long_microstep_bytes(shape, 131072, ranks=8, cp=4)
    assert cp4["checkpointed_inputs"] == pytest.approx(8.0) and cp4["ring_kv"] > 0
