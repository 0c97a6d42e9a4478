"""Context parallelism: one sequence split over several ranks (issue 12).

* ``ring_attention.py``  the ``longred_ring`` attention function (torch's causal ring with
  head-tail load balancing) and the process-wide CP group;
* ``document_attention.py`` attention confined to each packed document (all-gather K/V
  under CP, masked SDPA without), selected by ``longred_ring`` while the process-wide
  document ids are set (``set_document_ids`` / ``document_mask``);
* ``sharding.py``        head-tail split of input ids / position ids / shifted labels, its
  inverse, and the token-mean reduction over the CP group;
* ``strategy.py``        ``ContextParallelStrategy``: Lightning's ``ModelParallelStrategy``
  with a (data_parallel, context_parallel) mesh; dp/cp coordinates of a process;
* ``_torch_private.py``  the private torch APIs used, with the versions they were checked on.

Importing this package registers ``longred_ring`` with transformers, so that
``from_pretrained(..., attn_implementation="longred_ring")`` accepts it.
"""

from __future__ import annotations

from typing import Any

from longred_pl.parallel.document_attention import (
    DocumentIds,
    cp_document_attention,
    document_mask,
    document_sdpa,
    get_document_ids,
    set_document_ids,
)
from longred_pl.parallel.ring_attention import (
    RING_ATTENTION,
    context_parallel_group,
    cp_active,
    get_cp_group,
    register_ring_attention,
    ring_attention,
    ring_attention_forward,
    set_cp_group,
)
from longred_pl.parallel.sharding import (
    check_cp_length,
    cp_mean,
    cp_token_mean,
    gather_sequence,
    label_count,
    shard_batch,
    shard_sequence,
    unshard_sequence,
)

register_ring_attention()

# ``strategy.py`` needs Lightning (seconds to import); its names load at first use, so that
# processes that only attend and shard (CP test workers, benchmarks) do not pay for it.
_STRATEGY_NAMES = frozenset(
    {
        "ContextParallelStrategy",
        "ParallelLayout",
        "build_dp_cp_mesh",
        "fsdp_mesh",
        "layout_from_mesh",
        "parallel_layout",
    }
)


def __getattr__(name: str) -> Any:
    if name in _STRATEGY_NAMES:
        from longred_pl.parallel import strategy

        return getattr(strategy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _STRATEGY_NAMES)


__all__ = [
    "RING_ATTENTION",
    "ContextParallelStrategy",
    "DocumentIds",
    "ParallelLayout",
    "build_dp_cp_mesh",
    "check_cp_length",
    "context_parallel_group",
    "cp_active",
    "cp_mean",
    "cp_document_attention",
    "cp_token_mean",
    "document_mask",
    "document_sdpa",
    "fsdp_mesh",
    "gather_sequence",
    "get_cp_group",
    "get_document_ids",
    "label_count",
    "layout_from_mesh",
    "parallel_layout",
    "register_ring_attention",
    "ring_attention",
    "ring_attention_forward",
    "set_cp_group",
    "set_document_ids",
    "shard_batch",
    "shard_sequence",
    "unshard_sequence",
]
