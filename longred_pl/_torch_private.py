"""Every private torch API that context parallelism uses, in one place.

The ring algorithm is torch's own: the public ``context_parallel()`` entry point refuses
CPU tensors and dispatches through DTensor, but the two templated functions underneath
take plain local tensors, a process group and an attention op, which is all we need. If
a torch upgrade moves them, this is the only file to change.

Checked by reading each version's source (:data:`CHECKED_TORCH`, a warning is emitted
once outside that range):

* torch 2.13.0 (CPU build, also run here) and 2.11.0 (the wheel's source; the GPU
  machines this project is lent run 2.11.0+cu130): the ring lives in
  ``torch.distributed.tensor.experimental._context_parallel._attention``;
  ``_templated_ring_attention(group, seq_dim, op, query, key, value, is_causal, **kwargs)``
  and ``_templated_ring_attention_backward(group, seq_dim, op, grad_out, grad_out_name,
  query, key, value, out, logsumexp, is_causal, **kwargs)`` have the same parameters and
  the same loop in both (they differ only in ``assert`` vs ``raise AssertionError``), as
  do ``_cp_options``, ``_RotateMethod``, ``_SDPAMerger`` and torch's CUDA ring wrappers
  (``_scaled_dot_product_ring_{flash,efficient}_attention[_backward]``), whose calling
  conventions the CUDA kernel adapters of ``ring_attention`` follow;
* torch 2.8.0: the ring lives in ``torch.distributed.tensor.experimental._attention`` and
  takes a ``DeviceMesh``, not a process group: refused with an error naming the versions
  (:func:`locate_ring`).

Uses:
* ``_templated_ring_attention`` / ``_templated_ring_attention_backward``: the ring;
* ``_cp_options``: their global switches (load balancing, fp32 merge, rotation method),
  pinned for the duration of each call so that another user of torch CP cannot change
  the algorithm under us;
* ``_SDPAMerger``: the ring's log-sum-exp merge, reused by ``ring_simulation``;
* ``DeviceMesh._flatten``: the flattened (dp, cp) mesh that FSDP2 shards over (as
  torchtitan does).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

CHECKED_TORCH = ("2.11", "2.13")  # inclusive (major.minor) range this file was verified on
# Where torch has kept its ring: the layout this file uses first, then older ones.
RING_MODULE = "torch.distributed.tensor.experimental._context_parallel._attention"
OLD_RING_MODULE = "torch.distributed.tensor.experimental._attention"  # torch <= 2.8: a mesh


def locate_ring(import_module: Callable[[str], ModuleType] = importlib.import_module) -> ModuleType:
    """torch's ring-attention module, if it has the layout and signature this file uses.

    Raises:
        ImportError: naming the installed torch, what was found, and the checked versions.
    """
    wanted = f"torch {CHECKED_TORCH[0]}-{CHECKED_TORCH[1]} (checked)"
    try:
        module = import_module(RING_MODULE)
    except ImportError:
        module = None
    if module is not None:
        first = next(iter(inspect.signature(module._templated_ring_attention).parameters))
        if first == "group":
            return module
        found = f"{RING_MODULE}._templated_ring_attention takes {first!r}, not a process group"
    else:
        try:
            import_module(OLD_RING_MODULE)
            found = f"its ring in {OLD_RING_MODULE}, taking a DeviceMesh (torch <= 2.8)"
        except ImportError:
            found = "no ring attention at all"
    raise ImportError(
        f"longred_pl.parallel needs torch's ring attention ({RING_MODULE}, taking a process "
        f"group), as in {wanted}; installed torch {torch.__version__} has {found}"
    )


@functools.cache
def _ring() -> ModuleType:
    """torch's ring module, located (and the torch version checked) at the first use, so that
    importing this file costs nothing on a torch without it: only a CP run needs the ring."""
    _check_version()
    return locate_ring()


def _check_version() -> None:
    minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    as_tuple = tuple(int(p) for p in minor.split("."))
    low, high = (tuple(int(p) for p in v.split(".")) for v in CHECKED_TORCH)
    if not low <= as_tuple <= high:
        warnings.warn(
            f"longred_pl's context parallelism uses private torch ring-attention APIs checked on torch "
            f"{CHECKED_TORCH[0]}-{CHECKED_TORCH[1]}; found {torch.__version__}. Run "
            f"tests/integration/test_cp_attention.py before training.",
            stacklevel=2,
        )


@contextlib.contextmanager
def _pinned_options() -> Iterator[None]:
    """Head-tail load balancing on, fp32 merge on, all-gather rotation, then restore."""
    opts = _ring()._cp_options
    saved = (opts.enable_load_balance, opts.convert_to_f32, opts.rotate_method)
    opts.enable_load_balance = True
    opts.convert_to_f32 = True
    opts.rotate_method = _ring()._RotateMethod.ALL_GATHER
    try:
        yield
    finally:
        opts.enable_load_balance, opts.convert_to_f32, opts.rotate_method = saved


def ring_forward(
    group: dist.ProcessGroup,
    op: Callable[..., tuple[torch.Tensor, ...]],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """Causal, load-balanced ring forward: ``(out, logsumexp, *rest of the last op call)``.

    ``op(q, k, v, is_causal=..., **kwargs)`` is an SDPA kernel returning ``(out, lse, ...)``.
    Every rank must hold its two head-tail chunks concatenated (``sharding.shard_sequence``).
    """
    with _pinned_options():
        return _ring()._templated_ring_attention(
            group, 2, op, query, key, value, is_causal=True, **kwargs
        )


def ring_backward(
    group: dist.ProcessGroup,
    op: Callable[..., tuple[torch.Tensor, ...]],
    grad_out_name: str,
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    out: torch.Tensor,
    logsumexp: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, ...]:
    """Backward of :func:`ring_forward`: ``(grad_q, grad_k, grad_v, *rest)``."""
    with _pinned_options():
        return _ring()._templated_ring_attention_backward(
            group,
            2,
            op,
            grad_out,
            grad_out_name,
            query,
            key,
            value,
            out,
            logsumexp,
            is_causal=True,
            **kwargs,
        )


def sdpa_merger(seq_dim: int = 2) -> Any:
    """torch's ring merger: ``step(out, lse, partial)`` per block, ``results()`` -> (out, lse)."""
    return _ring()._SDPAMerger(True, seq_dim=seq_dim)


def flatten_mesh(mesh: Any, name: str) -> Any:
    """``mesh._flatten(name)``: one mesh dimension spanning all of ``mesh``'s dimensions."""
    return mesh._flatten(name)


# --- aten SDPA kernels --------------------------------------------------------------------
# The ring calls these private aten ops directly (torch's own CUDA ring wrappers call the
# same ones); their argument lists were read on CHECKED_TORCH (ring_attention's adapters).
SDPA_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_efficient_attention_backward",
)


def sdpa_op(name: str) -> Any:
    """``torch.ops.aten.<name>`` for one of :data:`SDPA_OPS`.

    Raises:
        ImportError: this torch has no such op (naming the installed version).
    """
    if name not in SDPA_OPS:
        raise ValueError(f"{name!r} is not one of the SDPA ops this file vouches for: {SDPA_OPS}")
    try:
        return getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError) as err:
        raise ImportError(
            f"torch {torch.__version__} has no aten.{name}; the ring attention was checked on "
            f"torch {CHECKED_TORCH[0]}-{CHECKED_TORCH[1]}"
        ) from err


# --- nn.Module internals ------------------------------------------------------------------
# LongReDModule overrides ``nn.Module._apply(fn, recurse=True)`` (the one method behind
# ``.to()``, ``.cuda()``, ``.half()``...) so that the teacher it holds without registering
# it moves with it; tests/unit/test_private_guards.py checks the signature it overrides.
MODULE_APPLY_PARAMETERS = ("self", "fn", "recurse")
