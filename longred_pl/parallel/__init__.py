"""Context parallelism: one sequence split over several ranks (issue 12).

* ``ring_attention.py``  the ``longred_ring`` attention function (torch's causal ring with
  head-tail load balancing) and the process-wide CP group;
* ``sharding.py``        head-tail split of input ids / position ids / shifted labels, its
  inverse, and the token-mean reduction over the CP group;
* ``strategy.py``        ``ContextParallelStrategy``: Lightning's ``ModelParallelStrategy``
  with a (data_parallel, context_parallel) mesh; dp/cp coordinates of a process;
* ``_torch_private.py``  the private torch APIs used, with the versions they were checked on.

Importing this package registers ``longred_ring`` with transformers, so that
``from_pretrained(..., attn_implementation="longred_ring")`` accepts it.
"""

from __future__ import annotations

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
from longred_pl.parallel.strategy import (
    ContextParallelStrategy,
    ParallelLayout,
    build_dp_cp_mesh,
    fsdp_mesh,
    layout_from_mesh,
    parallel_layout,
)

register_ring_attention()

__all__ = [
    "RING_ATTENTION",
    "ContextParallelStrategy",
    "ParallelLayout",
    "build_dp_cp_mesh",
    "check_cp_length",
    "context_parallel_group",
    "cp_active",
    "cp_mean",
    "cp_token_mean",
    "fsdp_mesh",
    "gather_sequence",
    "get_cp_group",
    "label_count",
    "layout_from_mesh",
    "parallel_layout",
    "register_ring_attention",
    "ring_attention",
    "ring_attention_forward",
    "set_cp_group",
    "shard_batch",
    "shard_sequence",
    "unshard_sequence",
]
