"""Timings of the step-cost benchmark: plain parts, trainer steps, data pipeline, loss.

* :func:`time_plain_parts`: the necessary parts of one LongReD optimizer step, each timed
  alone in plain PyTorch on the step's own micro-batches: the student's forward+backward
  on every micro-batch (long: ``student(input_ids, labels=input_ids).loss``; short/s2l:
  ``output_hidden_states`` forward and the cosine loss on the distilled indices), and
  the teacher's no-grad forward on the short and s2l ones. The AdamW step is timed too
  but is not one of the parts the target sums.
* :func:`time_trainer`: a real ``lightning.Trainer`` fit; a callback times each optimizer
  step from ``on_train_batch_start`` of its first micro-step to ``on_train_batch_end`` of
  its last (the optimizer step runs before the last ``on_train_batch_end``).
* :func:`time_data_pipeline`: the training ``DataLoader`` alone, plus s2l position ids.
* :func:`time_loss`: ``chunked_next_token_loss`` forward+backward per chunk size.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from benchmarks.common import median, sync, timed
from benchmarks.step_cost.workload import datamodule, make_module, rope_kwargs
from longred_pl.losses import chunked_next_token_loss, hidden_cosine_loss, shift_labels


def release(device: torch.device) -> None:
    """Free what the last measurement left, so the next one starts from the same state."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _autocast(args: Any, device: torch.device):
    enabled = args.precision == "bf16-mixed"
    return lambda: torch.autocast(device.type, torch.bfloat16, enabled=enabled)


def step_batches(
    urls: dict[str, str], args: Any, schedule: list[str], teacher_path: str, target: int
):
    """The first optimizer step's micro-batches, s2l ones with the module's position ids."""
    planner = make_module(teacher_path, args, "longred", target, args.loss_chunk_size)
    loader = datamodule(urls, args, schedule, num_workers=0).train_dataloader()
    batches = [batch for _, batch in zip(schedule, loader, strict=False)]
    for batch in batches:
        if batch["kind"] == "s2l":
            batch["position_ids"] = planner.s2l_position_ids(batch)
    return batches


def plain_models(teacher_path: str, args: Any, target: int, device: torch.device):
    """Student (extended RoPE, trainable) and frozen teacher, loaded as plain HF models."""
    from longred_pl import rope
    from longred_pl.models import freeze, load_causal_lm, load_config

    teacher_config = load_config(teacher_path)
    student_config = rope.extend_rope(teacher_config, "abf", target, **rope_kwargs(args))
    student = load_causal_lm(teacher_path, student_config, args.attn).to(device).train()
    student.config.use_cache = False
    teacher = freeze(load_causal_lm(teacher_path, teacher_config, args.attn)).to(device)
    return student, teacher


def _parts(
    batch: dict[str, Any], student, teacher, device, autocast
) -> dict[str, Callable[[], Any]]:
    from longred_pl.module import default_distill_layers

    input_ids = batch["input_ids"].to(device)
    if batch["kind"] == "long":

        def long_student() -> None:
            with autocast():
                loss = student(input_ids=input_ids, labels=input_ids, use_cache=False).loss
            loss.backward()

        return {"student_fwd_bwd": long_student}
    n_layers = int(student.config.num_hidden_layers)
    layers = default_distill_layers(n_layers) if batch["kind"] == "short" else [n_layers]
    position_ids = batch.get("position_ids")
    position_ids = None if position_ids is None else position_ids.to(device)
    mask = None if position_ids is None else torch.ones_like(input_ids)

    def teacher_fwd() -> Any:
        with torch.no_grad(), autocast():
            return teacher(
                input_ids=input_ids, output_hidden_states=True, logits_to_keep=1, use_cache=False
            ).hidden_states

    targets = teacher_fwd()

    def student_fwd_bwd() -> None:
        with autocast():
            out = student(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=mask,
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=False,
            )
            loss = hidden_cosine_loss(out.hidden_states, targets, layers)
        loss.backward()

    return {"student_fwd_bwd": student_fwd_bwd, "teacher_fwd": teacher_fwd}


def time_plain_parts(
    teacher_path: str, batches: list[dict[str, Any]], args: Any, target: int, device: torch.device
) -> dict[str, Any]:
    """Median of ``args.reps`` timings of every part of every micro-batch, and their sum."""
    from longred_pl.module import published_adamw

    student, teacher = plain_models(teacher_path, args, target, device)
    autocast, warmed, records = _autocast(args, device), set(), []
    for index, batch in enumerate(batches):
        record: dict[str, Any] = {"micro_step": index, "kind": batch["kind"]}
        for name, fn in _parts(batch, student, teacher, device, autocast).items():
            if (batch["kind"], name) not in warmed:
                fn()  # first call of a shape: kernel selection, allocator growth
                warmed.add((batch["kind"], name))
            record[f"{name}_s"] = [timed(fn, device) for _ in range(args.reps)]
            record[f"{name}_median_s"] = median(record[f"{name}_s"])
        records.append(record)
    decay = [p for p in student.parameters() if p.ndim >= 2]
    no_decay = [p for p in student.parameters() if p.ndim < 2]
    optimizer = published_adamw([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    optimizer.step()  # allocates the AdamW state
    optimizer_s = [timed(optimizer.step, device) for _ in range(args.reps)]
    total = sum(v for r in records for k, v in r.items() if k.endswith("_median_s"))
    del student, teacher, optimizer
    release(device)
    return {
        "micro_steps": records,
        "sum_of_parts_s": total,
        "optimizer_step_s": optimizer_s,
        "optimizer_step_median_s": median(optimizer_s),
    }


class StepTimer(L.Callback):
    """Wall time of every optimizer step and of every micro-step (device work included)."""

    def __init__(self, accumulate: int, device: torch.device) -> None:
        self.accumulate, self.device = accumulate, device
        self.steps: list[float] = []
        self.micro: list[tuple[str, float]] = []
        self._step_start = self._micro_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self._micro_start = time.perf_counter()
        if batch_idx % self.accumulate == 0:
            self._step_start = self._micro_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.micro.append((batch["kind"], now - self._micro_start))
        if (batch_idx + 1) % self.accumulate == 0:
            self.steps.append(now - self._step_start)


def time_trainer(
    teacher_path: str,
    urls: dict[str, str],
    args: Any,
    method: str,
    schedule: list[str],
    target: int,
    device: torch.device,
) -> dict[str, Any]:
    """``Trainer.fit`` for ``args.steps`` optimizer steps; the first step is warm-up."""
    module = make_module(teacher_path, args, method, target, args.loss_chunk_size)
    data = datamodule(urls, args, schedule, args.num_workers)
    timer = StepTimer(len(schedule), device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=args.steps,
        accumulate_grad_batches=len(schedule),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    measured = timer.micro[len(schedule) :]
    per_kind = {k: median([t for kind, t in measured if kind == k]) for k in sorted(set(schedule))}
    result = {
        "method": method,
        "schedule": schedule,
        "num_workers": data.num_workers,
        "step_s": timer.steps,
        "median_step_s": median(timer.steps[1:]),
        "micro_step_median_s": per_kind,
        "micro_steps_s": timer.micro,
    }
    del trainer, module, data
    release(device)
    return result


def time_data_pipeline(
    urls: dict[str, str],
    args: Any,
    schedule: list[str],
    teacher_path: str,
    facts: dict[str, Any],
    target: int,
) -> dict[str, Any]:
    """Tokens per second of the training ``DataLoader`` (default workers) plus s2l ids."""
    planner = make_module(teacher_path, args, "longred", target, args.loss_chunk_size)
    data = datamodule(urls, args, schedule, args.num_workers)
    data.check_model(facts["max_position_embeddings"], target, facts["vocab_size"], "longred")
    start = time.perf_counter()
    iterator, tokens, first = iter(data.train_dataloader()), 0, (start, 0)
    for n in range(args.data_batches):
        batch = next(iterator)
        if batch["kind"] == "s2l":
            planner.s2l_position_ids(batch)
        tokens += batch["input_ids"].numel()
        if n == 0:
            first = (time.perf_counter(), tokens)
    end = time.perf_counter()
    with contextlib.suppress(Exception):
        iterator._shutdown_workers()  # type: ignore[attr-defined]
    steady_s = end - first[0]
    return {
        "num_workers": data.num_workers,
        "micro_batches": args.data_batches,
        "tokens": tokens,
        "seconds_total": end - start,
        "seconds_after_first_batch": steady_s,
        "tokens_per_s_total": tokens / (end - start),
        "tokens_per_s_steady": (tokens - first[1]) / steady_s if steady_s > 0 else float("nan"),
    }


def time_loss(facts: dict[str, Any], args: Any, device: torch.device) -> dict[str, Any]:
    """``chunked_next_token_loss`` forward+backward at ``--mem-len`` tokens, per chunk size."""
    gen = torch.Generator().manual_seed(args.seed)
    vocab, hidden = facts["vocab_size"], facts["hidden_size"]
    hidden_BTD = torch.randn(1, args.mem_len, hidden, generator=gen).to(device).requires_grad_()
    weight_VD = (0.02 * torch.randn(vocab, hidden, generator=gen)).to(device).requires_grad_()
    labels_BT = shift_labels(torch.randint(0, vocab, (1, args.mem_len), generator=gen)).to(device)
    autocast, out = _autocast(args, device), {}
    for chunk in args.mem_chunks:

        def step(chunk: int = chunk) -> None:
            with autocast():
                loss = chunked_next_token_loss(hidden_BTD, weight_VD, labels_BT, chunk)
            loss.backward()

        step()
        times = [timed(step, device) for _ in range(args.reps)]
        out[str(chunk)] = {"times_s": times, "median_s": median(times)}
    return {"tokens": args.mem_len, "vocab_size": vocab, "hidden_size": hidden, "by_chunk": out}
