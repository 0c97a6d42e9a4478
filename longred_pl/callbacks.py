"""Step-level concerns of a LongReD run, as Lightning callbacks.

``LongReDModule.configure_callbacks`` adds them to any Trainer (LightningCLI or a plain
``L.Trainer``), so an existing pipeline gets them without configuration:

* :class:`StreamMetrics` times each micro-step and logs, once per optimizer step,
  ``train/loss``, ``train/loss_<stream>``, ``train/tokens_per_sec_<stream>`` and
  ``train/bad_shards`` (stable names, README "Metrics");
* :class:`NonFiniteGuard` skips an optimizer step whose loss was NaN/Inf on any
  micro-step of any rank, logs ``train/skipped_steps``, stops after
  ``model.max_skipped_steps`` in a row, and keeps its counts in the checkpoint;
* :class:`~longred_pl.preemption.Preemption` saves a checkpoint at the next optimizer
  step when SIGTERM / SIGUSR1 arrive and exits with 75 (requeue), unless the trainer
  already has one (then its settings hold); :class:`~longred_pl.preemption.SaveGuard`
  turns a save that runs out of disk space into one line naming the folder;
* :class:`StepProgressBar` / :class:`StepRichProgressBar` count optimizer steps against
  ``trainer.max_steps`` (Lightning's default bars count micro-batches against it and
  show ``Epoch 0/-2 ... 32/8``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn

from longred_pl import _lightning_private


class StreamMetrics(L.Callback):
    """Per-stream timing and the step's ``train/`` metrics (reads ``pl_module.step_stats``)."""

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        # Callbacks run before the module's hook, which checks the batch (batches.py): a
        # batch without a stream is left to it, to refuse in one line naming the key.
        kind = batch.get("kind") if isinstance(batch, Mapping) else None
        if isinstance(kind, str):
            pl_module.step_stats.begin(pl_module.device, kind)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.step_stats.end()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        stats = pl_module.step_stats
        stats.end()  # the step's last micro-step: its backward is done, the update is not
        metrics = stats.metrics()
        stats.close()
        metrics["train/bad_shards"] = float(getattr(trainer.datamodule, "bad_shards", 0) or 0)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=True)
        if "train/loss" in metrics:
            pl_module.log("loss", metrics["train/loss"], on_step=True, prog_bar=True, logger=False)


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps with a non-finite loss; stop after ``max_in_a_row`` in a row.

    Args:
        max_in_a_row: consecutive skipped steps that stop the run (``model.max_skipped_steps``).
    """

    def __init__(self, max_in_a_row: int = 3) -> None:
        self.max_in_a_row = max_in_a_row
        self.skipped_steps = 0
        self.streak = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        bad = pl_module.step_stats.nonfinite_kinds()
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._skip(trainer, optimizer, bad)
        else:
            self.streak = 0
        pl_module.log(
            "train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False
        )

    def _skip(self, trainer, optimizer, kinds: list[str]) -> None:
        optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves weights alone
        self.skipped_steps += 1
        self.streak += 1
        where = f"stream(s) {kinds or ['(another rank)']} at optimizer step {trainer.global_step}"
        if self.streak >= self.max_in_a_row:
            raise FloatingPointError(
                f"non-finite loss in {where}, {self.streak} steps in a row; stopping. Lower the "
                f"learning rate, check the data of that stream, or resume from the last "
                f"checkpoint (model.max_skipped_steps sets how many are tolerated)"
            )
        rank_zero_warn(f"non-finite loss in {where}: update skipped ({self.skipped_steps} so far)")

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps, "streak": self.streak}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.streak = int(state_dict.get("streak", 0))


class StepProgressBar(TQDMProgressBar):
    """The training bar in optimizer steps: ``step 3/8``, with the step's loss."""

    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else float("inf")

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("optimizer step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and bar.n != trainer.global_step:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()


class StepRichProgressBar(RichProgressBar):
    """The rich training bar (Lightning's default where ``rich`` is installed), in optimizer steps."""

    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else float("inf")

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'optimizer step':{len(self.validation_description)}}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        _lightning_private.rich_bar_update(self, self.train_progress_bar_id, trainer.global_step)
        self.refresh()


def callbacks_for(pl_module: Any, trainer: Any) -> list[L.Callback]:
    """The callbacks a LongReD run needs; a step bar replaces Lightning's default bar."""
    out: list[L.Callback] = [
        StreamMetrics(),
        NonFiniteGuard(int(pl_module.hparams.max_skipped_steps)),
    ]
    from longred_pl.preemption import Preemption, SaveGuard

    callbacks = getattr(trainer, "callbacks", None) or []
    if not any(isinstance(c, Preemption) for c in callbacks):
        out.append(Preemption())  # configure it in trainer.callbacks to change its settings
    out.append(SaveGuard())
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    if type(bar) is TQDMProgressBar:
        out.append(StepProgressBar(refresh_rate=bar.refresh_rate))
    elif type(bar) is RichProgressBar:
        out.append(
            StepRichProgressBar(
                refresh_rate=bar.refresh_rate, leave=_lightning_private.rich_bar_leave(bar)
            )
        )
    return out
