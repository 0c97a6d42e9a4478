"""Peak activation memory per rank and step time of one long micro-step, cp=1 vs cp=2.

Run from the repository root::

    .venv/bin/python -m benchmarks.cp_memory                # 8192 tokens, ~2-4 min on CPU
    .venv/bin/python -m benchmarks.cp_memory --seq-len 4096 --reps 2

The micro-step is the long stream's: forward + backward of a random Llama (built from a
config, same seed on every rank) on one sequence of ``--seq-len`` tokens, next-token loss
with the library's chunked loss (labels shifted before sharding, token mean over the CP
group, ``parallel.sharding``). cp=1 is one process with plain sdpa; cp=2 is two gloo
processes (``torch.distributed.run``), each holding its head-tail half of the sequence,
with ``attn_implementation="longred_ring"``. The model is replicated (no FSDP) in both, so
that the difference is what context parallelism changes: activations. Gradient reduction
(after backward) is not part of the micro-step measured.

Memory method (CPU, per process): resident set size. glibc is told to ``mmap`` every
allocation of 128 KiB or more (``MALLOC_MMAP_THRESHOLD_``; freed tensors leave RSS at
once, so RSS tracks live tensors). A full-size warm-up step allocates the gradients and
any lazily built state; then ``baseline`` = RSS, the kernel's high-water mark is reset
(``echo 5 > /proc/self/clear_refs``), one step runs, and ``peak`` = ``VmHWM``.
``activation = peak - baseline``: everything the step allocates beyond weights, gradients
and the runtime, i.e. saved activations, transient buffers (chunk logits, the ring's
gathered K/V) and communication buffers. On CUDA ``max_memory_allocated`` is read instead.

Writes ``benchmarks/results/cp_memory.json`` (``--out``) and prints a markdown table.
Target: activation memory per rank at cp=2 at least 1.7x lower than at cp=1.

Shape legend: B batch, T tokens, S = T / cp tokens per rank, D hidden size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MALLOC_ENV, ROOT, Meter

TARGET_RATIO = 1.7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=8192, help="tokens of the micro-step")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--loss-chunk", type=int, default=1024, help="tokens per loss chunk")
    parser.add_argument("--reps", type=int, default=3, help="timed steps after the measured one")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cp_memory.json"))
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ child (one rank)
def _build_model(args: argparse.Namespace, attn: str, device: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    return model.to(device).train()


def _step_fn(model: Any, args: argparse.Namespace, layout: Any, device: Any):
    """``step()``: forward + backward of the long micro-step on this rank's shard."""
    import torch

    from longred_pl.losses import chunked_next_token_loss
    from longred_pl.parallel import cp_mean, cp_token_mean, label_count, shard_batch

    gen = torch.Generator().manual_seed(1)
    ids_BT = torch.randint(0, args.vocab, (1, args.seq_len), generator=gen)
    batch = {
        k: v.to(device)
        for k, v in shard_batch(ids_BT, layout.cp_rank, layout.cp_size, with_labels=True).items()
    }
    labels_BS = batch.pop("labels")
    head = model.get_output_embeddings().weight

    def step() -> float:
        hidden_BSD = model.model(**batch).last_hidden_state
        local = chunked_next_token_loss(hidden_BSD, head, labels_BS, args.loss_chunk)
        loss = cp_token_mean(local, label_count(labels_BS), layout.cp_group)
        loss.backward()
        return float(cp_mean(loss.detach(), layout.cp_group))  # the group's token mean

    return step


def _layout(device: Any):
    import torch.distributed as dist

    from longred_pl.parallel import ParallelLayout

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return ParallelLayout(0, 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    group = dist.new_group(list(range(world)))
    return ParallelLayout(0, 1, dist.get_rank(), world, group)


def _timed(step, layout: Any, meter: Meter, reps: int) -> list[float]:
    import torch.distributed as dist

    times = []
    for _ in range(reps):
        if layout.cp_group is not None:
            dist.barrier(group=layout.cp_group)
        meter.current()  # synchronises CUDA; gc outside the timed region
        start = time.perf_counter()
        step()
        meter.current()
        times.append(time.perf_counter() - start)
    return times


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One rank: warm-up step, measured step, timed steps; returns this rank's figures."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    layout = _layout(device)
    import longred_pl.parallel  # noqa: F401  (registers longred_ring)
    from longred_pl.parallel import set_cp_group

    set_cp_group(layout.cp_group)
    meter = Meter(device)
    start = meter.current()
    model = _build_model(args, "longred_ring" if layout.cp_size > 1 else "sdpa", device)
    loaded = meter.current()
    step = _step_fn(model, args, layout, device)
    step()  # warm-up: gradients allocated, kernels and buffers initialised
    baseline = meter.current()
    meter.reset()
    loss = step()
    peak = meter.peak()
    times = _timed(step, layout, meter, args.reps)
    return {
        "cp_rank": layout.cp_rank,
        "cp_size": layout.cp_size,
        "tokens_per_rank": args.seq_len // layout.cp_size,
        "loss": loss,
        "model_bytes": loaded - start,
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "activation_bytes": peak - baseline,
        "step_seconds": times,
        "step_seconds_median": statistics.median(times) if times else None,
        "method": meter.method,
    }


def child_main(args: argparse.Namespace) -> None:
    result = child(args)
    rank = int(os.environ.get("RANK", "0"))
    Path(args.child, f"rank{rank}.json").write_text(json.dumps(result))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------ parent
def _forwarded(args: argparse.Namespace) -> list[str]:
    flags = []
    for name in ("seq_len", "hidden", "intermediate", "layers", "heads", "kv_heads", "vocab"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for name in ("loss_chunk", "reps", "threads", "device"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags


def run_variant(args: argparse.Namespace, cp: int) -> list[dict[str, Any]]:
    """Run cp=1 (one process) or cp>1 (``torch.distributed.run``) in fresh interpreters."""
    with tempfile.TemporaryDirectory() as out:
        module = ["-m", "benchmarks.cp_memory", *_forwarded(args), "--child", out]
        if cp == 1:
            cmd = [sys.executable, *module]
        else:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd = [*launcher, "--nproc_per_node", str(cp), *module]
        env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cp={cp} run failed:\n{proc.stderr[-4000:]}")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(cp)]


def summarise(args: argparse.Namespace, runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-variant worst rank, the ratio against the target, the machine and settings."""
    import torch

    rows = {}
    for cp, ranks in runs.items():
        rows[cp] = {
            "activation_bytes_max_rank": max(r["activation_bytes"] for r in ranks),
            "peak_bytes_max_rank": max(r["peak_bytes"] for r in ranks),
            "step_seconds_median_max_rank": max(r["step_seconds_median"] for r in ranks),
            "loss": ranks[0]["loss"],
        }
    ratio = rows[1]["activation_bytes_max_rank"] / rows[2]["activation_bytes_max_rank"]
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "method": runs[1][0]["method"],
        "variants": {f"cp={cp}": {"summary": rows[cp], "ranks": runs[cp]} for cp in runs},
        "target": {
            "name": "activation memory per rank, cp=1 / cp=2",
            "value": ratio,
            "threshold": TARGET_RATIO,
            "met": ratio >= TARGET_RATIO,
        },
    }


def markdown(report: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = [
        "| variant | tokens/rank | activation MiB (max rank) | peak RSS MiB | step s (median) | loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, variant in report["variants"].items():
        s, first = variant["summary"], variant["ranks"][0]
        lines.append(
            f"| {name} | {first['tokens_per_rank']} | {s['activation_bytes_max_rank'] / mib:.0f} "
            f"| {s['peak_bytes_max_rank'] / mib:.0f} | {s['step_seconds_median_max_rank']:.2f} "
            f"| {s['loss']:.4f} |"
        )
    t = report["target"]
    verdict = "met" if t["met"] else "NOT met"
    lines.append(f"\n{t['name']}: {t['value']:.2f}x (target >= {t['threshold']}x): {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return {}
    from longred_pl.parallel import check_cp_length

    check_cp_length(args.seq_len, 2, field="--seq-len")
    runs = {cp: run_variant(args, cp) for cp in (1, 2)}
    report = summarise(args, runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"\nJSON: {args.out}")
    return report


if __name__ == "__main__":
    main()
