"""A callback that records what a multi-process test cannot see from outside (test only)."""

from __future__ import annotations

import json

import lightning as L


class RopeBufferProbe(L.Callback):
    """After the first training batch, write each model's RoPE ``inv_freq`` dtypes to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.done or trainer.global_rank != 0:
            return
        self.done = True
        found = {
            name: sorted({str(b.dtype) for n, b in model.named_buffers() if n.endswith("inv_freq")})
            for name, model in (
                ("student", pl_module.student),
                ("teacher", pl_module.teacher.model),
            )
        }
        with open(self.path, "w") as handle:
            json.dump(found, handle)
