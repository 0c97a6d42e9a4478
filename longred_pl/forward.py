"""One forward path for every loss: hidden states by hooks, the LM head inside the forward.

Every loss and metric of the library runs the causal LM's own ``forward`` (so sharding
wrappers such as FSDP1 ``FullyShardedDataParallel`` and FSDP2 ``fully_shard`` gather
their parameters through their hooks) and reads what it needs *while the forward runs*:

* hidden states ``indices`` (docs/method.md semantics: 0 = embeddings, ``l`` = output of
  decoder layer ``l``, ``n_layers`` = final normed output) are captured by forward hooks
  on those modules only (:class:`capture_hidden_states`), so the other states are never
  kept alive;
* a function of the final hidden state and the LM head (the chunked next-token loss, the
  per-token NLL) runs in a forward *pre*-hook of the output embedding, i.e. inside the
  root module's forward, where every wrapper has the head's weight gathered: the loss is
  correct by construction under FSDP1 with ``use_orig_params`` (where the weight may be
  a flat shard once the forward returns), FSDP2 and DDP. The head itself then projects
  one position only, so the ``[B, T, V]`` logits are never formed.

Skipped position ids are passed with an explicit all-ones ``attention_mask``:
transformers 5 otherwise reads any gap in ``position_ids`` as the start of a new packed
sequence and blocks attention across it (NOTES.md).

Shape legend: B batch, T tokens, D hidden size, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from longred_pl.errors import UserError
from longred_pl.losses import LogitHead

HeadFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], Any]


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, Sequence[nn.Module], nn.Module]:
    """``(base_model, embed_tokens, layers, final_norm)`` of a Llama-like causal LM."""
    base = model.base_model
    missing = [n for n in ("embed_tokens", "layers", "norm") if not hasattr(base, n)]
    if missing:
        raise UserError(
            f"model.teacher_path: {type(model).__name__} has no {missing} on its base model; "
            f"LongReD supports Llama-like decoders (Llama, Mistral, Qwen2, Gemma, ...)"
        )
    return base, base.embed_tokens, base.layers, base.norm


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class capture_hidden_states:  # noqa: N801  (used as a context manager, reads like a function)
    """Record hidden states ``indices`` during a forward pass of ``model``.

    Example:
        >>> with capture_hidden_states(model, [1, n_layers]) as states:
        ...     model(input_ids=ids, logits_to_keep=1)
        >>> states[n_layers].shape  # [B, T, D]
    """

    def __init__(self, model: nn.Module, indices: Sequence[int]) -> None:
        _, embed, layers, norm = decoder_parts(model)
        n_layers = len(layers)
        self.states: dict[int, torch.Tensor] = {}
        self.targets: list[tuple[int, nn.Module]] = []
        for i in sorted(set(indices)):
            if not 0 <= i <= n_layers:
                raise UserError(
                    f"model.distill_layers: hidden-state index {i} is outside [0, {n_layers}]"
                )
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


class _HeadCall:
    """A forward pre-hook on the LM head: ``fn(hidden_BTD, weight_VD, bias_V)``, then 1 position."""

    def __init__(self, fn: HeadFn) -> None:
        self.fn, self.result, self.called = fn, None, False

    def __call__(self, head: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden_BTD = args[0]
        self.result = self.fn(hidden_BTD, head.weight, getattr(head, "bias", None))
        self.called = True
        return (hidden_BTD[:, -1:], *args[1:])


def run_model(
    model: nn.Module,
    input_ids_BT: torch.Tensor,
    indices: Sequence[int] = (),
    position_ids_BT: torch.Tensor | None = None,
    head_fn: HeadFn | None = None,
    packed: bool = False,
) -> tuple[dict[int, torch.Tensor], Any]:
    """The model's own forward; returns ``(hidden states indices, head_fn's result)``.

    Args:
        model: a Llama-like Hugging Face causal LM (possibly FSDP/DDP wrapped inside).
        input_ids_BT: token ids.
        indices: hidden-state indices to capture.
        position_ids_BT: position ids (skipped ones for s2l); None = contiguous.
        head_fn: ``fn(final_hidden_BTD, head_weight_VD, head_bias_V)`` run inside the
            forward (see module docstring); None runs the head on one position only.
        packed: ``position_ids`` restart at each document of a packed sample and attention
            must stay within documents. No attention mask is passed then: transformers 5
            reads restarting positions (without a mask or cache) as packed sequences and
            confines attention to each (sdpa, eager, flex; flash-attention by varlen; checked
            in tests/unit/test_document_masks.py). Otherwise an all-ones mask is passed with
            explicit positions, so that skipped positions are not read as boundaries.
    """
    explicit = position_ids_BT is not None and not packed
    mask_BT = torch.ones_like(input_ids_BT) if explicit else None
    head_call = _HeadCall(head_fn) if head_fn is not None else None
    handle = None
    if head_call is not None:
        handle = model.get_output_embeddings().register_forward_pre_hook(head_call)
    try:
        with capture_hidden_states(model, indices) as states:
            model(
                input_ids=input_ids_BT,
                position_ids=position_ids_BT,
                attention_mask=mask_BT,
                use_cache=False,
                logits_to_keep=0 if head_call is not None else 1,
            )
    finally:
        if handle is not None:
            handle.remove()
    if head_call is not None and not head_call.called:
        raise RuntimeError(f"{type(model).__name__}'s forward never called its output embedding")
    return dict(states), None if head_call is None else head_call.result


def logit_head(model: nn.Module) -> LogitHead:
    """The logit transform of ``model`` (scale and soft cap), read from its config.

    Cohere: ``logit_scale``; Granite: ``1 / logits_scaling``; Gemma 2/3:
    ``final_logit_softcapping``. :func:`check_logit_head` verifies the result.
    """
    config = model.config
    scale = float(getattr(model, "logit_scale", None) or getattr(config, "logit_scale", 1.0) or 1.0)
    if getattr(config, "logits_scaling", None):
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return LogitHead(scale=scale, softcap=float(softcap) if softcap else None)


@torch.no_grad()
def check_logit_head(model: nn.Module, head: LogitHead, field: str = "model.teacher_path") -> None:
    """Refuse a model whose own logits differ from ``head(hidden @ W.T + b)``.

    Two forwards of 8 tokens on the model as it is (sharded or not, on its device): the
    library's formula inside the forward, where the head's weight is whole
    (:func:`run_model`), and the model's own logits. A model with another logit transform
    (a bias, scale or cap not covered by :func:`logit_head`) is refused at load instead of
    trained on wrong logits. Every rank of a sharded model must call it (a collective).
    """
    from longred_pl.losses import _project

    config = model.config
    device = next(p for p in model.parameters()).device
    ids_BT = torch.arange(8, device=device)[None] % int(config.vocab_size)

    def formula(hidden_BTD, weight_VD, bias_V):
        return head.logits(_project(hidden_BTD, weight_VD, bias_V))

    ours_BTV = run_model(model, ids_BT, (), None, formula)[1]
    logits_BTV = model(input_ids=ids_BT, use_cache=False, logits_to_keep=0).logits
    reshard = getattr(model, "reshard", None)  # FSDP2 keeps the root gathered after a forward
    if callable(reshard):
        reshard()
    error = float((ours_BTV.float() - logits_BTV.float()).abs().max())
    rel = 1e-3 if logits_BTV.dtype == torch.float32 else 5e-2  # bf16/fp16 weights round
    tol = rel * max(1.0, float(logits_BTV.float().abs().max()))
    if not error <= tol:
        raise UserError(
            f"{field}: {type(model).__name__} computes its logits in a way longred_pl does not "
            f"reproduce (max difference {error:.3g}); supported: lm_head weight/bias, "
            f"logit_scale, logits_scaling, final_logit_softcapping"
        )


def proxy_config(config: Any) -> Any:
    """``config`` shrunk to a toy model: the same class and logit settings, 1 layer, 64 tokens.

    The logit transform of a causal LM is fixed by its class and its config (bias, scale,
    soft cap), not by its weights or sizes, so a toy of the same config computes its
    logits the same way (:func:`check_model_head`).
    """
    import copy

    small = copy.deepcopy(config)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    group = max(1, heads // kv_heads)
    small.num_attention_heads, small.num_key_value_heads = group, 1
    if getattr(small, "head_dim", None) is not None:
        small.head_dim = 8
    small.hidden_size, small.intermediate_size = 8 * group, 16
    small.num_hidden_layers, small.vocab_size = 1, 64
    if isinstance(getattr(small, "layer_types", None), list):
        small.layer_types = small.layer_types[:1]
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(small, name, None)
        if isinstance(value, int) and value >= small.vocab_size:
            setattr(small, name, None)
    return small


def check_model_head(
    model: nn.Module, trust_remote_code: bool = False, field: str = "model.teacher_path"
) -> None:
    """:func:`check_logit_head` on a toy of ``model``'s config, not on ``model`` itself.

    A forward of the real model at load would gather a sharded model's embeddings and head
    twice over (all-gather buffer and parameters: measured 412 MB of a 125M model's rank)
    and, under context parallelism, run a collective: the toy runs on the CPU alone, from
    the global random state's side (``fork_rng``). A config the toy cannot be built from
    falls back to the check on the model itself.
    """
    from transformers import AutoModelForCausalLM

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            toy = AutoModelForCausalLM.from_config(
                proxy_config(model.config),
                attn_implementation="eager",
                dtype=torch.float32,
                trust_remote_code=trust_remote_code,
            )
    except Exception:  # noqa: BLE001  (an unusual config: check the model itself)
        check_logit_head(model, logit_head(model), field)
        return
    if logit_head(toy) != logit_head(model):
        raise RuntimeError(f"toy of {type(model).__name__}: another logit head than the model's")
    check_logit_head(toy, logit_head(toy), field)
