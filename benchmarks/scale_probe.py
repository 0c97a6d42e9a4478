"""A callback recording one rank's host memory through a fit (``benchmarks.scale_memory``).

Loaded by ``longred fit`` as ``scale_probe.MemoryProbe`` (the benchmark puts this folder on
``PYTHONPATH``). Resident set size and its high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``) are read at:

* ``setup`` (before any model loads): the process base;
* ``on_fit_start`` (after ``configure_model`` and the strategy's setup): the load peak;
* around the long micro-step of the second optimizer step (gradients and optimizer state
  exist by then: the steady state): the training peak and what the micro-step adds
  (activations and transients);
* around the validation: its peak.

With ``SCALE_MEMORY_LOADER=pretrained`` the models load as they did before sharded loading
(``from_pretrained`` whole on every rank, the logit check on the CPU, then ``fully_shard``),
so the benchmark measures both loaders with the same code.
"""

from __future__ import annotations

import json
import os

import lightning as L

from benchmarks.common import _hwm, _reset_hwm, _rss


def _old_loading() -> None:
    """Patch ``LongReDModule.configure_model``'s loaders into the whole-model path."""
    import longred_pl.module as module
    from longred_pl.models import Placement

    load_student, load_teacher = module.load_student, module.FrozenTeacher.load

    def student(*args):
        *rest, where = args
        model = load_student(*rest, Placement(None))
        if where.shard is not None:
            where.shard(model)
        return model

    def teacher(*args):
        *rest, where = args
        frozen = load_teacher(*rest, Placement(None))
        if where.shard is not None:
            where.shard(frozen.model)
        return frozen

    module.load_student = student
    module.FrozenTeacher.load = staticmethod(teacher)


class MemoryProbe(L.Callback):
    """Write this rank's memory figures to ``<dirpath>/rank<r>.json`` at the end of fit."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.figures: dict[str, int | str] = {
            "loader": os.environ.get("SCALE_MEMORY_LOADER", "sharded")
        }
        self.watch: str | None = None
        self.long_seen = 0
        if self.figures["loader"] == "pretrained":
            _old_loading()

    def _start(self, name: str) -> None:
        self.figures[f"{name}_before"] = _rss()
        _reset_hwm()
        self.watch = name

    def _stop(self, name: str) -> None:
        if self.watch == name:
            self.figures[f"{name}_peak"] = _hwm()
            self.figures[f"{name}_after"] = _rss()
            self.watch = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if "load_before" not in self.figures:
            self._start("load")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._stop("load")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch["kind"] == "long":
            self.long_seen += 1
            if self.long_seen == 2 and "train_peak" not in self.figures:
                self._start("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop("train")

    def on_validation_start(self, trainer, pl_module) -> None:
        if "validation_peak" not in self.figures:
            self._start("validation")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._stop("validation")

    def on_fit_end(self, trainer, pl_module) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        self.figures["rank"] = trainer.global_rank
        path = os.path.join(self.dirpath, f"rank{trainer.global_rank}.json")
        with open(path, "w") as handle:
            json.dump(self.figures, handle, indent=1)
