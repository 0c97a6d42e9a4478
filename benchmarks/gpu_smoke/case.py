"""One throughput case of the GPU smoke, in a process of its own (``parts.throughput``).

A ``LongReDModule`` on one device through ``lightning.Trainer`` as the 32K recipe trains:
FSDP2 (``ModelParallelStrategy``, one rank on CUDA), bf16-mixed, activation checkpointing,
the fused chunked loss (4096), AdamW; ``longred`` on the published 16-micro-step schedule,
``long_cpt`` on 8 long micro-steps (as ``configs/llama3-8b/32k-abf-*.yaml``). Lengths
follow the 32K recipe's ratios: short = long / 32, s2l = long / 4, the teacher's window =
long / 4, the student's = long; batches 1 (long), 16 (short), 2 (s2l). Token ids are
random (speed does not depend on them) and made in the loop, so no data pipeline is timed.

Writes: optimizer-step times after warm-up, tokens/s, achieved TFLOP/s (model FLOPs of
``flops.microstep_flops`` over the step time) and the peak memory of one long micro-step
(reset before it, read after its backward) next to ``flops.long_microstep_bytes``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from benchmarks import common
from benchmarks.gpu_smoke.flops import Shape, long_microstep_bytes, microstep_flops
from longred_pl.data.schedule import PUBLISHED_SCHEDULE
from longred_pl.methods import get_method

BATCH = {"long": 1, "short": 16, "s2l": 2}


class Synthetic(IterableDataset):
    """Micro-batches of the schedule, tagged with their stream and micro-step number."""

    def __init__(self, schedule: list[str], lengths: dict[str, int], vocab: int) -> None:
        self.schedule, self.lengths, self.vocab = schedule, lengths, vocab

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        step = 0
        while True:
            kind = self.schedule[step % len(self.schedule)]
            ids = torch.randint(0, self.vocab, (BATCH[kind], self.lengths[kind]), generator=gen)
            yield {"kind": kind, "input_ids": ids, "index": step}
            step += 1


class Clock(L.Callback):
    """Optimizer-step times (synchronised) and the peak of one long micro-step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.marks, self.peak, self.before = warmup, [], None, None

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if not self.marks:
            self.marks.append((trainer.global_step, self._now()))
        if (
            batch["kind"] == "long"
            and self.peak is None
            and trainer.global_step >= self.warmup
            and torch.cuda.is_available()
        ):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            self.peak = -1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.peak == -1:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        if trainer.global_step != self.marks[-1][0]:
            self.marks.append((trainer.global_step, self._now()))


def run(teacher: Path, method: str, long_len: int, tiny: bool, work: Path) -> dict[str, Any]:
    from longred_pl.module import LongReDModule

    window = long_len // 4
    config_dir = _with_window(teacher, window, work)
    schedule = list(PUBLISHED_SCHEDULE) if method == "longred" else ["long"] * 8
    lengths = {"long": long_len, "short": long_len // 32, "s2l": long_len // 4}
    from transformers import AutoConfig

    shape = Shape.of(AutoConfig.from_pretrained(config_dir))
    cuda = torch.cuda.is_available()
    layers = [1, 2, 4] if tiny else [1, 9, 12, 14, 15, 32]
    module = LongReDModule(
        str(config_dir),
        method=method,
        rope_method="abf",
        target_length=long_len,
        rope_kwargs={"rope_theta": 2.0e7},
        distill_layers=layers,
        loss_chunk_size=4096,
        gradient_checkpointing=True,
    )
    warmup, timed = (1, 1) if tiny else ((1, 2) if long_len <= 8192 else (1, 1))
    clock = Clock(warmup)
    from lightning.pytorch.strategies import ModelParallelStrategy

    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
        precision="bf16-mixed" if cuda else "32-true",
        max_steps=warmup + timed,
        accumulate_grad_batches=len(schedule),
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    loader = DataLoader(Synthetic(schedule, lengths, shape.vocab), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    times = [b - a for (_, a), (_, b) in zip(clock.marks, clock.marks[1:], strict=False)][warmup:]
    step_s = sum(times) / len(times)
    terms = get_method(method).terms
    tokens = sum(BATCH[k] * lengths[k] for k in schedule)
    flops = sum(microstep_flops(shape, k, lengths[k], BATCH[k], terms[k][0]) for k in schedule)
    teacher_bytes = 4 if get_method(method).needs_teacher else 0  # the recipe's fp32 teacher
    estimate = long_microstep_bytes(shape, long_len, teacher_bytes=teacher_bytes)
    return {
        "method": method,
        "long": long_len,
        "lengths": lengths,
        "schedule": schedule,
        "step_seconds": [round(t, 3) for t in times],
        "tokens_per_step": tokens,
        "tokens_per_s": round(tokens / step_s, 1),
        "tflops": round(flops / step_s / 1e12, 2),
        "flops_per_step": flops,
        "peak_long_microstep_gib": None
        if not clock.peak or clock.peak < 0
        else round(clock.peak / 2**30, 2),
        "estimate_gib": {k: round(v, 2) for k, v in estimate.items()},
    }


def _with_window(teacher: Path, window: int, work: Path) -> Path:
    """``teacher``'s weights under a config with another window (a folder of links)."""
    out = work / f"teacher_window_{window}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in teacher.iterdir():
        if item.name != "config.json":
            (out / item.name).symlink_to(item.resolve())
    config = json.loads((teacher / "config.json").read_text())
    config["max_position_embeddings"] = window
    (out / "config.json").write_text(json.dumps(config))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--method", choices=["long_cpt", "longred"], required=True)
    parser.add_argument("--long", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    common.quiet()
    result = run(args.teacher, args.method, args.long, args.tiny, args.out.parent)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
