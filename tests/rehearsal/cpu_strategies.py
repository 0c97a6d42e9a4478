"""Lightning's GPU-only strategies, allowed on CPU with gloo (test only).

Lightning refuses ``FSDPStrategy`` on a CPU accelerator (``accelerator_connector``
checks ``type(strategy) is FSDPStrategy``) although torch's FSDP1 runs on CPU with gloo;
:class:`CPUFSDPStrategy` is the same strategy, so the library's FSDP1 code path (wrapping,
mixed precision, clipping, sharded checkpoints, weight decay groups) runs in the 2-process
CPU tests. What differs, and only because of the CPU:

* a ``device_mesh`` given as a shape (HYBRID_SHARD) is built on the CPU instead of CUDA;
* where Lightning wraps the module itself, it passes ``device_id=root_device.index``,
  which is None on a CPU and which torch's FSDP1 refuses there ("needs a non-CPU
  accelerator"): the wrap is made here with ``device_id=root_device``, with Lightning's
  own arguments otherwise (its ``_setup_model`` then sees a wrapped model).
"""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` that accepts a CPU accelerator (see the module docstring)."""

    def setup_environment(self) -> None:
        shape = self.kwargs.pop("device_mesh", None)
        super().setup_environment()
        if shape is None:
            return
        if isinstance(shape, (tuple, list)):
            from torch.distributed.device_mesh import init_device_mesh

            shape = init_device_mesh("cpu", tuple(shape))
        self.kwargs["device_mesh"] = shape

    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=self.root_device,
                **self.kwargs,
            )
        return super()._setup_model(model)
