"""Preemption: a scheduler's signal saves a checkpoint at a step boundary, then the job exits
with a status that asks for a requeue.

Lightning 2.6 alone, on SIGTERM, stops at the next micro-batch *without* a checkpoint and
exits with status 0 (``SIGTERMException`` is a ``SystemExit()``): a scheduler takes the
job as finished, and the work since the last periodic checkpoint is lost.
:class:`Preemption` (added to every fit by ``LongReDModule.configure_callbacks`` unless
the trainer already has one, so its settings can be given in ``trainer.callbacks``):

* replaces the handlers of ``signals`` (default SIGTERM and SIGUSR1, which SLURM sends
  ahead of the kill with ``--signal=B:USR1@<seconds>``) once training starts; a handler
  only records the signal (no collective may run inside a signal handler);
* at the end of every optimizer step, all ranks agree (one all-reduce of one number)
  whether any of them was signalled; if so, every rank takes part in
  ``trainer.save_checkpoint(<checkpoint dir>/preempted-step=<N>.ckpt)``, and the run exits
  with ``exit_code`` (default 75, ``EX_TEMPFAIL``: "try again") on every rank, before
  anything that ends a finished run (no export of a half-trained student);
* the same command started again with ``--ckpt_path auto`` resumes from the newest
  complete checkpoint (``runs.py``), this one, at that step boundary: data streams,
  schedule phase and position ids continue exactly.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from longred_pl.errors import UserError

REQUEUE_EXIT = 75  # EX_TEMPFAIL
# the signals the run's Preemption answers (set at its setup); DataLoader workers ignore them
_STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(_worker_id: int) -> None:
    """``worker_init_fn`` of the library's DataLoaders: ignore the run's stop signals.

    A scheduler signals every process of the job, and a worker killed by it fails the run
    before the main process saves its preemption checkpoint; the main process ends the
    workers itself.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _signal(name: str) -> signal.Signals:
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        raise UserError(
            f"Preemption.signals: unknown signal {name!r}; use names such as SIGTERM, SIGUSR1"
        ) from None


class PreemptionExit(SystemExit):
    """Raised on every rank after the preemption checkpoint is saved (status ``exit_code``)."""


class Preemption(L.Callback):
    """Save at the next optimizer-step boundary when signalled, then exit ``exit_code``.

    Args:
        signals: signal names that mean "you are about to be stopped".
        exit_code: the status every rank exits with after saving (75 asks for a retry;
            a SLURM script's trap or ``torchrun --max-restarts`` requeues on it).
        dirpath: where the checkpoint goes (default: the first ``ModelCheckpoint``'s
            ``dirpath``, else ``<default_root_dir>/checkpoints``).
    """

    def __init__(
        self,
        signals: list[str] | None = None,
        exit_code: int = REQUEUE_EXIT,
        dirpath: str | None = None,
    ) -> None:
        self.signals = [
            _signal(s) for s in (signals if signals is not None else ["SIGTERM", "SIGUSR1"])
        ]
        if not 0 < int(exit_code) < 256:
            raise UserError(f"Preemption.exit_code: {exit_code} is not an exit status in 1..255")
        self.exit_code = int(exit_code)
        self.dirpath = dirpath
        self.received: int = 0
        self._previous: dict[signal.Signals, Any] = {}
        self._last_step = -1

    # --------------------------------------------------------------- handlers
    def _record(self, signum: int, _frame: Any) -> None:
        self.received = int(signum)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        global _STOP_SIGNALS
        _STOP_SIGNALS = tuple(self.signals)  # before any DataLoader worker is forked

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        if not _in_main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._record)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    # ------------------------------------------------------------ step boundary
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step == self._last_step:
            return  # inside an optimizer step (accumulating): not a boundary
        self._last_step = trainer.global_step
        flag = torch.tensor(float(self.received), device=trainer.strategy.root_device)
        flag = trainer.strategy.reduce(flag, reduce_op="max")
        if float(flag) == 0:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            name = signal.Signals(int(float(flag))).name
            print(
                f"[longred] {name}: saved {path} at step {trainer.global_step}; exiting with "
                f"{self.exit_code} (requeue; resume with --ckpt_path auto)",
                file=sys.stderr,
                flush=True,
            )
        raise PreemptionExit(self.exit_code)

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        folder = self.dirpath
        if folder is None:
            callback = trainer.checkpoint_callback
            folder = getattr(callback, "dirpath", None)
        if folder is None:
            folder = os.path.join(trainer.default_root_dir, "checkpoints")
        return Path(folder) / f"preempted-step={trainer.global_step}.ckpt"


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class SaveGuard(L.Callback):
    """A checkpoint save that runs out of space fails the run on one line, the previous
    checkpoints intact.

    Lightning writes a ``.ckpt`` through a temporary file that only replaces the target when
    complete, and a sharded checkpoint's ``.metadata`` last, so an interrupted save never
    looks complete (``runs.is_complete``); what it cannot do is say why the run stopped.
    This wraps ``trainer.save_checkpoint`` (every save goes through it: ``ModelCheckpoint``,
    :class:`Preemption`): ``ENOSPC`` / ``EDQUOT`` become a :class:`UserError` naming the
    folder, the free space and the size of the newest complete checkpoint there (what one
    more needs), and a partial sharded checkpoint folder is removed.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        save = trainer.save_checkpoint
        if getattr(save, "_longred_guarded", False):
            return

        def guarded(filepath: Any, *args: Any, **kwargs: Any) -> None:
            try:
                save(filepath, *args, **kwargs)
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise UserError(no_space_message(Path(filepath))) from err

        guarded._longred_guarded = True  # type: ignore[attr-defined]
        trainer.save_checkpoint = guarded  # type: ignore[method-assign]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def no_space_message(target: Path) -> str:
    """One line: where the save failed, what is free there, what one checkpoint needs."""
    import shutil

    from longred_pl.runs import is_complete, newest_checkpoint

    folder = target.parent
    if target.is_dir() and not is_complete(target):
        shutil.rmtree(target, ignore_errors=True)  # a partial sharded checkpoint
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    newest = newest_checkpoint([folder])
    needed = (
        f"; the newest checkpoint there ({newest.name}) takes {_size(newest) / 2**20:.1f} MiB"
        if newest
        else ""
    )
    return (
        f"checkpoint save: no space left in {folder} ({free / 2**20:.1f} MiB free{needed}); "
        f"free at least that much or point the checkpoint dirpath elsewhere, then resume with "
        f"--ckpt_path auto (the checkpoints already there are intact)"
    )
