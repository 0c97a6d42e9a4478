"""Sharding the student and the teacher under Lightning's strategies, and what that changes.

``LongReDModule.configure_model`` builds both models where :func:`placement` says and
shards them under the run's strategy:

* FSDP2 (``ModelParallelStrategy``, ``longred_pl.parallel.ContextParallelStrategy``):
  ``fully_shard`` every decoder layer, then the whole model (:func:`shard_fsdp2`), for
  the student and the teacher alike, over the data-parallel mesh (``dp_cp`` under
  context parallelism), while the models have no weights yet; each rank then reads only
  its rows from the checkpoint files (``longred_pl/loading.py``);
* FSDP1 (``FSDPStrategy``): the student is Lightning's to wrap (one root unit over the
  ``LightningModule``, the strategy's wrap policy inside it; the training step then runs
  inside the root's forward, which FSDP1's backward bookkeeping needs). The teacher is
  held outside the ``LightningModule``'s submodules (``longred_pl.teacher`` docstring), so
  the module wraps it as a root of its own with the same settings (:func:`wrap_teacher`);
  it never enters the student's root unit, its flat parameters or its checkpoints. Both
  are loaded whole on the CPU first (``from_pretrained``);
* anything else (one device, DDP): no sharding; the models are filled directly on the
  strategy's device.

What the sharded models need:

* buffers keep their dtype: RoPE ``inv_freq`` must stay fp32 (in bf16 the rotation angle
  at position 32768 drifts by tens of radians, ``checks.check_precision``). FSDP2's
  ``MixedPrecisionPolicy`` never casts buffers; FSDP1's ``MixedPrecision`` does
  (Lightning's ``bf16-mixed`` plugin sets ``buffer_dtype=bfloat16``), so
  :func:`prepare_strategy` gives the strategy the plugin's policy without the buffer cast
  (:func:`fsdp1_mixed_precision`). Gradients are reduced in fp32 under both;
* weight decay by parameter *name* (:func:`matrix_parameter_names`, read before
  sharding): FSDP1 with ``use_orig_params`` exposes each rank's shard as 1-D views when
  Lightning builds the optimizer, so ``ndim`` no longer tells a matrix from a norm weight;
* gradient clipping by :func:`clip_grad_norm`: FSDP1 needs its root's own
  ``clip_grad_norm_`` (Lightning's FSDP1 precision plugin refuses to clip by norm);
  FSDP2's DTensor gradients, DDP and one device go through ``torch.nn.utils``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from longred_pl import _lightning_private
from longred_pl.errors import UserError
from longred_pl.forward import decoder_parts

# wrapper prefixes that FSDP1, activation checkpointing and torch.compile put in names
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


# ---------------------------------------------------------------------------- FSDP2
def shard_fsdp2(model: nn.Module, mesh: Any, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer, the embeddings, the LM head, then the root.

    Untied embeddings and LM head are units of their own (as torchtitan shards them): each
    is gathered only while it runs (the embeddings at the start of the forward and for
    their gradient at the end of the backward; the head during the loss, whose gradients
    are formed in the forward), instead of for the whole step in the root unit (measured:
    ``benchmarks.scale_memory``). Tied ones stay in the root with the final norm. Frozen
    models (the teacher) are sharded the same way.

    Args:
        model: a Llama-like causal LM.
        mesh: the data-parallel device mesh (``dp_cp`` under context parallelism).
        param_dtype: compute dtype of gathered parameters (e.g. bf16); reductions stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32
        )
    _, embed, layers, _ = decoder_parts(model)
    for layer in layers:
        fully_shard(layer, **kwargs)
    head = model.get_output_embeddings()
    if head is not None and head.weight is not embed.weight:  # untied: units of their own
        fully_shard(embed, **kwargs)
        fully_shard(head, **kwargs)
    fully_shard(model, **kwargs)
    return model


def data_parallel_mesh(module: Any) -> Any:
    """The mesh FSDP2 shards over: ``data_parallel`` (``dp_cp`` under CP), else None."""
    try:
        mesh = module.device_mesh
    except (AttributeError, RuntimeError):
        return None
    if mesh is None:
        return None
    names = mesh.mesh_dim_names or ()
    if "context_parallel" in names:  # FSDP2 shards over dp x cp (as torchtitan does)
        from longred_pl.parallel import fsdp_mesh

        return fsdp_mesh(mesh)
    return mesh["data_parallel"] if "data_parallel" in names else mesh


# ---------------------------------------------------------------------------- FSDP1
def is_fsdp1_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` is Lightning's ``FSDPStrategy`` (FSDP1), or a subclass of it."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def prepare_strategy(strategy: Any) -> None:
    """Before any model loads (``LongReDModule.setup``): FSDP1's settings, checked and fixed.

    Refuses ``use_orig_params: false``; sets the strategy's mixed precision to
    :func:`fsdp1_mixed_precision` (Lightning reads it when it wraps the student).
    Other strategies are left as they are.
    """
    if not is_fsdp1_strategy(strategy):
        return
    if not strategy.kwargs.get("use_orig_params"):
        raise UserError(
            "trainer.strategy: FSDPStrategy needs use_orig_params: true (in the YAML: "
            "trainer.strategy.dict_kwargs.use_orig_params: true): weight decay applies to "
            "matrices only, which needs the original parameters, not FSDP1's flat ones"
        )
    strategy.mixed_precision = fsdp1_mixed_precision(strategy)


def fsdp1_mixed_precision(strategy: Any) -> Any:
    """The strategy's ``MixedPrecision`` without the buffer cast, reducing in fp32.

    A policy the user passed (``FSDPStrategy(mixed_precision=...)``) is used as given,
    unless it casts buffers to 16 bits: that is refused.
    """
    policy = strategy.mixed_precision_config
    if policy is None:
        return None
    low = (torch.bfloat16, torch.float16)
    if strategy.mixed_precision is not None:
        if policy.buffer_dtype in low:
            raise UserError(
                f"trainer.strategy.mixed_precision: buffer_dtype={policy.buffer_dtype} casts "
                f"RoPE inv_freq to 16 bits (rotation angles at long positions off by radians); "
                f"set buffer_dtype: null"
            )
        return policy
    reduce = torch.float32 if policy.param_dtype in low else policy.reduce_dtype
    return dataclasses.replace(policy, buffer_dtype=None, reduce_dtype=reduce)


def wrap_fsdp1(model: nn.Module, strategy: Any) -> nn.Module:
    """``model`` as its own FSDP1 root, with ``strategy``'s settings (module docstring)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(
        model,
        cpu_offload=strategy.cpu_offload,
        mixed_precision=fsdp1_mixed_precision(strategy),
        sharding_strategy=strategy.sharding_strategy,
        device_id=strategy.root_device,  # a device, not Lightning's index: CPU works too
        **strategy.kwargs,
    )


# ------------------------------------------------------------------------ dispatch
def placement(module: Any) -> Any:
    """Where ``module``'s models are built (``models.Placement``), by its strategy.

    FSDP2 (a data-parallel mesh): built without weights, ``fully_shard``-ed, each rank
    filled with its rows (``loading``). FSDP1: ``from_pretrained`` on the CPU (Lightning
    wraps the student, :func:`wrap_fsdp1` the teacher). One device, DDP: built without
    weights and filled on the strategy's device. No trainer: the same, on the CPU.
    """
    from longred_pl.models import Placement

    trainer = _lightning_private.attached_trainer(module)
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return Placement(torch.device("cpu"))
    if is_fsdp1_strategy(strategy):
        return Placement(None)
    mesh = data_parallel_mesh(module)
    if mesh is None:
        return Placement(strategy.root_device)
    dtype = torch.bfloat16 if str(trainer.precision).startswith("bf16") else None
    return Placement(strategy.root_device, lambda model: shard_fsdp2(model, mesh, dtype))


def wrap_teacher(module: Any, teacher: nn.Module) -> nn.Module:
    """Under FSDP1, the teacher as an FSDP1 root of its own (:func:`wrap_fsdp1`); else as is."""
    trainer = _lightning_private.attached_trainer(module)
    strategy = getattr(trainer, "strategy", None)
    if strategy is not None and is_fsdp1_strategy(strategy):
        return wrap_fsdp1(teacher, strategy)
    return teacher


# ------------------------------------------------------------------ names, clipping
def clean_name(name: str) -> str:
    """A parameter name without FSDP1 / activation-checkpointing / compile wrapper parts."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def matrix_parameter_names(model: nn.Module) -> frozenset[str]:
    """Names of ``model``'s trainable parameters with 2 or more dimensions (read before sharding)."""
    return frozenset(
        clean_name(n) for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2
    )


@torch.no_grad()
def clip_grad_norm(module: Any, max_norm: float | None) -> torch.Tensor:
    """Scale the student's gradients to a total 2-norm <= ``max_norm``; the norm before.

    ``max_norm=None`` only measures. Every rank calls it (the norm is reduced over the
    ranks that shard the student). FSDP1: the root unit's ``clip_grad_norm_`` (the root
    wraps the ``LightningModule``, whose only trainable parameters are the student's);
    FSDP2 (DTensor gradients), DDP and one device: ``torch.nn.utils.clip_grad_norm_``.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    limit = math.inf if max_norm is None else float(max_norm)
    trainer = _lightning_private.attached_trainer(module)
    root = getattr(getattr(trainer, "strategy", None), "model", None)
    if isinstance(root, FullyShardedDataParallel):
        norm = root.clip_grad_norm_(limit)
    else:
        params = [p for p in module.student.parameters() if p.grad is not None]
        if not params:
            return torch.zeros(())
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
    full = getattr(norm, "full_tensor", None)
    return (full() if callable(full) else norm).detach().float()
