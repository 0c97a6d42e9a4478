"""Settings that cannot work are refused at setup, before any weight is loaded."""

import csv
import glob
import itertools

import lightning as L
import pytest
import torch

from longred_pl.data.datamodule import MixedLengthDataModule
from longred_pl.data.shards import StreamConfig
from longred_pl.errors import UserError
from longred_pl.module import LongReDModule


def _module(tiny_llama, **kwargs):
    kwargs.setdefault("rope_kwargs", {"rope_theta": 40000.0})
    return LongReDModule(teacher_path=tiny_llama, target_length=256, **kwargs)


def _trainer(tmp_path, accumulate, max_steps=1, logger=False):
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
    )


def _data(tiny_shards, schedule, s2l_len=64, s2l_key="s2l"):
    return MixedLengthDataModule(
        long=StreamConfig(tiny_shards["long"], 256, 1),
        short=StreamConfig(tiny_shards["short"], 16, 2),
        s2l=StreamConfig(tiny_shards[s2l_key], s2l_len, 2),
        schedule=schedule,
        num_workers=0,
    )


@pytest.mark.parametrize(
    "kwargs, schedule, accumulate, s2l, match",
    [
        (
            {},
            ["long", "s2l", "long", "short"],
            2,
            ("s2l", 64),
            r"trainer.accumulate_grad_batches=2 does not cover whole periods.*accumulate_grad_batches: 4",
        ),
        (
            {"method": "long_cpt"},
            ["long", "short"],
            2,
            ("s2l", 64),
            r"model.method='long_cpt' trains on the streams \['long'\] only.*\['short'\]",
        ),
        (
            {},
            ["long", "s2l"],
            2,
            ("short", 16),
            r"data.s2l.seq_len=16 does not fit model.s2l_positions='cream'.*head_tail_lengths",
        ),
    ],
)
def test_refused_before_models_load(
    tiny_llama, tiny_shards, tmp_path, kwargs, schedule, accumulate, s2l, match
):
    module = _module(tiny_llama, **kwargs)
    data = _data(tiny_shards, schedule, s2l_len=s2l[1], s2l_key=s2l[0])
    with pytest.raises(UserError, match=match):
        _trainer(tmp_path, accumulate).fit(module, datamodule=data)
    assert module.student is None  # refused before loading anything


class _Clock:
    """Each call advances one second: every timed micro-step lasts exactly 1 s."""

    def __init__(self):
        self.now = itertools.count()

    def perf_counter(self):
        return float(next(self.now))


@pytest.mark.parametrize(
    "method, schedule, expected",
    [
        ("long_cpt", ["long", "long"], {"long": 256.0}),
        ("long_cpt", ["long"], {"long": 256.0}),
        ("longred", ["long", "short", "long", "short"], {"long": 256.0, "short": 32.0}),
    ],
)
def test_tokens_per_second_counts_every_micro_step(
    tiny_llama, tiny_shards, tmp_path, monkeypatch, method, schedule, expected
):
    import longred_pl.stats as stats

    monkeypatch.setattr(stats, "time", _Clock())
    module = _module(tiny_llama, method=method)
    data = _data(tiny_shards, schedule)
    logger = L.pytorch.loggers.CSVLogger(str(tmp_path))
    _trainer(tmp_path, len(schedule), max_steps=2, logger=logger).fit(module, datamodule=data)
    (path,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    rows = [r for r in csv.DictReader(open(path)) if r.get("train/loss")]
    assert len(rows) == 2
    for row in rows:
        for kind, rate in expected.items():
            assert float(row[f"train/tokens_per_sec_{kind}"]) == pytest.approx(rate), row


def test_every_step_logs_every_stream_of_the_schedule(tiny_llama, tiny_shards, tmp_path):
    """No stale values: each logged step had each of its streams' micro-steps."""
    module = _module(tiny_llama, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    data = _data(tiny_shards, ["long", "s2l", "long", "short"])
    logger = L.pytorch.loggers.CSVLogger(str(tmp_path))
    _trainer(tmp_path, 4, max_steps=3, logger=logger).fit(module, datamodule=data)
    (path,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    rows = [r for r in csv.DictReader(open(path)) if r.get("train/loss")]
    values = [r["train/loss_s2l"] for r in rows]
    assert len(rows) == 3 and all(values) and len(set(values)) == 3


def test_progress_bar_counts_optimizer_steps(tiny_llama, tiny_shards, tmp_path):
    from longred_pl.callbacks import StepProgressBar, StepRichProgressBar

    module = _module(tiny_llama)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        accumulate_grad_batches=4,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=_data(tiny_shards, ["long", "s2l", "long", "short"]))
    bar = trainer.progress_bar_callback
    assert isinstance(bar, (StepProgressBar, StepRichProgressBar))
    assert bar.total_train_batches == 2  # optimizer steps, not the 8 micro-batches


def test_longred_test_logs_test_metrics(tiny_llama, tiny_shards, tmp_path):
    """`longred test` (listed in the README) runs the held-out metrics as test/..."""
    module = _module(tiny_llama)
    data = MixedLengthDataModule(
        long=StreamConfig(tiny_shards["long"], 256, 1),
        val_short=StreamConfig(tiny_shards["val_short"], 64, 2),
        schedule=["long"],
        num_workers=0,
    )
    (metrics,) = _trainer(tmp_path, 1).test(module, datamodule=data, verbose=False)
    assert metrics["test/ppl_short"] > 1 and 0 < metrics["test/ppl_retention"] < 10


def test_student_trains_in_train_mode_teacher_in_eval(tiny_llama, tiny_shards, tmp_path):
    """HF models load in eval mode and Lightning keeps it: the student must be put in train
    mode, else HF silently skips gradient checkpointing (and dropout)."""
    seen = []

    class Modes(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            student = module.student
            seen.append(
                (
                    student.training,
                    student.model.gradient_checkpointing,
                    module.teacher.model.training,
                )
            )

    module = _module(tiny_llama, gradient_checkpointing=True)
    trainer = _trainer(tmp_path, 4)
    trainer.callbacks.append(Modes())
    trainer.fit(module, datamodule=_data(tiny_shards, ["long", "s2l", "long", "short"]))
    assert seen == [(True, True, False)] * 4


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_true_half_precision_refused_before_models_load(
    tiny_llama, tiny_shards, tmp_path, precision
):
    """Lightning's *-true casts RoPE inv_freq and the weights themselves to 16 bits."""
    module = _module(tiny_llama)
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accumulate_grad_batches=4,
        default_root_dir=tmp_path,
    )
    with pytest.raises(UserError, match=rf"trainer.precision={precision}.*bf16-mixed"):
        trainer.fit(module, datamodule=_data(tiny_shards, ["long", "s2l", "long", "short"]))
    assert module.student is None


def test_loading_under_context_parallelism_runs_no_collective(tiny_llama, monkeypatch):
    """The strategy sets the process-wide CP group before configure_model; loading (the
    load-time logit check is a forward) must not run the ring: on NCCL that is a collective
    on CPU tensors and fails at load."""
    import importlib

    from longred_pl.parallel.microbatch import Layout

    # the module, not the package's same-named function
    ring = importlib.import_module("longred_pl.parallel.ring_attention")

    group = object()  # stands for the CP group of 2 that ContextParallelStrategy sets

    def no_ring(*args, **kwargs):
        raise AssertionError("the ring attention ran while the models loaded")

    monkeypatch.setattr(ring, "cp_active", lambda g: g is group)
    monkeypatch.setattr(ring, "ring_attention", no_ring)
    module = _module(tiny_llama, attn_implementation="longred_ring")
    module.layout = Layout(cp_rank=0, cp_size=2, cp_group=group)
    ring.set_cp_group(group)
    try:
        module.configure_model()
    finally:
        ring.set_cp_group(None)
    assert module.student is not None and module.teacher is not None
