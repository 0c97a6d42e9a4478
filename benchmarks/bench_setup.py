"""Set-up shared by the benchmarks: the model, the shards, the data module, the machine.

The model is a random Llama built from a config and written with ``save_pretrained``, so
the library's real ``from_pretrained`` path loads it (as in ``tests/conftest.py``). The
shards are random token ids written by the library's own ``write_shards``. Every stream
holds one optimizer step's worth of samples, so every step reads the same samples (in a
shuffled order) and the plain-PyTorch parts can be timed on exactly those batches.

Shape legend: B batch, T tokens, D hidden size, V vocabulary.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

KINDS = ("long", "short", "s2l")


def quiet() -> None:
    """Hide progress bars and info logs of transformers and Lightning (timings stay readable)."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("lightning.pytorch", "lightning.fabric", "longred_pl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build_teacher(out_dir: str | Path, args: Any) -> str:
    """A random Llama of the benchmark's size, saved with ``save_pretrained``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=args.s2l,  # the teacher's window = the s2l length
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return str(out_dir)


def model_facts(teacher_path: str) -> dict[str, Any]:
    """Sizes read back from the saved config (the benchmark may load ``--teacher``)."""
    from longred_pl.models import load_config

    cfg = load_config(teacher_path)
    return {
        "path": teacher_path,
        "vocab_size": int(cfg.vocab_size),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(cfg.intermediate_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_key_value_heads": int(cfg.num_key_value_heads),
        "max_position_embeddings": int(cfg.max_position_embeddings),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


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
            source="benchmarks/step_cost.py",
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device here")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: other work on the machine skews every timing."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict[str, Any]:
    import lightning
    import transformers

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
