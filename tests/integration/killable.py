"""A callback that slows training down so a test can kill it mid-run (used via PYTHONPATH)."""

import time

import lightning as L


class Slow(L.Callback):
    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


class StepMarker(L.Callback):
    """Touch ``<dirpath>/step=<N>`` when optimizer step N is done (rank 0), for a test to wait on."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import os

        if trainer.is_global_zero:
            os.makedirs(self.dirpath, exist_ok=True)
            open(os.path.join(self.dirpath, f"step={trainer.global_step}"), "w").close()
