"""Model FLOPs of a LongReD micro-step, and the README's per-rank memory estimate, as code.

FLOPs (what MFU divides by the step time; recomputation by activation checkpointing is
*not* counted, as in the usual definition of MFU):

* a decoder's matmul weights ``P`` (every ``Linear`` of every layer: q, k, v, o, gate, up,
  down) cost ``2 P`` FLOPs per token forward; the LM head ``V x h`` costs ``2 V h`` per
  token where it runs on every token (next-token micro-steps; distillation micro-steps
  run it on one position);
* causal attention costs ``2 T^2 h_q`` per layer and sequence forward (``QK^T`` and
  ``AV``, ``2 T^2 d`` each per head, half of it masked; ``h_q`` = heads x head dim);
* training a micro-step costs 3x its forward (backward = 2x forward); a frozen teacher
  forward costs 1x.

Memory of one long micro-step on one rank (the README's "Context parallelism" table;
excludes the CUDA context, NCCL buffers and fragmentation):

* state: student fp32 weights, gradients and AdamW moments (4 + 4 + 8 bytes per
  parameter) and the teacher (2 or 4 bytes per parameter), divided by the ranks that
  shard them;
* checkpointed layer inputs: ``L x T x h`` in bf16;
* one layer recomputed in backward: ``T x (5 h + 2 kv + 4 i)`` bf16 values (the input
  norm's output, q, k, v, attention output, o-projection output and the post-attention
  norm's output; gate, up, the activation and its product with up);
* the ring's key/value buffer under CP: ``2 x T_whole x kv`` bf16 values (all-gathered);
* the LM-head chunk: ``chunk x V`` fp32 logits (the fused loss keeps one chunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """The sizes FLOPs and memory depend on (read from a Hugging Face config)."""

    layers: int
    hidden: int
    heads_dim: int  # h_q = heads x head dim
    kv_dim: int  # key/value heads x head dim
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> Shape:
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(
            int(config.num_hidden_layers),
            int(config.hidden_size),
            int(config.num_attention_heads * head_dim),
            int(kv_heads * head_dim),
            int(config.intermediate_size),
            int(config.vocab_size),
        )

    @property
    def layer_params(self) -> int:
        """Matmul weights of one decoder layer."""
        attention = 2 * self.hidden * self.heads_dim + 2 * self.hidden * self.kv_dim
        return attention + 3 * self.hidden * self.intermediate

    @property
    def params(self) -> int:
        """All parameters (embeddings and an untied head included; norms are negligible)."""
        return self.layers * self.layer_params + 2 * self.vocab * self.hidden


def forward_flops(shape: Shape, tokens: int, batch: int, head_on_every_token: bool) -> float:
    """Forward FLOPs of ``batch`` sequences of ``tokens`` tokens (causal attention)."""
    dense = 2 * shape.layers * shape.layer_params * tokens
    head = 2 * shape.vocab * shape.hidden * (tokens if head_on_every_token else 1)
    attention = 2 * shape.layers * shape.heads_dim * tokens**2
    return float(batch * (dense + head + attention))


def microstep_flops(shape: Shape, kind: str, tokens: int, batch: int, term: str) -> float:
    """Model FLOPs of one micro-step: ``term`` is ``L_long``, ``L_short`` or ``L_s2l``."""
    if term == "L_long":
        return 3 * forward_flops(shape, tokens, batch, head_on_every_token=True)
    student = 3 * forward_flops(shape, tokens, batch, head_on_every_token=False)
    return student + forward_flops(shape, tokens, batch, head_on_every_token=False)  # teacher


def long_microstep_bytes(
    shape: Shape,
    tokens: int,
    *,
    ranks: int = 1,
    cp: int = 1,
    teacher_bytes: int = 2,
    chunk: int = 4096,
) -> dict[str, float]:
    """The README's estimate of one rank's peak in a long micro-step, by part, in GiB."""
    local = tokens // cp
    parts = {
        "state": shape.params * (4 + 4 + 8 + teacher_bytes) / ranks,
        "checkpointed_inputs": shape.layers * local * shape.hidden * 2,
        "one_layer": local * (5 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate) * 2,
        "ring_kv": 2 * tokens * shape.kv_dim * 2 if cp > 1 else 0,
        "head_chunk": min(chunk or local, local) * shape.vocab * 4,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out
