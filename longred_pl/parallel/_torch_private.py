"""Every private torch API that context parallelism uses, in one place.

Checked on torch 2.13.0 (CPU build, gloo). The ring algorithm is torch's own
(``torch.distributed.tensor.experimental._context_parallel._attention``): the public
``context_parallel()`` entry point refuses CPU tensors and dispatches through DTensor, but
the two templated functions underneath take plain local tensors, a process group and an
attention op, which is all we need. If a torch upgrade moves them, this is the only file
to change; :data:`CHECKED_TORCH` records the range it was verified on and a warning is
emitted once outside it.

Uses:
* ``_templated_ring_attention`` / ``_templated_ring_attention_backward``: the ring;
* ``_cp_options``: their global switches (load balancing, fp32 merge, rotation method),
  pinned for the duration of each call so that another user of torch CP cannot change
  the algorithm under us;
* ``DeviceMesh._flatten``: the flattened (dp, cp) mesh that FSDP2 shards over (as
  torchtitan does).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

CHECKED_TORCH = ("2.13", "2.13")  # inclusive (major.minor) range this file was verified on

try:
    from torch.distributed.tensor.experimental._context_parallel import _attention as _cp
except ImportError as err:  # pragma: no cover - depends on the installed torch
    raise ImportError(
        f"longred_pl.parallel needs torch's ring attention "
        f"(torch.distributed.tensor.experimental._context_parallel._attention), checked on "
        f"torch {CHECKED_TORCH[0]}-{CHECKED_TORCH[1]}; installed torch {torch.__version__} "
        f"does not have it"
    ) from err


def _check_version() -> None:
    minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    as_tuple = tuple(int(p) for p in minor.split("."))
    low, high = (tuple(int(p) for p in v.split(".")) for v in CHECKED_TORCH)
    if not low <= as_tuple <= high:
        warnings.warn(
            f"longred_pl.parallel uses private torch ring-attention APIs checked on torch "
            f"{CHECKED_TORCH[0]}-{CHECKED_TORCH[1]}; found {torch.__version__}. Run "
            f"tests/integration/test_cp_attention.py before training.",
            stacklevel=2,
        )


_check_version()


@contextlib.contextmanager
def _pinned_options() -> Iterator[None]:
    """Head-tail load balancing on, fp32 merge on, all-gather rotation, then restore."""
    opts = _cp._cp_options
    saved = (opts.enable_load_balance, opts.convert_to_f32, opts.rotate_method)
    opts.enable_load_balance = True
    opts.convert_to_f32 = True
    opts.rotate_method = _cp._RotateMethod.ALL_GATHER
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
        return _cp._templated_ring_attention(
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
        return _cp._templated_ring_attention_backward(
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


def flatten_mesh(mesh: Any, name: str) -> Any:
    """``mesh._flatten(name)``: one mesh dimension spanning all of ``mesh``'s dimensions."""
    return mesh._flatten(name)
