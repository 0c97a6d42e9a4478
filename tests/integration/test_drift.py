"""Drift measurement on tiny Llamas: zero without a RoPE change, positive with one."""

from __future__ import annotations

import pytest
import torch

from longred_pl.drift import DriftReport, measure_drift, plot_drift, recommend_layers
from longred_pl.rope import extend_rope

N_LAYERS = 3


def tiny_pair(method: str, target_length: int, sharpen: float = 10.0, **rope_kwargs):
    """Teacher and student with the same weights; the student's RoPE from ``extend_rope``.

    Query/key weights are scaled up so attention is peaked (at the default 0.02 init the
    scores are nearly uniform and no RoPE change would show).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.self_attn.q_proj.weight.mul_(sharpen)
            layer.self_attn.k_proj.weight.mul_(sharpen)
    student = LlamaForCausalLM(extend_rope(config, method, target_length, **rope_kwargs)).eval()
    student.load_state_dict(teacher.state_dict())
    return teacher, student


def short_batches(n: int = 2, batch: int = 2, seq_len: int = 32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 128, (batch, seq_len), generator=gen) for _ in range(n)]


def test_no_rope_change_gives_zero_drift_at_every_layer():
    teacher, student = tiny_pair("none", 64)
    report = measure_drift(teacher, student, short_batches())
    assert len(report.cosine) == N_LAYERS + 1 and len(report.attention_kl) == N_LAYERS
    assert report.num_tokens == 2 * 2 * 32 and report.seq_len == 32
    assert all(abs(c - 1.0) < 1e-5 for c in report.cosine)
    assert all(abs(kl) < 1e-5 for kl in report.attention_kl)


def test_abf_with_a_large_theta_makes_the_final_layer_drift():
    teacher, student = tiny_pair("abf", 256, rope_theta=1e7)
    report = measure_drift(teacher, student, short_batches())
    assert report.cosine[0] == pytest.approx(1.0, abs=1e-6)  # embeddings ignore positions
    assert report.drift[N_LAYERS] > 1e-4
    assert min(report.attention_kl) > 1e-4


def test_models_return_to_their_attention_backend_after_measuring():
    teacher, student = tiny_pair("none", 64)
    assert teacher.config._attn_implementation == "sdpa"
    measure_drift(teacher, student, short_batches(n=1))
    assert teacher.config._attn_implementation == "sdpa"
    assert student.config._attn_implementation == "sdpa"


def test_report_round_trips_and_renders(tmp_path):
    report = DriftReport(
        cosine=[1.0, 0.99, 0.9], attention_kl=[0.01, 0.2], num_tokens=64, seq_len=32
    )
    assert DriftReport.from_dict(report.to_dict()) == report
    table = report.to_markdown()
    assert "| 2 | 0.900000 | 1.000e-01 | 2.000e-01 |" in table
    assert "| 0 | 1.000000 | 0.000e+00 | - |" in table
    path = plot_drift(report, str(tmp_path / "drift.png"))
    assert (tmp_path / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.endswith("drift.png")


def test_recommend_layers_picks_the_largest_jumps_plus_the_final_index():
    # drift per index:   0    1     2     3     4     5     6
    drift = [0.0, 0.05, 0.06, 0.20, 0.21, 0.40, 0.45]
    report = DriftReport([1 - d for d in drift], [0.0] * 6, num_tokens=1, seq_len=1)
    # jumps of layers 1..5: 0.05, 0.01, 0.14, 0.01, 0.19
    assert recommend_layers(report, 2) == [3, 5, 6]
    assert recommend_layers(report, 3) == [1, 3, 5, 6]
    assert recommend_layers(report, 0) == [6]
    assert recommend_layers(report, 99) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="k must be >= 0"):
        recommend_layers(report, -1)
