"""Student RoPE: parity of the model's own rotary embedding with formulas written here or
with transformers' `ROPE_INIT_FUNCTIONS` on independently built configs; the teacher's
config is never mutated; bad input names the field."""

import math

import pytest
import torch
from transformers import GPT2Config, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from longred_pl.rope import ROPE_METHODS, extend_rope, original_window, suggest_abf_theta

TINY = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=128,
    intermediate_size=128,
)
HEAD_DIM = 16
TARGET = 1024  # 4 x the teacher's 256


def tiny(max_position_embeddings=256, **rope):
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, **rope}
    return LlamaConfig(
        **TINY, max_position_embeddings=max_position_embeddings, rope_parameters=rope_parameters
    )


@pytest.fixture
def teacher():
    return LlamaConfig(**TINY, max_position_embeddings=256, rope_theta=10000.0)


def rotary(config):
    emb = LlamaRotaryEmbedding(config=config)
    return emb, emb.inv_freq.clone(), emb.attention_scaling


def default_inv_freq(theta, scale=1.0):
    """1 / (scale * theta^(2i/d)), written by hand in float64."""
    i = torch.arange(0, HEAD_DIM, 2, dtype=torch.float64)
    return 1.0 / (scale * theta ** (i / HEAD_DIM))


def reference(rope_type, max_position_embeddings=TARGET, seq_len=None, **rope):
    """transformers' own init function on a config built here, not by extend_rope."""
    config = tiny(max_position_embeddings, rope_type=rope_type, **rope)
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)


def close(a, b):
    return torch.allclose(a.double(), torch.as_tensor(b).double(), rtol=1e-6, atol=0)


def test_abf_explicit_theta_matches_hand_formula(teacher):
    student = extend_rope(teacher, "abf", TARGET, rope_theta=1e6)
    assert student.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    assert close(rotary(student)[1], default_inv_freq(1e6))


def test_abf_default_theta_is_the_scaling_law(teacher):
    # d_extra = 2 * ceil(8 * log_1e4(256 / 2pi)) = 2 * ceil(3.22) = 8; beta = (1024 / 2pi)^(16/8)
    theta = (TARGET / (2 * math.pi)) ** 2
    student = extend_rope(teacher, "abf", TARGET)
    assert student.rope_parameters["rope_theta"] == pytest.approx(theta)
    assert close(rotary(student)[1], default_inv_freq(theta))


@pytest.mark.parametrize("method", ["pi", "linear"])
def test_pi_matches_hand_formula(teacher, method):
    student = extend_rope(teacher, method, TARGET)
    assert student.rope_parameters["factor"] == 4.0
    assert close(rotary(student)[1], default_inv_freq(10000.0, scale=4.0))
    assert close(
        rotary(extend_rope(teacher, method, TARGET, factor=8))[1], default_inv_freq(1e4, 8)
    )


def test_ntk_matches_hand_formula_and_hf_dynamic_at_full_length(teacher):
    student = extend_rope(teacher, "ntk", TARGET)
    inv_freq = rotary(student)[1]
    assert close(inv_freq, default_inv_freq(10000.0 * 4 ** (16 / 14)))
    # HF's dynamic NTK with factor 1 reaches the same base at 4x its reference length
    hf_inv_freq, _ = reference("dynamic", 256, seq_len=TARGET, factor=1.0)
    assert close(inv_freq, hf_inv_freq)


def test_dynamic_matches_hf_and_only_changes_beyond_target(teacher):
    student = extend_rope(teacher, "dynamic", TARGET)
    emb, inv_freq, _ = rotary(student)
    assert close(inv_freq, reference("dynamic", factor=4.0)[0])
    assert close(inv_freq, rotary(teacher)[1])  # documented: unchanged below target_length
    x = torch.zeros(1, 1, HEAD_DIM)
    emb(x, torch.arange(2 * TARGET)[None])
    assert close(emb.inv_freq, reference("dynamic", seq_len=2 * TARGET, factor=4.0)[0])
    assert not close(emb.inv_freq, inv_freq)


@pytest.mark.parametrize(
    "method,rope",
    [
        ("yarn", dict(factor=4.0, original_max_position_embeddings=256)),
        (
            "llama3",
            dict(
                factor=4.0,
                original_max_position_embeddings=256,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
            ),
        ),
    ],
)
def test_scaled_types_match_hf(teacher, method, rope):
    student = extend_rope(teacher, method, TARGET)
    assert student.rope_parameters == {"rope_type": method, "rope_theta": 10000.0, **rope}
    _, inv_freq, scaling = rotary(student)
    ref_inv_freq, ref_scaling = reference(method, **rope)
    assert close(inv_freq, ref_inv_freq) and scaling == pytest.approx(ref_scaling)
    assert not close(inv_freq, rotary(teacher)[1])
    assert not close(inv_freq, default_inv_freq(10000.0, scale=4.0))  # not plain PI either


@pytest.mark.skipif("longrope" not in ROPE_METHODS, reason="transformers lacks longrope")
def test_longrope_matches_hf_short_and_long(teacher):
    student = extend_rope(teacher, "longrope", TARGET)
    long_factor = [4.0 ** (2 * i / 14) for i in range(8)]
    rope = dict(
        factor=4.0,
        original_max_position_embeddings=256,
        short_factor=[1.0] * 8,
        long_factor=long_factor,
    )
    assert student.rope_parameters["long_factor"] == pytest.approx(long_factor)
    emb, inv_freq, scaling = rotary(student)
    ref_short, ref_scaling = reference("longrope", **rope)
    assert close(inv_freq, ref_short) and scaling == pytest.approx(ref_scaling)
    assert close(inv_freq, rotary(teacher)[1])  # short factors all ones
    emb(torch.zeros(1, 1, HEAD_DIM), torch.arange(300)[None])  # ids beyond the original window
    assert close(emb.inv_freq, reference("longrope", seq_len=300, **rope)[0])
    assert close(emb.inv_freq, default_inv_freq(10000.0 * 4 ** (16 / 14)))  # the ntk base


def test_none_keeps_teacher_rope(teacher):
    student = extend_rope(teacher, "none", TARGET)
    assert student.rope_parameters == teacher.rope_parameters
    assert close(rotary(student)[1], rotary(teacher)[1])
    assert extend_rope(teacher, "none", 256).max_position_embeddings == 256


@pytest.mark.parametrize("method", sorted(ROPE_METHODS))
def test_teacher_unchanged_and_student_round_trips(teacher, method):
    before = teacher.to_dict()
    student = extend_rope(teacher, method, TARGET)
    assert teacher.to_dict() == before
    assert student is not teacher and student.max_position_embeddings == TARGET
    reloaded = LlamaConfig.from_dict(student.to_dict())
    assert reloaded.rope_parameters == student.rope_parameters
    assert close(rotary(reloaded)[1], rotary(student)[1])


def test_already_scaled_teacher_rescales_from_original_window():
    # Llama-3.1-like: llama3 scaling x8 over an original window of 32, claimed window 256
    llama31 = tiny(
        256,
        rope_type="llama3",
        factor=8.0,
        original_max_position_embeddings=32,
        low_freq_factor=1.0,
        high_freq_factor=2.0,
    )
    before = llama31.to_dict()
    assert original_window(llama31) == 32
    student = extend_rope(llama31, "llama3", TARGET)
    params = student.rope_parameters
    assert params["factor"] == 32.0 and params["original_max_position_embeddings"] == 32
    assert params["high_freq_factor"] == 2.0  # kept from the teacher
    abf = extend_rope(llama31, "abf", TARGET, rope_theta=1e5).rope_parameters
    assert abf == {**llama31.rope_parameters, "rope_theta": 1e5}
    assert llama31.to_dict() == before
    with pytest.raises(ValueError, match=r"max_position_embeddings \(256\)"):
        extend_rope(llama31, "llama3", 256)


def test_original_window_plain_teacher(teacher):
    assert original_window(teacher) == 256


def test_suggest_abf_theta_for_llama3_8b():
    # d = 128, theta = 500K, 8K -> 32K: d_extra = 2 * ceil(64 * ln(8192/2pi) / ln(5e5)) = 70
    law = suggest_abf_theta(500_000.0, 8192, 32768, 128)
    assert law == pytest.approx((32768 / (2 * math.pi)) ** (128 / 70))
    ntk = suggest_abf_theta(500_000.0, 8192, 32768, 128, rule="ntk")
    assert ntk == pytest.approx(500_000.0 * 4 ** (128 / 126))
    assert 500_000 < ntk < law < 20e6  # the paper's 20M is above both rules
    assert law < suggest_abf_theta(500_000.0, 8192, 131072, 128)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("rope", TARGET), {}, r"model\.rope_method"),
        (("pi", TARGET), {"factor": 0.5}, r"model\.rope_kwargs\.factor must be >= 1"),
        (("yarn", TARGET), {"factor": 0.9}, r"model\.rope_kwargs\.factor"),
        (
            ("abf", 256),
            {},
            r"model\.target_length must be > teacher max_position_embeddings \(256\)",
        ),
        (("pi", 100), {}, r"model\.target_length"),
        (("none", 255), {}, r"model\.target_length"),
        (("abf", TARGET), {"rope_theta": 10.0}, r"model\.rope_kwargs\.rope_theta"),
        (("abf", TARGET), {"factor": 2.0}, r"model\.rope_kwargs.*unknown.*factor"),
        (("none", TARGET), {"factor": 2.0}, r"model\.rope_kwargs"),
    ],
)
def test_validation_names_the_field(teacher, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        extend_rope(teacher, *args, **kwargs)


@pytest.mark.skipif("longrope" not in ROPE_METHODS, reason="transformers lacks longrope")
def test_longrope_factor_length_checked(teacher):
    with pytest.raises(ValueError, match=r"model\.rope_kwargs\.long_factor must be 8 numbers"):
        extend_rope(teacher, "longrope", TARGET, long_factor=[1.0, 2.0])


def test_config_without_rope_is_refused():
    with pytest.raises(ValueError, match="no RoPE.*rope_parameters"):
        extend_rope(GPT2Config(n_layer=1), "abf", 4096)


def test_per_layer_rope_is_refused():
    from transformers import Gemma3TextConfig

    gemma = Gemma3TextConfig(num_hidden_layers=2, max_position_embeddings=256)
    with pytest.raises(ValueError, match="per-layer-type rope_parameters"):
        extend_rope(gemma, "abf", TARGET)
