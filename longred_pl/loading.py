"""Loading a model that scales: built without weights, sharded, then filled rank by rank.

``from_pretrained`` materialises the whole model on every rank before anything is sharded:
for Llama-3-8B, student + teacher in fp32 are ~64 GB of host memory per rank. Here
(:func:`load_model`):

1. the model is built from its config with its *parameters* on the meta device (no
   memory, no initialisation) and its *buffers* real (RoPE ``inv_freq`` and the like are
   computed from the config, as ``from_pretrained`` would);
2. ``shard`` (e.g. FSDP2's ``fully_shard`` per decoder layer and root) turns each
   parameter into this rank's shard, still on meta;
3. ``to_empty`` allocates exactly that shard on the target device (the buffers are put
   back: ``to_empty`` would leave them uninitialised);
4. every parameter is filled from the Hugging Face safetensors files, each rank reading
   only the rows it holds (``safe_open(...).get_slice``; one tensor's file is mapped at a
   time, so the transient is one slice).

Without ``shard`` the same steps load a whole model straight onto ``device`` (one copy,
no CPU detour for a GPU). Tied weights are one parameter (filled once); a tensor the
files lack, or a directory without safetensors, is a :class:`UserError` naming it.

FSDP2 shards dim 0 as ``torch.chunk`` does: rank ``r`` of ``w`` holds rows
``[r c, min((r + 1) c, n))`` with ``c = ceil(n / w)`` (checked against the local shape).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from longred_pl.errors import UserError


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside the block, every registered parameter lands on the meta device; buffers do not."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            kept = module._parameters[name]
            module._parameters[name] = type(kept)(kept.to("meta"), requires_grad=kept.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def safetensors_index(path: str) -> dict[str, str]:
    """``{tensor name: file}`` of a Hugging Face directory's safetensors weights."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as handle:
            weight_map = json.load(handle)["weight_map"]
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.isfile(single):
        raise UserError(
            f"model.teacher_path: {path!r} has no safetensors weights (model.safetensors or "
            f"model.safetensors.index.json), which sharded loading reads; re-save the model "
            f"with save_pretrained(..., safe_serialization=True)"
        )
    from safetensors import safe_open

    with safe_open(single, framework="pt") as handle:
        return {name: single for name in handle.keys()}  # noqa: SIM118 (not a dict)


def shard_rows(param: torch.Tensor) -> tuple[int, int] | None:
    """Rows ``[start, stop)`` of dim 0 this rank holds of a DTensor sharded on dim 0, else None."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return None
    placements = param.placements
    if len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise UserError(f"sharded loading supports FSDP2's Shard(0) only, got {placements}")
    rows, world = param.shape[0], param.device_mesh.size()
    rank = param.device_mesh.get_local_rank()
    chunk = math.ceil(rows / world)
    start, stop = min(rank * chunk, rows), min((rank + 1) * chunk, rows)
    local = param.to_local().shape[0]
    if local != stop - start:
        raise RuntimeError(
            f"shard of {tuple(param.shape)} on rank {rank}: {local} rows, "
            f"expected {stop - start} (torch.chunk)"
        )
    return start, stop


def _read(file: str, name: str, rows: tuple[int, int] | None) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:
        if rows is None:
            return handle.get_tensor(name)
        return handle.get_slice(name)[rows[0] : rows[1]]


@torch.no_grad()
def fill_from_safetensors(model: nn.Module, path: str) -> None:
    """Copy every parameter (this rank's rows of a sharded one) and saved buffer from ``path``."""
    files = safetensors_index(path)
    state = dict(model.named_parameters())
    persistent = {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in state}
    missing = [name for name in state if name not in files]
    if missing:
        raise UserError(
            f"model.teacher_path: {path!r} has no tensor for {len(missing)} parameter(s) of "
            f"{type(model).__name__} (e.g. {missing[0]!r}); sharded loading needs the names "
            f"that save_pretrained writes"
        )
    for name, target in [*state.items(), *persistent.items()]:
        if name not in files:
            continue  # a buffer the files do not hold keeps its computed value
        rows = shard_rows(target)
        local = target.to_local() if rows is not None else target
        local.copy_(_read(files[name], name, rows).to(local.dtype))


def _tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (tied embeddings and LM head)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _retie(model: nn.Module, tied: list[list[str]]) -> None:
    """Point every name of a tied group at its first name's parameter again."""
    for first, *others in tied:
        param = model.get_parameter(first)
        for name in others:
            module, leaf = _owner(model, name)
            module._parameters[leaf] = param


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The submodule that holds dotted ``name``, and the name's last part."""
    owner, _, leaf = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), leaf


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module, leaf = _owner(model, name)
    module._buffers[leaf] = value


def load_model(
    path: str,
    config: Any,
    *,
    dtype: torch.dtype,
    attn_implementation: str,
    trust_remote_code: bool,
    device: torch.device,
    shard: Callable[[nn.Module], Any] | None = None,
) -> nn.Module:
    """The causal LM at ``path`` under ``config``, sharded by ``shard``, filled on ``device``.

    ``shard`` runs on the model while its parameters are on meta (FSDP2's ``fully_shard``
    handles that); every rank must call this function (the fill reads per rank, the
    sharding is a collective).
    """
    from transformers import AutoModelForCausalLM

    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    if shard is not None:
        shard(model)
    buffers = {name: b.detach().to(device) for name, b in model.named_buffers()}
    tied = _tied_names(model)
    model.to_empty(device=device)  # one new tensor per module: tied weights come apart
    for name, value in buffers.items():
        _set_buffer(model, name, value)
    _retie(model, tied)
    fill_from_safetensors(model, path)
    return model
