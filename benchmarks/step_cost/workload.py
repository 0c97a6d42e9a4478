"""What the step-cost benchmark trains: its model, its streams, its data module and module.

Every stream holds one optimizer step's worth of random-token samples (written by the
library's own ``write_shards``), so every step reads the same samples in a shuffled order
and the plain-PyTorch parts can be timed on exactly those batches. Every micro-batch
holds the same number of tokens (``batch_sizes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import build_llama

KINDS = ("long", "short", "s2l")


def build_teacher(out_dir: str | Path, args: Any) -> str:
    """The random Llama of the benchmark's size; its window is the s2l length."""
    return build_llama(
        out_dir,
        vocab=args.vocab,
        hidden=args.hidden,
        intermediate=args.intermediate,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        window=args.s2l,
        seed=args.seed,
    )


def lengths(args: Any) -> dict[str, int]:
    return {"long": args.long, "short": args.short, "s2l": args.s2l}


def batch_sizes(args: Any) -> dict[str, int]:
    """Samples per micro-batch so that every micro-batch holds the same number of tokens."""
    tokens = args.long * args.long_batch
    sizes = {}
    for kind, length in lengths(args).items():
        if tokens % length:
            raise ValueError(
                f"--{kind} {length} does not divide the {tokens} tokens of a long micro-batch"
            )
        sizes[kind] = tokens // length
    return sizes


def rope_kwargs(args: Any) -> dict[str, float]:
    """ABF with theta scaled by the extension factor (any value costs the same)."""
    return {"rope_theta": 10000.0 * max(1, args.long // args.s2l)}


def write_streams(
    root: str | Path, args: Any, vocab_size: int, schedule: list[str]
) -> dict[str, str]:
    """Random-token shards of each stream: one optimizer step's worth of samples each."""
    from longred_pl.data.prepare import write_shards

    rng = np.random.default_rng(args.seed)
    sizes, urls = batch_sizes(args), {}
    for kind, length in lengths(args).items():
        per_step = sizes[kind] * max(1, schedule.count(kind))
        count = max(per_step, 2 * max(1, args.num_workers or 1))
        docs = [rng.integers(0, vocab_size, size=length) for _ in range(count)]
        out = Path(root) / kind
        write_shards(
            docs,
            out,
            length,
            samples_per_shard=64,
            pack=False,
            vocab_size=vocab_size,
            tokenizer_name="random",
            source="benchmarks/step_cost",
        )
        urls[kind] = str(out)
    return urls


def datamodule(
    urls: dict[str, str], args: Any, schedule: list[str], num_workers: int | None = None
):
    """``MixedLengthDataModule`` over the streams the schedule uses (default worker count if None)."""
    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.data.shards import StreamConfig

    sizes, lens = batch_sizes(args), lengths(args)
    streams = {k: StreamConfig(urls[k], lens[k], sizes[k]) for k in KINDS if k in schedule}
    extra = {} if num_workers is None else {"num_workers": num_workers}
    return MixedLengthDataModule(**streams, schedule=schedule, seed=args.seed, **extra)


def make_module(
    teacher_path: str, args: Any, method: str, target_length: int, loss_chunk_size: int
):
    """The ``LongReDModule`` the benchmark trains (published weights and AdamW)."""
    from longred_pl.module import LongReDModule

    return LongReDModule(
        teacher_path,
        method=method,
        rope_method="abf",
        target_length=target_length,
        rope_kwargs=rope_kwargs(args),
        attn_implementation=args.attn,
        loss_chunk_size=loss_chunk_size,
        seed=args.seed,
    )
