"""A (data_parallel x context_parallel) device mesh for Lightning, and who-is-who helpers.

Lightning's ``ModelParallelStrategy`` builds a 2-D mesh named (``data_parallel``,
``tensor_parallel``). Context parallelism gets a named subclass,
:class:`ContextParallelStrategy`, rather than a reinterpretation of the
``tensor_parallel`` dimension: the YAML then says what it does
(``context_parallel_size: 2``), a later tensor-parallel plan cannot silently pick up the
CP group, and everything else (FSDP2 checkpoints, ``distributed_sampler_kwargs`` over the
``data_parallel`` dimension, launch) is inherited unchanged. Its mesh is
(``data_parallel``, ``context_parallel``) plus the flattened ``dp_cp`` dimension that
FSDP2 shards parameters over (as torchtitan does): every rank of the world holds a
shard, and gradients are averaged over all of them, which is what
``sharding.cp_token_mean`` relies on.

Example (trainer YAML)::

    strategy:
      class_path: longred_pl.parallel.ContextParallelStrategy
      init_args: {context_parallel_size: 2}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from longred_pl import _lightning_private, _torch_private
from longred_pl.errors import UserError
from longred_pl.parallel.ring_attention import set_cp_group

DP, CP, DP_CP = "data_parallel", "context_parallel", "dp_cp"


def build_dp_cp_mesh(dp_size: int, cp_size: int, device_type: str) -> Any:
    """``(data_parallel, context_parallel)`` mesh with a flattened ``dp_cp`` dimension.

    Consecutive global ranks form one CP group (ranks ``[d*cp, (d+1)*cp)``), so on GPUs
    the ring stays inside a node when ``cp`` divides the GPUs per node.
    """
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if dp_size * cp_size != world:
        raise UserError(
            f"trainer.strategy: data_parallel_size={dp_size} x context_parallel_size={cp_size} "
            f"must equal the number of processes ({world}); change one of them or "
            f"trainer.devices / num_nodes"
        )
    mesh = init_device_mesh(device_type, (dp_size, cp_size), mesh_dim_names=(DP, CP))
    _torch_private.flatten_mesh(mesh[DP, CP], DP_CP)
    return mesh


class ContextParallelStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose second mesh dimension is context parallelism.

    Args:
        context_parallel_size: ranks that share one sequence (``1`` = plain FSDP2).
        data_parallel_size: ranks that see different data; ``"auto"`` = world / cp.
        save_distributed_checkpoint: as in ``ModelParallelStrategy``.
        process_group_backend: as in ``ModelParallelStrategy`` (gloo on CPU, nccl on GPU).
        timeout: as in ``ModelParallelStrategy``.
    """

    def __init__(
        self,
        context_parallel_size: int = 1,
        data_parallel_size: Literal["auto"] | int = "auto",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        if context_parallel_size < 1:
            raise UserError(
                f"trainer.strategy.context_parallel_size must be >= 1, got {context_parallel_size}"
            )
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self._context_parallel_size = context_parallel_size

    @property
    def context_parallel_size(self) -> int:
        return self._context_parallel_size

    def setup_environment(self) -> None:
        """Start the process group, build the (dp, cp) mesh, set the process's CP group."""
        # ModelParallelStrategy.setup_environment would build its (dp, tp) mesh: skip it
        _lightning_private.setup_without_model_parallel_mesh(self)
        cp = self._context_parallel_size
        if self.world_size % cp:
            raise UserError(
                f"trainer.strategy.context_parallel_size={cp} does not divide the "
                f"{self.world_size} processes; use a divisor of trainer.devices x num_nodes"
            )
        dp = _lightning_private.data_parallel_size(self)
        dp = self.world_size // cp if dp == "auto" else int(dp)
        mesh = build_dp_cp_mesh(dp, cp, self.root_device.type)
        _lightning_private.install_device_mesh(self, mesh, dp)
        set_cp_group(cp_group_of(mesh))

    def teardown(self) -> None:
        set_cp_group(None)
        super().teardown()


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits: its data-parallel and context-parallel coordinates."""

    dp_rank: int
    dp_size: int
    cp_rank: int = 0
    cp_size: int = 1
    cp_group: dist.ProcessGroup | None = None


def cp_group_of(mesh: Any) -> dist.ProcessGroup | None:
    """The CP process group of a mesh built by :func:`build_dp_cp_mesh`, else ``None``."""
    if mesh is None or CP not in (mesh.mesh_dim_names or ()):
        return None
    return mesh[CP].get_group()


def layout_from_mesh(mesh: Any) -> ParallelLayout:
    """:class:`ParallelLayout` of a mesh with a ``data_parallel`` (and maybe CP) dimension."""
    names = mesh.mesh_dim_names or ()
    dp = mesh[DP] if DP in names else mesh
    if CP not in names:
        return ParallelLayout(dp.get_local_rank(), dp.size())
    cp = mesh[CP]
    return ParallelLayout(
        dp.get_local_rank(), dp.size(), cp.get_local_rank(), cp.size(), cp.get_group()
    )


def parallel_layout(trainer: Any) -> ParallelLayout:
    """The layout of a Trainer's process; without a device mesh, every rank is data-parallel.

    Use ``dp_rank`` / ``dp_size`` to split data and to seed per-sample randomness (skipped
    position ids): the ranks of one CP group share a sequence and must draw the same ids.
    """
    mesh = _lightning_private.device_mesh(trainer.strategy)
    if mesh is None:
        return ParallelLayout(int(trainer.global_rank), int(trainer.world_size))
    return layout_from_mesh(mesh)


def fsdp_mesh(mesh: Any) -> Any:
    """The mesh FSDP2 shards over: ``dp_cp`` under CP, else ``data_parallel`` (or ``mesh``)."""
    names = mesh.mesh_dim_names or ()
    if CP in names:  # cached by torch: the group made in build_dp_cp_mesh is reused
        return _torch_private.flatten_mesh(mesh[DP, CP], DP_CP)
    return mesh[DP] if DP in names else mesh
