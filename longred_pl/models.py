"""Loading the teacher and the student, and reading selected hidden states.

The teacher is the original model, frozen. The student is the same weights loaded with
a RoPE-extended config (``rope.extend_rope``). Both come from a local Hugging Face
directory; nothing is downloaded (``local_files_only=True``) and ``trust_remote_code``
stays off unless the user sets it.

Hidden-state indices follow LONGRED.md: 0 is the embedding output, ``l`` in
``1..n_layers-1`` the output of decoder layer ``l``, ``n_layers`` the final normalised
output. :class:`capture_hidden_states` records only the requested indices with forward
hooks, so the other ``n_layers + 1 - k`` states are never kept alive (unlike
``output_hidden_states=True``), and the LM head is never run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_config(path: str, trust_remote_code: bool = False, field: str = "model.teacher_path"):
    """The Hugging Face config at ``path``, with a clear error if it is not there."""
    from transformers import AutoConfig

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{field}: {path!r} is not a directory; point it at a local Hugging Face model "
            f"directory (config.json + weights), e.g. one written by `save_pretrained` "
            f"or `longred build-teacher`"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{field}: {path!r} has no config.json; it is not a Hugging Face model directory"
        )
    return AutoConfig.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code
    )


def check_attn_implementation(name: str) -> str:
    """Fail fast when flash-attn is asked for but cannot run here."""
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "model.attn_implementation=flash_attention_2 needs flash-attn: "
                "`pip install 'longred_pl[flash]'` on a CUDA machine, or use sdpa"
            ) from err
        if not torch.cuda.is_available():
            raise RuntimeError(
                "model.attn_implementation=flash_attention_2 needs a CUDA device; use sdpa"
            )
    return name


def load_causal_lm(
    path: str,
    config: Any,
    attn_implementation: str = "sdpa",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` from a local directory with ``config``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path,
        config=config,
        dtype=DTYPES[dtype],
        attn_implementation=check_attn_implementation(attn_implementation),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
    )


def freeze(model: nn.Module) -> nn.Module:
    """Frozen and in eval mode: no grads, no dropout. Returns the same module."""
    model.requires_grad_(False)
    model.eval()
    return model


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, Sequence[nn.Module], nn.Module]:
    """``(base_model, embed_tokens, layers, final_norm)`` of a Llama-like causal LM."""
    base = model.base_model
    missing = [n for n in ("embed_tokens", "layers", "norm") if not hasattr(base, n)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} has no {missing} on its base model; LongReD supports "
            f"Llama-like decoders (Llama, Mistral, Qwen2, ...)"
        )
    return base, base.embed_tokens, base.layers, base.norm


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class capture_hidden_states:  # noqa: N801  (used as a context manager, reads like a function)
    """Record hidden states ``indices`` during a forward pass of ``model``.

    Example:
        >>> with capture_hidden_states(model, [1, n_layers]) as states:
        ...     model.base_model(input_ids=ids)
        >>> states[n_layers].shape  # [B, T, D]
    """

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        _, embed, layers, norm = decoder_parts(model)
        n_layers = len(layers)
        self.states: dict[int, torch.Tensor] = {}
        self.targets: list[tuple[int, nn.Module]] = []
        for i in sorted(set(indices)):
            if not 0 <= i <= n_layers:
                raise ValueError(f"hidden-state index {i} outside [0, {n_layers}]")
            module = embed if i == 0 else norm if i == n_layers else layers[i - 1]
            self.targets.append((i, module))
        self.handles: list[Any] = []

    def _hook(self, index: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.states[index] = _first(output)

        return hook

    def __enter__(self) -> dict[int, torch.Tensor]:
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in self.targets]
        return self.states

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def shard_fsdp2(model: nn.Module, mesh: Any, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer, then the whole model (the root unit).

    The root unit holds the embeddings, the final norm and the LM head; it is gathered for
    the whole forward and backward, so ``get_output_embeddings().weight`` can be used by the
    chunked loss after a forward. Frozen models (the teacher) are sharded the same way.

    Args:
        model: a Llama-like causal LM.
        mesh: the data-parallel device mesh (``LightningModule.device_mesh["data_parallel"]``).
        param_dtype: compute dtype of gathered parameters (e.g. bf16); reductions stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32
        )
    _, _, layers, _ = decoder_parts(model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model
