"""Loading the teacher and the student, and reading selected hidden states.

The teacher is the original model, frozen. The student is the same weights loaded with
a RoPE-extended config (``rope.extend_rope``). Both come from a local Hugging Face
directory; nothing is downloaded (``local_files_only=True``) and ``trust_remote_code``
stays off unless the user sets it.

Reading hidden states and running the LM head inside the forward live in
:mod:`longred_pl.forward` (``capture_hidden_states``, ``run_model``); freezing the
teacher in :mod:`longred_pl.teacher`; sharding under each strategy in
:mod:`longred_pl.fsdp`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from longred_pl.errors import UserError
from longred_pl.forward import capture_hidden_states, decoder_parts

__all__ = [
    "Placement",
    "capture_hidden_states",
    "decoder_parts",
    "freeze",
    "load_causal_lm",
    "load_config",
    "load_student",
    "resolve_device",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_config(path: str, trust_remote_code: bool = False, field: str = "model.teacher_path"):
    """The Hugging Face config at ``path``, with a clear error if it is not there."""
    from transformers import AutoConfig

    if not os.path.isdir(path):
        raise UserError(
            f"{field}: {path!r} is not a directory; point it at a local Hugging Face model "
            f"directory (config.json + weights), e.g. one written by `save_pretrained` "
            f"or `longred build-teacher`"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(
            f"{field}: {path!r} has no config.json; it is not a Hugging Face model directory"
        )
    return AutoConfig.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code
    )


def check_attn_implementation(name: str) -> str:
    """Fail fast when flash-attn is asked for but cannot run here; register ``longred_ring``."""
    if name == "longred_ring":
        import longred_pl.parallel  # noqa: F401  (registers the ring attention with transformers)
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            raise UserError(
                "model.attn_implementation=flash_attention_2 needs flash-attn: "
                "`pip install 'longred_pl[flash]'` on a CUDA machine, or use sdpa"
            ) from err
        if not torch.cuda.is_available():
            raise UserError(
                "model.attn_implementation=flash_attention_2 needs a CUDA device; use sdpa"
            )
    return name


@dataclass(frozen=True)
class Placement:
    """Where a model is built (``fsdp.placement`` chooses it for a run).

    Attributes:
        device: ``None``: ``from_pretrained`` on the CPU (FSDP1 and the tools; a wrapper
            moves it later). Else the model is built without weights, ``shard``-ed, and
            filled on ``device`` from the safetensors files (``loading.load_model``).
        shard: applied to the weightless model (FSDP2's ``fully_shard``), or None.
    """

    device: torch.device | None = None
    shard: Callable[[nn.Module], Any] | None = None


def load_causal_lm(
    path: str,
    config: Any,
    attn_implementation: str = "sdpa",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    placement: Placement | None = None,
) -> nn.Module:
    """The causal LM at the local directory ``path`` under ``config``, placed by ``placement``.

    Default: ``AutoModelForCausalLM.from_pretrained`` on the CPU.
    """
    attn_implementation = check_attn_implementation(attn_implementation)
    if placement is not None and placement.device is not None:
        from longred_pl.loading import load_model

        return load_model(
            path,
            config,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            device=placement.device,
            shard=placement.shard,
        )
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path,
        config=config,
        dtype=DTYPES[dtype],
        attn_implementation=attn_implementation,
        local_files_only=True,
        trust_remote_code=trust_remote_code,
    )


def load_student(
    path: str,
    config: Any,
    attn_implementation: str,
    dtype: str,
    trust_remote_code: bool,
    gradient_checkpointing: bool,
    placement: Placement | None = None,
) -> nn.Module:
    """The student: the teacher's weights under the extended ``config``, ready to train.

    Its logit transform is checked against the library's formula on a toy of its config
    (``forward.check_model_head``);
    no KV cache; train mode; decoder layers recomputed in backward with ``gradient_checkpointing``.
    """
    from longred_pl.forward import check_model_head

    model = load_causal_lm(path, config, attn_implementation, dtype, trust_remote_code, placement)
    check_model_head(model, trust_remote_code)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.config.use_cache = False
    # from_pretrained returns eval mode and Lightning 2.6 keeps modes as they are: in eval
    # mode HF skips gradient checkpointing (it checks ``self.training``) and dropout
    return model.train()


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU) or a torch device name (``--device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu or auto")
    return device


def freeze(model: nn.Module) -> nn.Module:
    """Frozen and in eval mode: no grads, no dropout. Returns the same module."""
    model.requires_grad_(False)
    model.eval()
    return model
