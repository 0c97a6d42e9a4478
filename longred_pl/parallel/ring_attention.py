"""Ring attention for context parallelism, as a Hugging Face attention function.

A model loaded with ``attn_implementation="longred_ring"`` (:data:`RING_ATTENTION`) calls
:func:`ring_attention_forward` in every attention layer, through transformers' own
attention-function registry (no model class is patched). While a context-parallel group
of size > 1 is set (:func:`set_cp_group`, :func:`context_parallel_group`), each rank holds
its two head-tail chunks of the sequence (``sharding.shard_sequence``) and the layer runs
torch's causal ring algorithm with head-tail (zigzag) load balancing: rank ``r`` of ``cp``
holds chunks ``r`` and ``2cp-1-r`` of ``2cp``, so every rank does the same work. Outside
CP (no group, or a group of one) the function *is* transformers' ``sdpa`` attention, and
the mask transformers builds is ``sdpa``'s (:func:`ring_mask` delegates to ``sdpa_mask``).

Attention under CP is plain causal attention over the token order: skipped position ids
(docs/method.md, s2l stream) only feed RoPE, which the model applies before this function.
Document masks of packed samples are the exception: while whole-sequence document ids are
set (``document_attention.set_document_ids``), the function runs
``document_attention.cp_document_attention`` instead (all-gather K/V under CP, masked SDPA
without), and no transformers mask is built; unmasked streams keep the ring.

Other masks are ignored under CP, by design: a mask transformers builds on one rank sees only
that rank's shard (e.g. the position jump between its two chunks would be read as a
packed-sequence boundary), so it is meaningless for the whole sequence. :func:`ring_mask`
therefore builds none (no ``[B, 1, S, S]`` tensor is allocated) and the attention
function ignores any it is given. Refusing a mask instead would be worse than useless:
whether transformers builds one depends on each rank's shard, so some ranks would raise
while the others wait in the ring forever (seen: contiguous ids without the all-ones
mask give rank 0 of 2 a position jump and rank 1 none). Padding is therefore not
supported under CP (the library's batches are fixed-length); the checks that can refuse
(dropout, non-causal or sliding-window attention, soft-capping) depend only on the
config, so every rank refuses together.

Kernels: CPU flash (``aten._scaled_dot_product_flash_attention_for_cpu``; tested in fp32);
CUDA flash for fp16/bf16 and CUDA memory-efficient for fp32 (written to torch's own CP
wrappers, checked only by the ``gpu``-marked test). GQA: the ring rotates the
``K`` key/value heads (``H / K`` times less traffic than repeated ones); the kernel
adapters repeat them for the kernel and fold the gradients back.

Shape legend: B batch, H query heads, K key/value heads, T local tokens (two chunks),
D head dim, G = H // K query heads per key/value head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from longred_pl import _torch_private
from longred_pl.errors import UserError
from longred_pl.parallel.document_attention import (
    cp_document_attention,
    document_sdpa,
    get_document_ids,
)

RING_ATTENTION = "longred_ring"


# The context-parallel group, process-wide. It is process-wide (not scoped to one forward)
# on purpose: gradient checkpointing recomputes attention during backward, outside any
# forward-scoped context, and must see the same group.
_STATE: dict[str, dist.ProcessGroup | None] = {"group": None}


def set_cp_group(group: dist.ProcessGroup | None) -> None:
    """Set (or clear with ``None``) the context-parallel process group for this process."""
    _STATE["group"] = group


def get_cp_group() -> dist.ProcessGroup | None:
    """The context-parallel group set by :func:`set_cp_group`, or ``None``."""
    return _STATE["group"]


@contextlib.contextmanager
def context_parallel_group(group: dist.ProcessGroup | None) -> Iterator[None]:
    """Use ``group`` as the context-parallel group inside the block, then restore."""
    saved = get_cp_group()
    set_cp_group(group)
    try:
        yield
    finally:
        set_cp_group(saved)


def cp_active(group: dist.ProcessGroup | None) -> bool:
    """True when ``group`` splits the sequence (an initialised group of size > 1)."""
    return group is not None and dist.get_world_size(group) > 1


# ------------------------------------------------------------------------------ kernels
def _repeat_kv(x_BKTD: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x_BKTD
    b, k, t, d = x_BKTD.shape
    return x_BKTD[:, :, None].expand(b, k, groups, t, d).reshape(b, k * groups, t, d)


def _fold_kv(grad_BHTD: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return grad_BHTD
    b, h, t, d = grad_BHTD.shape
    return grad_BHTD.view(b, h // groups, groups, t, d).sum(2)


@dataclass(frozen=True)
class _Kernel:
    """One SDPA kernel in the calling conventions of torch's templated ring functions."""

    forward: Callable[..., tuple[Any, ...]]
    backward: Callable[..., tuple[Any, ...]]
    grad_out_name: str
    backward_kwargs: Callable[[tuple[Any, ...]], dict[str, Any]]


def _cpu_flash(groups: int) -> _Kernel:
    def forward(q, k, v, *, is_causal, scale):
        return _torch_private.sdpa_op("_scaled_dot_product_flash_attention_for_cpu")(
            q, _repeat_kv(k, groups), _repeat_kv(v, groups), 0.0, is_causal, scale=scale
        )

    def backward(*, grad_out, query, key, value, out, logsumexp, is_causal, scale):
        dq, dk, dv = _torch_private.sdpa_op("_scaled_dot_product_flash_attention_for_cpu_backward")(
            grad_out.contiguous(),
            query,
            _repeat_kv(key, groups),
            _repeat_kv(value, groups),
            out,
            logsumexp.contiguous(),
            0.0,
            is_causal,
            scale=scale,
        )
        return dq, _fold_kv(dk, groups), _fold_kv(dv, groups)

    return _Kernel(forward, backward, "grad_out", lambda rest: {})


def _cuda_flash(groups: int) -> _Kernel:
    def forward(q, k, v, *, is_causal, scale):
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
        return _torch_private.sdpa_op("_scaled_dot_product_flash_attention")(
            q, k, v, 0.0, is_causal, False, scale=scale
        )

    def backward(*, grad_out, query, key, value, out, logsumexp, is_causal, scale, **rest):
        dq, dk, dv = _torch_private.sdpa_op("_scaled_dot_product_flash_attention_backward")(
            grad_out,
            query,
            _repeat_kv(key, groups),
            _repeat_kv(value, groups),
            out,
            logsumexp,
            rest["cum_seq_q"],
            rest["cum_seq_k"],
            rest["max_q"],
            rest["max_k"],
            0.0,
            is_causal,
            rest["philox_seed"],
            rest["philox_offset"],
            scale=scale,
        )
        return dq, _fold_kv(dk, groups), _fold_kv(dv, groups)

    # the forward's rest is (cum_seq_q, cum_seq_k, max_q, max_k, rng_state, unused, debug
    # mask); its backward takes the first six, rng_state and unused as philox seed/offset
    names = ("cum_seq_q", "cum_seq_k", "max_q", "max_k", "philox_seed", "philox_offset")
    return _Kernel(
        forward, backward, "grad_out", lambda rest: dict(zip(names, rest[:6], strict=True))
    )


def _cuda_efficient(groups: int) -> _Kernel:
    def forward(q, k, v, *, is_causal, scale):
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
        return _torch_private.sdpa_op("_scaled_dot_product_efficient_attention")(
            q, k, v, None, True, 0.0, is_causal, scale=scale
        )

    def backward(*, grad_out_, query, key, value, out, logsumexp, is_causal, scale, **rest):
        dq, dk, dv, _ = _torch_private.sdpa_op("_scaled_dot_product_efficient_attention_backward")(
            grad_out_,
            query,
            _repeat_kv(key, groups),
            _repeat_kv(value, groups),
            None,
            out,
            logsumexp,
            rest["philox_seed"],
            rest["philox_offset"],
            0.0,
            [True, True, True, False],
            is_causal,
            scale=scale,
        )
        return dq, _fold_kv(dk, groups), _fold_kv(dv, groups)

    names = ("philox_seed", "philox_offset")
    return _Kernel(forward, backward, "grad_out_", lambda rest: dict(zip(names, rest, strict=True)))


def _kernel_for(q_BHTD: torch.Tensor, groups: int) -> _Kernel:
    """The device's SDPA kernel for ``q``'s device and dtype."""
    if q_BHTD.device.type == "cpu":
        return _cpu_flash(groups)
    if q_BHTD.device.type != "cuda":
        raise UserError(
            f"model.attn_implementation={RING_ATTENTION} runs on CPU or CUDA, got a "
            f"{q_BHTD.device.type} tensor; use sdpa without context parallelism there"
        )
    if q_BHTD.dtype in (torch.float16, torch.bfloat16):
        return _cuda_flash(groups)
    if q_BHTD.shape[2] % 64:
        # the efficient kernel pads its logsumexp to a multiple of 32 rows; a half chunk
        # must not be padded or the ring's merge misaligns
        raise UserError(
            f"context parallelism in float32 on CUDA needs seq_len / cp to be a multiple of "
            f"64, got {q_BHTD.shape[2]} local tokens; pick such a data.<stream>.seq_len or "
            f"train in bf16 (trainer.precision=bf16-mixed)"
        )
    return _cuda_efficient(groups)


# ------------------------------------------------------------------------------- ring
class _RingAttention(torch.autograd.Function):
    """Causal load-balanced ring attention; saves only the local q, k, v, out and lse."""

    @staticmethod
    def forward(ctx, q_BHTD, k_BKTD, v_BKTD, group, scale):  # type: ignore[override]
        kernel = _kernel_for(q_BHTD, q_BHTD.shape[1] // k_BKTD.shape[1])
        out_BHTD, lse_BHT, *rest = _torch_private.ring_forward(
            group, kernel.forward, q_BHTD, k_BKTD, v_BKTD, scale=scale
        )
        ctx.save_for_backward(q_BHTD, k_BKTD, v_BKTD, out_BHTD, lse_BHT)
        ctx.group, ctx.scale, ctx.kernel, ctx.rest = group, scale, kernel, tuple(rest)
        return out_BHTD

    @staticmethod
    def backward(ctx, grad_BHTD):  # type: ignore[override]
        q_BHTD, k_BKTD, v_BKTD, out_BHTD, lse_BHT = ctx.saved_tensors
        kernel = ctx.kernel
        dq_BHTD, dk_BKTD, dv_BKTD, *_ = _torch_private.ring_backward(
            ctx.group,
            kernel.backward,
            kernel.grad_out_name,
            grad_BHTD.contiguous(),
            q_BHTD,
            k_BKTD,
            v_BKTD,
            out_BHTD,
            lse_BHT,
            scale=ctx.scale,
            **kernel.backward_kwargs(ctx.rest),
        )
        return dq_BHTD, dk_BKTD, dv_BKTD, None, None


def ring_attention(
    q_BHTD: torch.Tensor,
    k_BKTD: torch.Tensor,
    v_BKTD: torch.Tensor,
    group: dist.ProcessGroup,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of the whole sequence, each rank holding its head-tail chunks.

    Args:
        q_BHTD: this rank's queries, chunks ``r`` and ``2cp-1-r`` concatenated on T.
        k_BKTD: its keys, same layout; ``K`` may divide ``H`` (GQA).
        v_BKTD: its values.
        group: the context-parallel process group (rank order = chunk order).
        scale: softmax scale; ``None`` is ``1 / sqrt(D)``.

    Returns:
        ``out_BHTD``: this rank's rows of the full causal attention output.
    """
    if q_BHTD.shape[1] % k_BKTD.shape[1]:
        raise ValueError(
            f"query heads {q_BHTD.shape[1]} are not a multiple of key/value heads {k_BKTD.shape[1]}"
        )
    if q_BHTD.shape[2] != k_BKTD.shape[2] or q_BHTD.shape[2] % 2:
        raise ValueError(
            f"ring attention needs equal, even query and key lengths (two chunks per rank), "
            f"got {q_BHTD.shape[2]} and {k_BKTD.shape[2]}"
        )
    return _RingAttention.apply(q_BHTD, k_BKTD.contiguous(), v_BKTD.contiguous(), group, scale)


# ------------------------------------------------------------------ transformers hook
def _check_cp_call(module: Any, dropout: float, is_causal: bool | None, kwargs: dict) -> None:
    """Refuse what the ring cannot compute, naming the setting to change.

    Every check reads the model's config only, so all ranks of the group agree.
    """
    if dropout:
        raise UserError(
            f"attention_dropout={dropout}: {RING_ATTENTION} does not support attention "
            f"dropout; set the model config's attention_dropout to 0"
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal:
        raise UserError(
            f"{RING_ATTENTION} supports causal (decoder) attention only; use sdpa for "
            f"{type(module).__name__}"
        )
    for name in ("sliding_window", "softcap", "position_bias", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise UserError(
                f"{name}: {RING_ATTENTION} supports plain causal attention only; this model "
                f"uses {name}, train it with sdpa and no context parallelism"
            )


def ring_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``(out [B, T, H, D], None)``.

    ``query`` is ``[B, H, T, D]``, ``key``/``value`` ``[B, K, T, D]``, as transformers
    passes them. With document ids set (``document_attention``): the document-masked
    attention, all-gather K/V under CP, masked SDPA without. Else outside CP it delegates
    to transformers' ``sdpa_attention_forward``, and under CP it runs the ring.
    """
    group = get_cp_group()
    documents = get_document_ids()
    if documents is not None:
        _check_cp_call(module, dropout, is_causal, kwargs)  # attention_mask ignored: see top
        if cp_active(group):
            out_BHSD = cp_document_attention(query, key, value, documents, group, scaling)
        else:
            out_BHSD = document_sdpa(query, key, value, documents, scaling)
        return out_BHSD.transpose(1, 2).contiguous(), None
    if group is None or not cp_active(group):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    _check_cp_call(module, dropout, is_causal, kwargs)  # attention_mask ignored: see top
    out_BHTD = ring_attention(query, key, value, group, scaling)
    return out_BHTD.transpose(1, 2).contiguous(), None


def ring_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers mask builder: none under CP or with document ids set, else ``sdpa_mask``."""
    if cp_active(get_cp_group()) or get_document_ids() is not None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def register_ring_attention() -> str:
    """Register :data:`RING_ATTENTION` with transformers (idempotent); returns the name.

    :func:`ring_attention_forward` goes into ``AttentionInterface`` and :func:`ring_mask`
    into ``AttentionMaskInterface`` under the same name.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(RING_ATTENTION, ring_attention_forward)
    AttentionMaskInterface.register(RING_ATTENTION, ring_mask)
    return RING_ATTENTION
