"""A callback that slows training down so a test can kill it mid-run (used via PYTHONPATH)."""

import time

import lightning as L


class Slow(L.Callback):
    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)
