"""Document-masked attention (all-gather K/V) vs unmasked attention (ring), cp=1 and cp=2.

Run from the repository root::

    .venv/bin/python -m benchmarks.doc_mask_attention                  # ~5 min on 2 CPU cores
    .venv/bin/python -m benchmarks.doc_mask_attention --lengths 1024 --reps 1   # smoke

What one step is: forward + backward of the attention alone, through the registered
``longred_ring`` function (``ring_attention.ring_attention_forward``, so the dispatch is
included), on one sequence of ``T`` tokens, fp32, GQA (``--heads`` on ``--kv-heads``):

* ``unmasked``: no document ids set: at cp=1 transformers' ``sdpa`` (causal), at cp=2
  torch's ring with head-tail load balancing;
* ``masked``: documents of random lengths (uniform in ``[doc/4, 7 doc/4]``, ``--doc``
  tokens on average), ids set: at cp=1 ``document_sdpa`` (SDPA with a boolean mask, in
  query blocks), at cp=2 ``cp_document_attention`` (all-gather K/V, block kernel);
* ``masked, one document``: ids all 0: the same masked paths doing the unmasked work
  (their overhead; the output equals the unmasked one, recorded as ``max_abs_diff``).

cp=1 is one process, cp=2 two gloo processes (``torch.distributed.run``), each with
``--threads`` torch threads (1: a rank per core). Time and memory come from separate
launches. Time: median of ``--reps`` steps after a warm-up, the slowest rank, with glibc's
default allocator settings. Memory per rank (``benchmarks.common.Meter``), one step after
a warm-up: resident set size with glibc ``mmap`` for every allocation >= 128 KiB, so freed
tensors leave at once; ``added`` = the step's high-water mark minus the resident size
before it (inputs excluded), the larger rank. (Timing under that ``mmap`` setting would
charge the block kernel a page fault per temporary, which no real allocator does: it
doubled the masked cp=2 step.)

Writes ``benchmarks/results/doc_mask_attention.json`` (``--out``) and prints a markdown
table whose ratios are masked / unmasked at the same cp and length, from one run.

Shape legend: B batch (1), H heads, K key/value heads, T tokens, S = T / cp, D head dim.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MALLOC_ENV, ROOT, Meter, load_average

KINDS = ("unmasked", "masked", "masked_one_document")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,8192", help="comma-separated T")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--doc", type=int, default=512, help="mean document length")
    parser.add_argument("--reps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    default_out = ROOT / "benchmarks" / "results" / "doc_mask_attention.json"
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", default="time", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def document_ids(tokens: int, mean: int, seed: int = 0) -> Any:
    """``[1, T]`` ids of documents with lengths uniform in ``[mean/4, 7 mean/4]``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths, total = [], 0
    while total < tokens:
        n = int(torch.randint(max(1, mean // 4), 7 * mean // 4 + 1, (1,), generator=gen))
        lengths.append(min(n, tokens - total))
        total += lengths[-1]
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]


# ------------------------------------------------------------------ child (one rank)
class _Attention:
    """What ``longred_ring`` reads of an attention layer (a plain object is enough)."""

    is_causal = True

    def __init__(self, groups: int) -> None:
        self.num_key_value_groups = groups


def _variant(args, tokens, kind, group, rank, cp, meter) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from longred_pl.parallel import set_document_ids, shard_sequence
    from longred_pl.parallel.ring_attention import ring_attention_forward

    gen = torch.Generator().manual_seed(tokens)
    h, k, d = args.heads, args.kv_heads, args.head_dim
    whole = [torch.randn(1, n, tokens, d, generator=gen) for n in (h, k, k, h)]
    q, key, v, w = (shard_sequence(x, rank, cp, dim=2) for x in whole)
    q, key, v = (x.requires_grad_() for x in (q, key, v))
    w_BSHD = w.transpose(1, 2).contiguous()
    ids = {
        "unmasked": None,
        "masked": document_ids(tokens, args.doc),
        "masked_one_document": torch.zeros(1, tokens, dtype=torch.long),
    }[kind]
    module = _Attention(h // k)

    def step() -> Any:
        set_document_ids(ids)
        try:
            out_BSHD, _ = ring_attention_forward(module, q, key, v, None)
            (out_BSHD * w_BSHD).sum().backward()
        finally:
            set_document_ids(None)
        q.grad = key.grad = v.grad = None
        return out_BSHD.detach()

    out = step()  # warm-up
    baseline = meter.current()
    meter.reset()
    step()
    peak = meter.peak()
    times = []
    for _ in range(args.reps if args.measure == "time" else 0):
        if group is not None:
            dist.barrier(group=group)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "tokens": tokens,
        "kind": kind,
        "documents": None if ids is None else int(ids.max()) + 1,
        "step_seconds": times,
        "step_seconds_median": statistics.median(times) if times else None,
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "added_bytes": peak - baseline,
        "out": out,
    }


def child(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    import torch.distributed as dist

    import longred_pl.parallel  # noqa: F401  (registers longred_ring)
    from longred_pl.parallel import set_cp_group

    torch.set_num_threads(args.threads)
    cp = int(os.environ.get("WORLD_SIZE", "1"))
    group, rank = None, 0
    if cp > 1:
        dist.init_process_group("gloo")
        group, rank = dist.new_group(list(range(cp))), dist.get_rank()
    set_cp_group(group)
    meter = Meter(torch.device("cpu"))
    rows = []
    for tokens in (int(t) for t in args.lengths.split(",")):
        outs = {}
        for kind in KINDS:
            row = _variant(args, tokens, kind, group, rank, cp, meter)
            outs[kind] = row.pop("out")
            rows.append({**row, "cp": cp, "rank": rank, "method": meter.method})
        diff = (outs["masked_one_document"] - outs["unmasked"]).abs().max()
        rows[-1]["max_abs_diff_vs_unmasked"] = float(diff)
    if group is not None:
        dist.destroy_process_group()
    return rows


# ------------------------------------------------------------------ parent
def run_cp(args: argparse.Namespace, cp: int, measure: str) -> list[dict[str, Any]]:
    """One launch at ``cp``: ``measure`` ``time`` (plain allocator) or ``memory``."""
    with tempfile.TemporaryDirectory() as out:
        flags = [
            f"--lengths={args.lengths}",
            f"--heads={args.heads}",
            f"--kv-heads={args.kv_heads}",
            f"--head-dim={args.head_dim}",
            f"--doc={args.doc}",
            f"--reps={args.reps}",
            f"--threads={args.threads}",
            f"--child={out}",
            f"--measure={measure}",
        ]
        module = ["-m", "benchmarks.doc_mask_attention", *flags]
        if cp == 1:
            cmd = [sys.executable, *module]
        else:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            cmd = [*launcher, "--nproc_per_node", str(cp), *module]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        if measure == "memory":
            env.update(MALLOC_ENV)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cp={cp} run failed:\n{proc.stderr[-4000:]}")
        return [
            row for r in range(cp) for row in json.loads(Path(out, f"rank{r}.json").read_text())
        ]


def summarise(times: list[dict[str, Any]], memory: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (cp, tokens, kind): the slowest rank's median (``times``), the larger
    rank's added memory (``memory``), and the ratios to ``unmasked`` at the same cp and T."""
    table: dict[tuple, dict[str, Any]] = {}
    for row in times + memory:
        key = (row["cp"], row["tokens"], row["kind"])
        line = table.setdefault(
            key, {"cp": row["cp"], "tokens": row["tokens"], "kind": row["kind"]}
        )
        line["documents"] = row["documents"]
        if row["step_seconds_median"] is not None:
            line["step_seconds"] = max(line.get("step_seconds", 0.0), row["step_seconds_median"])
        else:
            line["added_mib"] = max(line.get("added_mib", 0.0), row["added_bytes"] / 2**20)
        if "max_abs_diff_vs_unmasked" in row:
            line["max_abs_diff_vs_unmasked"] = max(
                line.get("max_abs_diff_vs_unmasked", 0.0), row["max_abs_diff_vs_unmasked"]
            )
    for line in table.values():
        base = table[(line["cp"], line["tokens"], "unmasked")]
        line["time_ratio"] = line["step_seconds"] / base["step_seconds"]
        line["memory_ratio"] = line["added_mib"] / max(base["added_mib"], 1e-9)
    return sorted(table.values(), key=lambda r: (r["tokens"], r["cp"], KINDS.index(r["kind"])))


def markdown(lines: list[dict[str, Any]]) -> str:
    out = [
        "| T | cp | attention | documents | step s (fwd+bwd) | x unmasked | added MiB / rank | x unmasked |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in lines:
        docs = "-" if r["documents"] is None else r["documents"]
        out.append(
            f"| {r['tokens']} | {r['cp']} | {r['kind']} | {docs} | {r['step_seconds']:.3f} "
            f"| {r['time_ratio']:.2f} | {r['added_mib']:.1f} | {r['memory_ratio']:.2f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        rows = child(args)
        rank = int(os.environ.get("RANK", "0"))
        Path(args.child, f"rank{rank}.json").write_text(json.dumps(rows))
        return {}
    import platform

    import torch

    from longred_pl.parallel import check_cp_length

    for tokens in args.lengths.split(","):
        check_cp_length(int(tokens), 2, field="--lengths")
    start_load = load_average()
    times = [row for cp in (1, 2) for row in run_cp(args, cp, "time")]
    memory = [row for cp in (1, 2) for row in run_cp(args, cp, "memory")]
    lines = summarise(times, memory)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_at_start": start_load,
            "load_average_at_end": load_average(),
        },
        "method": {
            "time": "median of --reps steps after a warm-up, slowest rank, default allocator",
            "memory": memory[0]["method"] + "; one step after a warm-up, larger rank",
        },
        "summary": lines,
        "ranks": {"time": times, "memory": memory},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(markdown(lines))
    print(
        f"\nload average at start / end: {start_load} / {report['machine']['load_average_at_end']}"
    )
    print(f"JSON: {args.out}")
    return report


if __name__ == "__main__":
    main()
