"""A tiny LongReD fit on CUDA under Lightning's FSDP1 and FSDP2 strategies.

* ``fsdp1``: ``FSDPStrategy`` (FSDP1), auto-wrap by decoder layer, ``use_orig_params``,
  sharded checkpoints: Lightning wraps the module (the student), the module wraps its
  held teacher as a root of its own (``longred_pl/fsdp.py``);
* ``fsdp2``: ``ModelParallelStrategy`` with ``data_parallel_size`` = devices and
  ``tensor_parallel_size=1``; ``LongReDModule.configure_model`` calls ``fully_shard``.

Four properties:

1. bf16-mixed fits: finite losses, the frozen teacher unchanged and without gradients,
   the student trained, a checkpoint written without teacher weights that exports.
2. The losses of the first optimizer step (long, s2l, long, short, all at the initial
   weights) equal those of the unsharded module on the same batches (fp32). The LM-head
   loss runs in a forward pre-hook of the output embedding, i.e. inside the root unit's
   forward where the head weight is gathered (``forward.py``). It runs in one process
   (``DEVICES``), where FSDP1 clamps to ``NO_SHARD`` (torch does so for a world of 1): it
   proves the wiring on CUDA (wrapping, hooks, precision); the sharding itself is proved
   on 2 CPU processes (``tests/integration/test_fsdp{1,2}_cpu.py``).
3. RoPE ``inv_freq`` stays fp32 under bf16-mixed. Lightning's FSDP1 ``bf16-mixed`` plugin
   asks for ``MixedPrecision(buffer_dtype=torch.bfloat16)``; the module gives FSDP1 the
   plugin's policy without the buffer cast (``fsdp.fsdp1_mixed_precision``). FSDP2's
   ``MixedPrecisionPolicy`` leaves buffers alone.
4. Clipping by norm runs under both (``gradient_clip_val``; Lightning's FSDP1 plugin
   refuses it, the module clips with FSDP1's own ``clip_grad_norm_``).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SCHEDULE = ["long", "s2l", "long", "short"]
TARGET = 256
STEPS = 3
DEVICES = 1  # one process: Lightning would relaunch pytest itself for more


def strategy(name: str):
    """The Lightning strategy called ``name`` (module docstring), for one process."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    if name == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=DEVICES, tensor_parallel_size=1)
    return FSDPStrategy(
        auto_wrap_policy={LlamaDecoderLayer}, use_orig_params=True, state_dict_type="sharded"
    )


def make_module(teacher_path: str):
    from longred_pl.module import LongReDModule

    return LongReDModule(
        teacher_path,
        target_length=TARGET,
        rope_kwargs={"rope_theta": 40000.0},
        distill_layers=[1, 2],
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )


def make_data(shards: dict[str, str]):
    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.data.shards import StreamConfig

    sizes = {"long": (TARGET, 1), "short": (16, 4), "s2l": (64, 2)}
    streams = {k: StreamConfig(shards[k], n, b) for k, (n, b) in sizes.items()}
    return MixedLengthDataModule(**streams, schedule=SCHEDULE, num_workers=0, seed=0)


def rope_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers() if n.endswith("inv_freq")}


class Recorder(L.Callback):
    """Each micro-step's weighted loss and batch, the RoPE buffers after the first one, and
    (at the end of training, before Lightning moves the module to the CPU) every weight."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.batches: list[dict] = []
        self.inv_freq: dict[str, dict[str, torch.Tensor]] = {}
        self.weights: dict[str, dict[str, torch.Tensor]] = {}
        self.root = ""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning divides the loss by the accumulation before backward.
        self.losses.append(float(outputs["loss"]) * trainer.accumulate_grad_batches)
        self.batches.append({k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()})
        if not self.inv_freq:
            for name, model in models(pl_module).items():
                found = rope_buffers(model)
                self.inv_freq[name] = {n: b.detach().clone().cpu() for n, b in found.items()}

    def on_train_end(self, trainer, pl_module) -> None:
        root = trainer.strategy.model
        self.root = f"{type(root).__name__} {getattr(root, 'sharding_strategy', '')}".strip()
        self.weights = {name: full_weights(m, root) for name, m in models(pl_module).items()}


def models(module) -> dict[str, torch.nn.Module]:
    return {"student": module.student, "teacher": module.teacher.model}


def fit(name: str, precision: str, teacher_path: str, shards: dict[str, str], out: Path):
    """``STEPS`` optimizer steps of LongReD under strategy ``name``: (module, recorder)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    module, recorder = make_module(teacher_path), Recorder()
    checkpoint = ModelCheckpoint(dirpath=out, every_n_train_steps=STEPS, save_top_k=-1)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=DEVICES,
        strategy=strategy(name),
        precision=precision,
        max_steps=STEPS,
        accumulate_grad_batches=len(SCHEDULE),
        logger=False,
        gradient_clip_val=1.0,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[recorder, checkpoint],
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=make_data(shards))
    print(f"{name} {precision}: root unit {recorder.root}")
    recorder.checkpoint = out / f"epoch=0-step={STEPS}.ckpt"
    return module, recorder


def full_weights(model: torch.nn.Module, root: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` gathered (FSDP1 root ``root``, or FSDP2), prefixes removed."""
    import contextlib

    from torch.distributed.fsdp import FullyShardedDataParallel

    owner = model if isinstance(model, FullyShardedDataParallel) else root  # the teacher's own
    gather = (
        FullyShardedDataParallel.summon_full_params(owner, writeback=False)
        if isinstance(owner, FullyShardedDataParallel)
        else contextlib.nullcontext()
    )
    out = {}
    with gather:
        for key, value in model.named_parameters():
            value = value.full_tensor() if hasattr(value, "full_tensor") else value
            clean = key.replace("_fsdp_wrapped_module.", "").replace(
                "_checkpoint_wrapped_module.", ""
            )
            out[clean] = value.detach().float().cpu()
    return out


@pytest.fixture(scope="module")
def fitted(tiny_llama, tiny_shards, tmp_path_factory):
    """``fitted(name, precision)``: one fit per strategy and precision, shared by the tests."""
    done = {}

    def get(name: str, precision: str):
        if (name, precision) not in done:
            out = tmp_path_factory.mktemp(f"{name}-{precision}")
            done[name, precision] = fit(name, precision, tiny_llama, tiny_shards, out)
        return done[name, precision]

    return get


@pytest.fixture(scope="module")
def reference(tiny_llama):
    """The same module unsharded, fp32, on the GPU (its initial weights)."""
    module = make_module(tiny_llama)
    module.configure_model()
    return module.cuda()


@pytest.mark.parametrize("name", ["fsdp1", "fsdp2"])
def test_bf16_mixed_fit_trains_the_student_only(name, fitted, tiny_llama):
    from safetensors.torch import load_file

    initial = load_file(str(Path(tiny_llama) / "model.safetensors"))
    module, recorder = fitted(name, "bf16-mixed")
    teacher, student = recorder.weights["teacher"], recorder.weights["student"]
    assert set(teacher) == set(student) == set(initial)
    teacher_moved = max(float((teacher[k] - initial[k].float()).abs().max()) for k in initial)
    student_moved = max(float((student[k] - initial[k].float()).abs().max()) for k in initial)
    teacher_grads = sum(p.grad is not None for p in module.teacher.parameters())
    print(f"{name}: losses {recorder.losses}")
    print(
        f"{name}: teacher max |change| {teacher_moved:.2e} ({teacher_grads} grads), student {student_moved:.2e}"
    )
    assert len(recorder.losses) == STEPS * len(SCHEDULE)
    assert all(math.isfinite(x) for x in recorder.losses)
    assert teacher_moved == 0.0 and teacher_grads == 0
    assert student_moved > 0.0
    from longred_pl.export import export_checkpoint, load_checkpoint

    saved = load_checkpoint(str(recorder.checkpoint))["state_dict"]
    assert saved and not any("teacher" in k for k in saved)
    export_checkpoint(str(recorder.checkpoint), str(recorder.checkpoint.parent / "hf"))


@pytest.mark.parametrize("name", ["fsdp1", "fsdp2"])
def test_first_step_losses_equal_the_unsharded_module(name, fitted, reference):
    _, recorder = fitted(name, "32-true")
    first = recorder.batches[: len(SCHEDULE)]  # before the first optimizer step
    assert [b["kind"] for b in first] == SCHEDULE
    expected = []
    for batch in first:
        on_gpu = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
        expected.append(reference.compute_loss(on_gpu)[0].item())
    print(f"{name}: sharded {recorder.losses[: len(SCHEDULE)]}, unsharded {expected}")
    assert recorder.losses[: len(SCHEDULE)] == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", ["fsdp1", "fsdp2"])
def test_bf16_mixed_keeps_rope_inv_freq_fp32(name, fitted, reference):
    _, recorder = fitted(name, "bf16-mixed")
    exact = {n: b.cpu().double() for n, b in rope_buffers(reference.student).items()}
    for model, buffers in recorder.inv_freq.items():
        assert buffers, f"{model}: no inv_freq buffer found"
        for key, value in buffers.items():
            line = f"{name}: {model} {key} {value.dtype}"
            if model == "student":  # the teacher's RoPE is another (unextended) one
                error = float((value.double() - exact[key]).abs().max()) * TARGET
                line += f", angle error at position {TARGET}: {error:.2e} rad"
            print(line)
    dtypes = {str(b.dtype) for found in recorder.inv_freq.values() for b in found.values()}
    assert dtypes == {"torch.float32"}
