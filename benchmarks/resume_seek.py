"""Resume cost: time to the first training batch after resuming at a micro-step.

Builds `MixedLengthDataModule` (published 16-micro-step schedule, default shuffle buffer
of 1000, one loader worker), restores a resume cursor through `load_state_dict`, builds
the training loader and times until its first batch, for each cursor in `--cursors`.
`seek` reads shards written by `longred prepare` (index.json present); `replay` reads the
same shard files without index.json, which is the pre-seek behaviour (every sample
already served is read and decoded again). All three streams share one sample size, so
the first batch costs the same whichever stream it comes from (cursor 1: s2l, 1000:
long). The target: cursor 1000 within 1.2x of cursor 1. At 10000 the long stream is in
its 5th epoch (2500 samples each). Runs alternate between settings; the figures are medians of `--reps` runs, and
ratios are taken within this one run only.

    .venv/bin/python -m benchmarks.resume_seek            # writes benchmarks/results/resume_seek.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from longred_pl.data.datamodule import MixedLengthDataModule
from longred_pl.data.prepare import write_shards
from longred_pl.data.shards import StreamConfig

KINDS = ("long", "short", "s2l")


def make_data(root: Path, seq_len: int, samples: int, per_shard: int) -> dict[str, dict[str, str]]:
    """Random-token shards for each stream, plus a copy of each without index.json."""
    out: dict[str, dict[str, str]] = {"seek": {}, "replay": {}}
    for number, kind in enumerate(KINDS):
        rng = np.random.default_rng(number)
        docs = (rng.integers(0, 32000, size=seq_len) for _ in range(samples))
        indexed = root / kind
        write_shards(
            docs,
            indexed,
            seq_len,
            samples_per_shard=per_shard,
            pack=False,
            vocab_size=32000,
            tokenizer_name="random",
            source="benchmark",
        )
        bare = root / (kind + "-noindex")
        bare.mkdir()
        for shard in indexed.glob("*.tar"):
            os.link(shard, bare / shard.name)  # same bytes, no index.json: counts unknown
        out["seek"][kind], out["replay"][kind] = str(indexed), str(bare)
    return out


def first_batch_seconds(urls: dict[str, str], args: argparse.Namespace, cursor: int) -> float:
    """Seconds from building the data module and its loader at ``cursor`` to the first batch."""
    begin = time.perf_counter()
    streams = {k: StreamConfig(urls[k], args.seq_len, args.batch_size) for k in KINDS}
    dm = MixedLengthDataModule(**streams, num_workers=args.workers, seed=0)
    dm.load_state_dict({**dm.state_dict(), "consumed": cursor})
    loader = iter(dm.train_dataloader())
    batch = next(loader)
    seconds = time.perf_counter() - begin
    assert int(batch["index"]) == cursor
    del loader  # stops the worker
    return seconds


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="resume_seek-"))
    try:
        data = make_data(root, args.seq_len, args.samples, args.samples_per_shard)
        plan = [("seek", c) for c in args.cursors] + [("replay", c) for c in args.replay_cursors]
        times: dict[str, list[float]] = {f"{m}@{c}": [] for m, c in plan}
        first_batch_seconds(data["seek"], args, 1)  # warm-up: imports, page cache
        for _ in range(args.reps):
            for mode, cursor in plan:
                times[f"{mode}@{cursor}"].append(first_batch_seconds(data[mode], args, cursor))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in times.items()}
    base, far = f"seek@{args.cursors[0]}", f"seek@{args.target_cursor}"
    ratio = median[far] / median[base]
    result = {
        "what": "seconds from building the training loader at a resume cursor to its first batch",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "runs_s": times,
        "median_s": median,
        "target": {
            "name": f"{far} / {base}",
            "value": ratio,
            "threshold": 1.2,
            "met": ratio <= 1.2,
        },
    }
    result["replay_vs_seek"] = {
        c: median[f"replay@{c}"] / median[f"seek@{c}"]
        for c in args.replay_cursors
        if f"seek@{c}" in median
    }
    return result


def table(result: dict) -> str:
    rows = ["| setting | median first batch (s) | runs (s) |", "|---|---|---|"]
    for key, value in result["median_s"].items():
        runs = ", ".join(f"{t:.2f}" for t in result["runs_s"][key])
        rows.append(f"| {key} | {value:.3f} | {runs} |")
    target = result["target"]
    rows.append(f"| ratio {target['name']} | {target['value']:.2f} (target <= 1.2) | |")
    for cursor, value in result["replay_vs_seek"].items():
        rows.append(f"| ratio replay@{cursor} / seek@{cursor} | {value:.2f} | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sample, every stream")
    parser.add_argument("--batch-size", type=int, default=2, help="samples per micro-batch")
    parser.add_argument("--samples", type=int, default=2500, help="samples per stream")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1, help="loader workers (data.num_workers)")
    parser.add_argument("--cursors", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--target-cursor", type=int, default=1000, help="compared with the first")
    parser.add_argument("--replay-cursors", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/resume_seek.json")
    args = parser.parse_args(argv)
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
