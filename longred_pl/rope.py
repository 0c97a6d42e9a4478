"""Student RoPE from the teacher's Hugging Face config.

LongReD (Dong et al., ACL 2025, arXiv 2502.07365, docs/method.md "The recipe") trains a
student whose rotary position encoding is changed for the extended window `T_long`,
while the teacher keeps its original RoPE. This module turns the teacher's config into
the student's: a deep copy whose `rope_parameters` and `max_position_embeddings`
(= `target_length`) describe the student; the teacher's config is never mutated.

Everything is expressed in transformers 5 `config.rope_parameters` (`rope_type`,
`rope_theta`, `factor`, ...), so the model's own rotary embedding class computes the
frequencies (`transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS` is the single source
of truth; see its `_compute_*_parameters` functions for each type's keys). Methods:

| method | rope_type | what changes |
|---|---|---|
| `abf` | teacher's | `rope_theta` raised (ABF, the paper's main choice) |
| `pi`, `linear` | `linear` | positions divided by `factor` (PI, the paper's other choice) |
| `ntk` | `default` | static NTK-aware base `theta * factor**(d/(d-2))` |
| `dynamic` | `dynamic` | HF dynamic NTK (see `_rope_dynamic`: no change below `target_length`) |
| `yarn` | `yarn` | YaRN (Peng et al. 2023, arXiv 2309.00071) |
| `llama3` | `llama3` | Llama-3.1 frequency-band scaling |
| `longrope` | `longrope` | LongRoPE per-dimension factors (Ding et al. 2024, arXiv 2402.13753) |
| `none` | teacher's | nothing (student RoPE == teacher RoPE) |

Already-scaled teachers (e.g. Llama-3.1: `llama3`, factor 8, original window 8192,
`max_position_embeddings` 131072): the scaling methods rebuild the RoPE from the base
`rope_theta` and the teacher's *original* window (`original_window`), so their default
`factor` is `target_length / original_window` (the total scale relative to the unscaled
frequencies, not stacked on the teacher's); keys of the same rope type that do not depend
on the length (llama3's low/high_freq_factor, yarn's betas, longrope's short_factor) are
kept from the teacher unless given. `abf` keeps the teacher's rope type and keys and only
raises `rope_theta`.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

__all__ = [
    "ROPE_METHODS",
    "extend_rope",
    "ntk_theta",
    "original_window",
    "rotary_dim",
    "suggest_abf_theta",
]

logger = logging.getLogger(__name__)

_KWARGS = "model.rope_kwargs"


def _teacher_rope(config: PreTrainedConfig) -> dict[str, Any]:
    """Return a copy of the teacher's flat `rope_parameters`, or raise a clear ValueError."""
    params = getattr(config, "rope_parameters", None) or {}
    find_nested = getattr(config, "nested_rope_parameter_keys", None)
    nested: list[str] = find_nested(params) if find_nested else []
    if nested:
        raise ValueError(
            f"per-layer-type rope_parameters ({', '.join(nested)}) are not supported by "
            "extend_rope; model.teacher_path must use one RoPE for all layers"
        )
    if "rope_theta" not in params:
        raise ValueError(
            f"{type(config).__name__} has no RoPE (no rope_parameters with rope_theta); "
            "model.teacher_path must point to a rotary-position model (Llama, Mistral, Qwen, ...)"
        )
    return copy.deepcopy(dict(params))


def original_window(config: PreTrainedConfig) -> int:
    """The window the teacher's unscaled RoPE was trained at.

    `rope_parameters["original_max_position_embeddings"]` when present (llama3, yarn,
    longrope teachers), else a top-level `original_max_position_embeddings` (Phi-3 style),
    else `max_position_embeddings`.
    """
    params = getattr(config, "rope_parameters", None) or {}
    window = params.get("original_max_position_embeddings")
    window = window or getattr(config, "original_max_position_embeddings", None)
    return int(window or config.max_position_embeddings)


def rotary_dim(config: PreTrainedConfig) -> int:
    """Number of rotated channels per head: `head_dim * partial_rotary_factor`."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    return int(head_dim * partial)


def ntk_theta(theta: float, factor: float, dim: int) -> float:
    """NTK-aware base for a `factor`-times longer window: `theta * factor**(dim/(dim-2))`.

    Source: bloc97, "NTK-Aware Scaled RoPE" (r/LocalLLaMA, 2023); HF's `dynamic` type with
    its own `factor` = 1 reaches this base at `factor` times its reference length.
    """
    return float(theta * factor ** (dim / (dim - 2)))


def suggest_abf_theta(
    original_theta: float,
    original_length: int,
    target_length: int,
    head_dim: int,
    rule: Literal["scaling_law", "ntk"] = "scaling_law",
) -> float:
    """Suggest an ABF `rope_theta` for extending `original_length` to `target_length`.

    `scaling_law` (default), from Liu et al., "Scaling Laws of RoPE-based Extrapolation"
    (ICLR 2024, arXiv 2310.05209), extended scaling law for a larger base: only the
    first `d_extra = 2 * ceil(d/2 * log_theta(T / 2pi))` dimensions complete a period within
    the pre-training length `T`, and a model tuned with base `beta` extrapolates up to
    `2pi * beta**(d_extra / d)`. Inverting gives `beta = (T_long / 2pi)**(d / d_extra)`,
    returned as at least `original_theta` (the ceil can put the bound below it for small
    extensions or a tiny `d`). `ntk` returns `ntk_theta(theta, T_long / T, d)`.

    Llama-3-8B (theta 500K, d 128), 8K -> 32K: `scaling_law` gives about 6.3M and `ntk`
    about 2.0M; the paper trains with 20M, about 3x above the scaling-law bound (for
    8K -> 128K: about 79M and 8.4M). Both rules are starting points; pass
    `model.rope_kwargs.rope_theta` to reproduce the paper.

    Args:
        original_theta: the teacher's `rope_theta`.
        original_length: the teacher's window `T`.
        target_length: the student's window `T_long`.
        head_dim: rotated channels per head `d` (see `rotary_dim`).
        rule: `scaling_law` or `ntk`.

    Returns:
        The suggested base, a float >= `original_theta`.
    """
    if original_theta <= 1 or head_dim < 4 or head_dim % 2:
        raise ValueError(
            f"suggest_abf_theta needs rope_theta > 1 and an even head_dim >= 4 "
            f"(got {original_theta}, {head_dim})"
        )
    if not 2 * math.pi < original_length < target_length:
        raise ValueError(
            f"suggest_abf_theta needs 2pi < original_length < target_length "
            f"(got {original_length}, {target_length})"
        )
    if rule == "ntk":
        return ntk_theta(original_theta, target_length / original_length, head_dim)
    if rule != "scaling_law":
        raise ValueError(f"rule must be 'scaling_law' or 'ntk' (got {rule!r})")
    log_ratio = math.log(original_length / (2 * math.pi)) / math.log(original_theta)
    d_extra = min(head_dim, 2 * math.ceil(head_dim / 2 * log_ratio))
    beta = (target_length / (2 * math.pi)) ** (head_dim / d_extra)
    return float(max(beta, original_theta))


def _default_factor(config: PreTrainedConfig, target_length: int, factor: float | None) -> float:
    """`factor`, defaulting to `target_length / original_window`; must be >= 1."""
    factor = target_length / original_window(config) if factor is None else float(factor)
    if factor < 1:
        raise ValueError(f"{_KWARGS}.factor must be >= 1 (got {factor})")
    return factor


def _base(teacher: dict[str, Any], rope_type: str, carry: tuple[str, ...] = ()) -> dict[str, Any]:
    """New rope_parameters of `rope_type` on the teacher's base theta.

    Keeps `partial_rotary_factor` and, when the teacher already uses `rope_type`, the keys
    in `carry`.
    """
    params = {"rope_type": rope_type, "rope_theta": teacher["rope_theta"]}
    same_type = teacher.get("rope_type") == rope_type
    keep = ("partial_rotary_factor", *carry) if same_type else ("partial_rotary_factor",)
    params.update({key: teacher[key] for key in keep if key in teacher})
    return params


def _given(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments that were actually given (not None)."""
    return {key: value for key, value in kwargs.items() if value is not None}


def _rope_none(config: PreTrainedConfig, target_length: int) -> dict[str, Any]:
    """Keep the teacher's RoPE unchanged (ablations, drift baseline)."""
    return _teacher_rope(config)


def _rope_abf(
    config: PreTrainedConfig, target_length: int, *, rope_theta: float | None = None
) -> dict[str, Any]:
    """ABF: raise `rope_theta`; default `suggest_abf_theta` over `max_position_embeddings`."""
    params = _teacher_rope(config)
    theta = params["rope_theta"]
    if rope_theta is None:
        rope_theta = suggest_abf_theta(
            theta, config.max_position_embeddings, target_length, rotary_dim(config)
        )
        if rope_theta == theta:
            logger.warning(
                "abf: the scaling-law rule keeps rope_theta=%s for target_length=%d; "
                "set model.rope_kwargs.rope_theta to raise it",
                theta,
                target_length,
            )
    if rope_theta < theta:
        raise ValueError(
            f"{_KWARGS}.rope_theta must be >= the teacher's rope_theta {theta} (got {rope_theta})"
        )
    params["rope_theta"] = float(rope_theta)
    return params


def _rope_linear(
    config: PreTrainedConfig, target_length: int, *, factor: float | None = None
) -> dict[str, Any]:
    """PI: divide positions by `factor` (default `target_length / original_window`)."""
    params = _base(_teacher_rope(config), "linear")
    params["factor"] = _default_factor(config, target_length, factor)
    return params


def _rope_ntk(
    config: PreTrainedConfig, target_length: int, *, factor: float | None = None
) -> dict[str, Any]:
    """Static NTK-aware scaling: a default RoPE with base `ntk_theta(theta, factor, d)`."""
    params = _base(_teacher_rope(config), "default")
    factor = _default_factor(config, target_length, factor)
    params["rope_theta"] = ntk_theta(params["rope_theta"], factor, rotary_dim(config))
    return params


def _rope_dynamic(
    config: PreTrainedConfig, target_length: int, *, factor: float | None = None
) -> dict[str, Any]:
    """HF dynamic NTK with `factor` (default `target_length / original_window`).

    HF's `dynamic` type rescales only for sequences longer than `max_position_embeddings`,
    which the student's config sets to `target_length`: below it the student's
    frequencies equal the teacher's. Use `ntk` to train with NTK-scaled frequencies.
    """
    params = _base(_teacher_rope(config), "dynamic")
    params["factor"] = _default_factor(config, target_length, factor)
    logger.warning(
        "rope_method 'dynamic' leaves the RoPE unchanged below model.target_length "
        "(HF rescales only beyond max_position_embeddings); use 'ntk' for a trained NTK base"
    )
    return params


def _rope_yarn(
    config: PreTrainedConfig,
    target_length: int,
    *,
    factor: float | None = None,
    beta_fast: float | None = None,
    beta_slow: float | None = None,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    truncate: bool | None = None,
) -> dict[str, Any]:
    """YaRN with `factor` (default `target_length / original_window`); HF defaults elsewhere."""
    carry = ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")
    params = _base(_teacher_rope(config), "yarn", carry)
    params["factor"] = _default_factor(config, target_length, factor)
    params["original_max_position_embeddings"] = original_window(config)
    params.update(
        _given(
            beta_fast=beta_fast,
            beta_slow=beta_slow,
            attention_factor=attention_factor,
            mscale=mscale,
            mscale_all_dim=mscale_all_dim,
            truncate=truncate,
        )
    )
    return params


def _rope_llama3(
    config: PreTrainedConfig,
    target_length: int,
    *,
    factor: float | None = None,
    low_freq_factor: float | None = None,
    high_freq_factor: float | None = None,
) -> dict[str, Any]:
    """Llama-3.1 band scaling; low/high_freq_factor default to the teacher's or 1 and 4."""
    params = _base(_teacher_rope(config), "llama3", ("low_freq_factor", "high_freq_factor"))
    params.setdefault("low_freq_factor", 1.0)
    params.setdefault("high_freq_factor", 4.0)
    params["factor"] = _default_factor(config, target_length, factor)
    params["original_max_position_embeddings"] = original_window(config)
    params.update(_given(low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor))
    return params


def _factor_list(name: str, values: list[float], dim: int) -> list[float]:
    """Check a longrope factor list: `dim // 2` numbers, each >= 1."""
    values = [float(v) for v in values]
    if len(values) != dim // 2 or min(values) < 1:
        raise ValueError(
            f"{_KWARGS}.{name} must be {dim // 2} numbers >= 1 (rotary_dim / 2), got {len(values)}"
        )
    return values


def _rope_longrope(
    config: PreTrainedConfig,
    target_length: int,
    *,
    factor: float | None = None,
    short_factor: list[float] | None = None,
    long_factor: list[float] | None = None,
    attention_factor: float | None = None,
) -> dict[str, Any]:
    """LongRoPE with per-dimension factors (HF uses `long_factor` once ids reach the window).

    Defaults, since no searched factors exist for a new model: `short_factor` is the
    teacher's (for a longrope teacher) or all ones (the teacher's RoPE); `long_factor[i]
    = factor**(2i/(d-2))`, the per-dimension form of `ntk` (1 for the fastest pair,
    `factor` for the slowest).
    """
    teacher = _teacher_rope(config)
    params = _base(teacher, "longrope", ("short_factor",))
    dim = rotary_dim(config)
    factor = _default_factor(config, target_length, factor)
    params["factor"] = factor
    params["original_max_position_embeddings"] = original_window(config)
    short = short_factor or params.get("short_factor") or [1.0] * (dim // 2)
    long = long_factor or [factor ** (2 * i / (dim - 2)) for i in range(dim // 2)]
    params["short_factor"] = _factor_list("short_factor", short, dim)
    params["long_factor"] = _factor_list("long_factor", long, dim)
    params.update(_given(attention_factor=attention_factor))
    return params


ROPE_METHODS: dict[str, Callable[..., dict[str, Any]]] = {
    "abf": _rope_abf,
    "pi": _rope_linear,
    "linear": _rope_linear,
    "ntk": _rope_ntk,
    "dynamic": _rope_dynamic,
    "yarn": _rope_yarn,
    "llama3": _rope_llama3,
    "none": _rope_none,
}
if "longrope" in ROPE_INIT_FUNCTIONS:
    ROPE_METHODS["longrope"] = _rope_longrope


def _check_kwargs(method: str, builder: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Raise a ValueError naming `model.rope_kwargs` for keys the method does not take."""
    allowed = [
        p.name for p in inspect.signature(builder).parameters.values() if p.kind == p.KEYWORD_ONLY
    ]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"{_KWARGS} has unknown key(s) {unknown} for model.rope_method={method!r}; "
            f"allowed: {allowed or 'none'}"
        )


def extend_rope(
    config: PreTrainedConfig, method: str, target_length: int, **kwargs: Any
) -> PreTrainedConfig:
    """Return the student's config: the teacher's, with RoPE changed for `target_length`.

    Args:
        config: the teacher's config; never mutated.
        method: a key of `ROPE_METHODS` (`model.rope_method`).
        target_length: the student's window (`model.target_length`); must exceed the
            teacher's `max_position_embeddings` (or equal it for `none`).
        **kwargs: method options (`model.rope_kwargs`), e.g. `rope_theta` for `abf`,
            `factor` for the scaling methods.

    Returns:
        A deep copy with the student's `rope_parameters` and
        `max_position_embeddings = target_length`.

    Raises:
        ValueError: unknown method or option, a config without RoPE, a bad
            `target_length`, `factor` or factor list.
    """
    if method not in ROPE_METHODS:
        known = ", ".join(sorted(ROPE_METHODS))
        raise ValueError(f"model.rope_method={method!r} is not known; choose one of: {known}")
    builder = ROPE_METHODS[method]
    _check_kwargs(method, builder, kwargs)
    _teacher_rope(config)
    teacher_window = config.max_position_embeddings
    too_short = (
        target_length < teacher_window if method == "none" else target_length <= teacher_window
    )
    if too_short:
        raise ValueError(
            f"model.target_length must be > teacher max_position_embeddings ({teacher_window}), "
            f"got {target_length}"
        )
    params = builder(config, target_length, **kwargs)
    student = copy.deepcopy(config)
    student.rope_parameters = params
    student.max_position_embeddings = int(target_length)
    student.validate_rope()
    return student
