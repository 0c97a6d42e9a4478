"""Set-up shared by the benchmarks and experiments: offline, quiet, a random Llama, the machine.

The model is a random Llama built from a config and written with ``save_pretrained``, so
the library's real ``from_pretrained`` path loads it (as in ``tests/conftest.py``).
Importing this module sets the offline defaults of Hugging Face before transformers loads.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from longred_pl.models import resolve_device  # noqa: E402,F401  (re-exported for the benchmarks)

ROOT = Path(__file__).resolve().parents[1]


def quiet() -> None:
    """Hide progress bars and info logs of transformers and Lightning (timings stay readable)."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("lightning.pytorch", "lightning.fabric", "longred_pl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def build_llama(
    out_dir: str | Path,
    *,
    vocab: int,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int | None,
    window: int,
    seed: int = 0,
) -> str:
    """A random Llama (window ``window`` tokens, untied head), saved with ``save_pretrained``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=window,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return str(out_dir)


def model_facts(path: str) -> dict[str, Any]:
    """Sizes read back from a saved config (a benchmark may load an existing model)."""
    from longred_pl.models import load_config

    cfg = load_config(path)
    return {
        "path": path,
        "vocab_size": int(cfg.vocab_size),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(cfg.intermediate_size),
        "num_hidden_layers": int(cfg.num_hidden_layers),
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_key_value_heads": int(cfg.num_key_value_heads),
        "max_position_embeddings": int(cfg.max_position_embeddings),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


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
    """CPU count, threads, load, versions and the device: recorded with every result."""
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


# ------------------------------------------------------------------ memory meter
# Freed tensors leave RSS at once when glibc serves every allocation of 128 KiB or more
# with mmap: children that measure memory run with this environment.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _hwm() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Meter:
    """Current and peak bytes of one device (see the module docstring)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch, self.device = torch, device
        self.cuda = device.type == "cuda"
        self.can_reset = True if self.cuda else _reset_hwm()
        self.method = (
            "torch.cuda.max_memory_allocated after reset_peak_memory_stats"
            if self.cuda
            else "RSS high-water mark (VmHWM) after clear_refs=5, glibc mmap threshold 128 KiB"
            if self.can_reset
            else "ru_maxrss (high-water mark since start), 1/8-length warm-up"
        )

    def current(self) -> int:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            return int(self.torch.cuda.memory_allocated(self.device))
        return _rss()

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)
        elif self.can_reset:
            _reset_hwm()

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            return int(self.torch.cuda.max_memory_allocated(self.device))
        return (
            _hwm() if self.can_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
