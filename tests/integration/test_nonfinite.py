"""A NaN/Inf loss skips its optimizer step; several in a row stop the run."""

import lightning as L
import pytest
import torch

from longred_pl.callbacks import NonFiniteGuard
from longred_pl.data.datamodule import MixedLengthDataModule
from longred_pl.data.shards import StreamConfig
from longred_pl.module import LongReDModule


class Poisoned(LongReDModule):
    """Returns a NaN loss on the micro-steps listed in ``poison``."""

    poison: set[int] = set()

    def compute_loss(self, batch):
        loss, term = super().compute_loss(batch)
        if int(batch["index"]) in self.poison:
            nan = loss * float("nan")
            return nan, nan
        return loss, term


def fit(tiny_llama, tiny_shards, poison, max_steps, tmp_path):
    Poisoned.poison = poison
    module = Poisoned(
        teacher_path=tiny_llama,
        target_length=256,
        rope_kwargs={"rope_theta": 40000.0},
        distill_layers=[1, 2],
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
    )
    data = MixedLengthDataModule(
        long=StreamConfig(tiny_shards["long"], 256, 1),
        short=StreamConfig(tiny_shards["short"], 16, 2),
        schedule=["long", "short"],
        num_workers=0,
    )
    weights = []

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (batch_idx + 1) % 2 == 0:
                weights.append(
                    pl_module.student.model.layers[0].mlp.up_proj.weight.detach().clone()
                )

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Snap()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    return module, weights


def test_nan_step_is_skipped_and_counted(tiny_llama, tiny_shards, tmp_path):
    with pytest.warns(
        UserWarning, match=r"non-finite loss in stream\(s\) \['short'\] at optimizer step 1"
    ):
        module, weights = fit(tiny_llama, tiny_shards, {3}, 3, tmp_path)
    (guard,) = [c for c in module.trainer.callbacks if isinstance(c, NonFiniteGuard)]
    assert guard.skipped_steps == 1
    assert torch.equal(weights[0], weights[1])  # step 1 (micro-steps 2, 3) changed nothing
    assert not torch.equal(weights[1], weights[2])  # training went on
    assert all(torch.isfinite(w).all() for w in weights)


def test_nan_steps_in_a_row_stop_the_run(tiny_llama, tiny_shards, tmp_path):
    with pytest.raises(
        FloatingPointError, match=r"stream\(s\) \['long'\] at optimizer step 3.*3 steps in a row"
    ):
        fit(tiny_llama, tiny_shards, {2, 4, 6}, 6, tmp_path)
