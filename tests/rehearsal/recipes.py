"""The recipe rehearsal: every shipped fit config, run as written on 2 CPU processes.

A *rehearsal* is one (fit config, trainer config) pair as a user launches it::

    longred fit --config <fit config> --config <trainer config>

run with one more ``--config`` (written by :func:`overrides`) that changes only what a CPU
cannot run or a test cannot wait for, and nothing about the recipe itself:

* the model: a tiny random model of the teacher's architecture family (:data:`TEACHERS`:
  what the test knows of each teacher a config names), with as many layers as the
  deepest distilled layer, and the teacher's window scaled like every length;
* lengths: every stream's ``seq_len``, the target length and the teacher window divided
  by one factor (:func:`scale_factor`), so ratios (the RoPE extension, k of the skipped
  positions) are kept and each length stays splittable under context parallelism;
  a skipped-position scheme whose absolute head/tail length (``4k``) no longer fits the
  scaled s2l sample gets that length scaled too;
* data: random-token shards of those lengths written by the library's shard writer;
* hardware: CPU, at most 2 processes with gloo (``devices`` clamped, one node, a CP or
  HYBRID_SHARD group of 2), ``32-true`` precision; Lightning's ``FSDPStrategy`` as its
  CPU-enabled subclass (``cpu_strategies.CPUFSDPStrategy``);
* time: one optimizer step, a validation after it where the config validates and a
  checkpoint (the test then resumes from it for the second step); outputs (checkpoints,
  logs, exports) under a temporary directory.

Batch sizes, the schedule, the accumulation, clipping, the objective and its weights,
positions, the optimizer, chunking, checkpointing settings, workers and buffers are the
config's own.
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
HEADER = re.compile(r"^# Trainer config: (\S+)", re.M)
LAUNCH = re.compile(r"longred fit --config (\S+\.yaml) --config (configs/trainer/\S+\.yaml)")
LONGEST = 512  # tokens of the longest scaled stream, at most (unless divisibility needs more)
SHORTEST = 4  # tokens of the shortest scaled stream, at least
VOCAB = 256
STREAMS = ("long", "short", "s2l", "val_short", "val_long")


@dataclass(frozen=True)
class Teacher:
    """What a rehearsal keeps of a real teacher: its family and its window."""

    family: str  # "llama" | "mistral"
    window: int
    rope_theta: float
    gqa: int  # query heads per key/value head


@dataclass(frozen=True)
class Profile:
    """Where and at what size a recipe runs: the CPU rehearsal, or the GPU smoke's recipe."""

    accelerator: str = "cpu"
    max_devices: int = 2
    precision: str | None = "32-true"  # None: the config's own
    backend: str | None = "gloo"  # None: the strategy's default (nccl on CUDA)
    hidden: int = 32
    heads: int = 4
    intermediate: int = 64
    vocab: int = VOCAB
    factor: int | None = None  # None: scale_factor()
    checkpoint_dir: str = "checkpoints"


CPU = Profile()
# ~1.2B parameters (hidden 1536, 32 layers, 12 heads of 128, GQA 4:1, Llama-3 vocabulary),
# bf16 as the config says, one GPU, every length / 4 (the 32K recipe at 8K tokens)
GPU = Profile(
    accelerator="gpu",
    max_devices=1,
    precision=None,
    backend=None,
    hidden=1536,
    heads=12,
    intermediate=4096,
    vocab=128256,
    factor=4,
)


# The teachers the shipped configs name (their config.json), and the library-built ones.
TEACHERS = {
    "/models/Meta-Llama-3-8B": Teacher("llama", 8192, 500000.0, 4),
    "/models/Mistral-7B-v0.3": Teacher("mistral", 32768, 1000000.0, 4),
    "artifacts/teacher": Teacher("llama", 256, 10000.0, 2),
    "artifacts/reproduce/teacher": Teacher("llama", 256, 10000.0, 2),
    "artifacts/paper/teacher": Teacher("llama", 256, 10000.0, 2),
}


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def is_fit_config(path: Path) -> bool:
    """A config ``longred fit`` runs: it has a model with a teacher and data streams."""
    if path.name.startswith("teacher-") or path.parent.name in ("trainer", "logger", "teacher"):
        return False
    config = load_yaml(path)
    return "teacher_path" in (config.get("model") or {}) and "data" in config


def header_trainer(path: Path) -> str | None:
    """The trainer config a fit config's header names, or None for ``none (...)``."""
    found = HEADER.search(path.read_text())
    if found is None:
        raise AssertionError(f"{path.relative_to(ROOT)}: no '# Trainer config: ...' header line")
    return None if found.group(1) == "none" else found.group(1)


def named_pairs() -> list[tuple[str, str | None]]:
    """Every (fit config, trainer config or None) a header or a trainer's launch line names."""
    found: set[tuple[str, str | None]] = set()
    for path in sorted(CONFIGS.rglob("*.yaml")):
        rel = str(path.relative_to(ROOT))
        if is_fit_config(path):
            found.add((rel, header_trainer(path)))
        if path.parent.name == "trainer":
            for fit, trainer in LAUNCH.findall(path.read_text()):
                assert trainer == rel, f"{rel}: its launch line names {trainer}"
                found.add((fit, trainer))
    return sorted(found, key=lambda p: (p[0], p[1] or ""))


# what the rehearsal sets itself, whatever a trainer config says (see the module docstring)
HARDWARE = ("accelerator", "devices", "num_nodes", "precision")


def _on_cpu(config: dict[str, Any]) -> dict[str, Any]:
    trainer = {k: v for k, v in config.get("trainer", {}).items() if k not in HARDWARE}
    if trainer.get("strategy") == "auto":
        del trainer["strategy"]
    return {**config, "trainer": trainer}


def pairs() -> tuple[list[tuple[str, str | None]], dict[tuple[str, str], tuple[str, None]]]:
    """The rehearsals to run, and the named pairs that would run one of them again.

    A trainer config that only sets hardware (``single-gpu.yaml``: one device, no strategy)
    composed with a single-process config is, on the CPU, that config alone.
    """
    named = named_pairs()
    same = {
        (f, t): (f, None)
        for f, t in named
        if t and (f, None) in named and _on_cpu(merged(f, t)) == _on_cpu(merged(f, None))
    }
    return [p for p in named if p not in same], same


def merged(fit: str, trainer: str | None) -> dict[str, Any]:
    """The two configs merged as jsonargparse does for these files (the later one wins)."""
    config = load_yaml(ROOT / fit)
    for section, values in (load_yaml(ROOT / trainer) if trainer else {}).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


# ------------------------------------------------------------------------------ scale
def cp_size(trainer: dict[str, Any]) -> int:
    strategy = trainer.get("strategy")
    if isinstance(strategy, dict):
        return int((strategy.get("init_args") or {}).get("context_parallel_size", 1))
    return 1


def stream_lengths(config: dict[str, Any]) -> dict[str, int]:
    data = config["data"]
    return {k: int(data[k]["seq_len"]) for k in STREAMS if data.get(k)}


def scale_factor(config: dict[str, Any], teacher: Teacher) -> int:
    """The largest power of 2 that keeps every scaled length whole, >= :data:`SHORTEST`,
    splittable under the rehearsal's CP group (2 x cp), and the longest <= :data:`LONGEST`
    where that is possible."""
    lengths = [
        *stream_lengths(config).values(),
        teacher.window,
        int(config["model"]["target_length"]),
    ]
    unit = 2 * min(cp_size(config["trainer"]), 2) if cp_size(config["trainer"]) > 1 else 1
    best = 1
    for power in range(0, 21):
        f = 2**power
        if any(n % f or n // f < SHORTEST or (n // f) % unit for n in lengths):
            break
        best = f
        if max(lengths) // f <= LONGEST:
            break
    return best


def _scaled_positions(config: dict[str, Any], factor: int) -> dict[str, Any] | None:
    """``position_kwargs`` with the head/tail lengths scaled, if the default ``4k`` no longer fits."""
    from longred_pl.errors import UserError
    from longred_pl.positions import check_scheme_fits

    model, data = config["model"], config["data"]
    if model.get("method", "longred") != "longred" or not data.get("s2l"):
        return None
    kwargs = dict(model.get("position_kwargs") or {})
    seq, target = int(data["s2l"]["seq_len"]) // factor, int(model["target_length"]) // factor
    scheme = model.get("s2l_positions", "cream")
    try:
        check_scheme_fits(scheme, seq, target, kwargs)
        return None
    except UserError:
        k = target // seq
        kwargs["head_tail_lengths"] = [seq // 3, max(1, 4 * k // factor)]
        check_scheme_fits(scheme, seq, target, kwargs)
        return kwargs


# --------------------------------------------------------------------------- inputs
def save_teacher(
    path: Path, teacher: Teacher, window: int, layers: int, profile: Profile = CPU
) -> str:
    """A random model of ``teacher``'s family at ``profile``'s size, via ``save_pretrained``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    common = dict(
        vocab_size=profile.vocab,
        hidden_size=profile.hidden,
        intermediate_size=profile.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=profile.heads,
        num_key_value_heads=profile.heads // teacher.gqa,
        max_position_embeddings=window,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": teacher.rope_theta},
    )
    if teacher.family == "mistral":
        config, cls = MistralConfig(**common, sliding_window=None), MistralForCausalLM
    else:
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    torch.manual_seed(0)
    device = "cuda" if profile.accelerator == "gpu" and torch.cuda.is_available() else "cpu"
    with torch.device(device):  # a 1B model initialises in seconds on a GPU
        cls(config).save_pretrained(path)
    return str(path)


def write_stream(path: Path, seq_len: int, samples: int, seed: int, vocab: int = VOCAB) -> str:
    import numpy as np

    from longred_pl.data.prepare import write_shards

    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=seq_len) for _ in range(samples)]
    write_shards(
        docs,
        path,
        seq_len,
        samples_per_shard=max(1, samples // 4),
        pack=False,
        vocab_size=vocab,
        tokenizer_name="random",
        source="rehearsal",
    )
    return str(path)


# -------------------------------------------------------------------------- overrides
def _strategy(trainer: dict[str, Any], devices: int, profile: Profile) -> Any:
    """The trainer's strategy on ``devices`` processes (gloo and CPU FSDP1 for the CPU)."""
    strategy = copy.deepcopy(trainer.get("strategy", "auto"))
    if not isinstance(strategy, dict):
        return strategy
    name = strategy["class_path"].rsplit(".", 1)[-1]
    args = strategy.setdefault("init_args", {})
    if profile.backend:
        args["process_group_backend"] = profile.backend
    if name == "FSDPStrategy" and profile.accelerator == "cpu":
        strategy["class_path"] = "cpu_strategies.CPUFSDPStrategy"
    if name == "FSDPStrategy" and "device_mesh" in args:
        args["device_mesh"] = [1, devices]
    elif name == "ModelParallelStrategy":
        args["data_parallel_size"] = devices
    elif name == "ContextParallelStrategy":
        args["context_parallel_size"] = min(int(args["context_parallel_size"]), devices)
        args.pop("data_parallel_size", None)
    return strategy


def _callbacks(trainer: dict[str, Any], out: Path, profile: Profile) -> list[dict[str, Any]]:
    """The config's callbacks, writing under ``out``; a checkpoint every step."""
    result = []
    for callback in copy.deepcopy(trainer.get("callbacks") or []):
        args = callback.setdefault("init_args", {})
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name == "ModelCheckpoint":
            args.update(dirpath=str(out / profile.checkpoint_dir), every_n_train_steps=1)
            if profile.accelerator == "gpu":  # disk: one checkpoint of a 1B model is ~14 GB
                args.update(save_last=False, save_top_k=-1)
        elif "dirpath" in args:
            args["dirpath"] = str(out / name)
        result.append(callback)
    if not any(c["class_path"].endswith("ModelCheckpoint") for c in result):
        result.append(
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(out / profile.checkpoint_dir),
                    "every_n_train_steps": 1,
                    "save_top_k": -1,
                },
            }
        )
    return result


@dataclass
class Rehearsal:
    """One pair's plan: what it changes, and where its inputs and outputs are."""

    fit: str
    trainer: str | None
    factor: int
    devices: int
    validates: bool
    override: dict[str, Any]
    out: Path

    def command(self, *extra: str) -> list[str]:
        configs = [
            str(ROOT / self.fit),
            *([str(ROOT / self.trainer)] if self.trainer else []),
            str(self.out / "rehearsal.yaml"),
        ]
        return [
            sys.executable,
            "-m",
            "longred_pl.cli",
            "fit",
            *(a for c in configs for a in ("--config", c)),
            *extra,
        ]

    def run(self, *extra: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
            ),
        }
        return subprocess.run(
            self.command(*extra), cwd=self.out, env=env, capture_output=True, text=True, timeout=900
        )


def plan(fit: str, trainer: str | None, out: Path, profile: Profile = CPU) -> Rehearsal:
    """Write the teacher and shards for ``(fit, trainer)`` under ``out``; the plan."""
    config = merged(fit, trainer)
    model, data, train = config["model"], config["data"], config.get("trainer", {})
    teacher = TEACHERS[model["teacher_path"]]
    factor = profile.factor or scale_factor(config, teacher)
    layers = max(model.get("distill_layers") or [4])
    teacher_dir = save_teacher(out / "teacher", teacher, teacher.window // factor, layers, profile)
    written = int(train.get("devices", 1)) * int(train.get("num_nodes", 1))
    devices = min(profile.max_devices, written)
    dp = devices // min(cp_size(train), devices) if cp_size(train) > 1 else devices
    new_data: dict[str, Any] = {}
    for i, kind in enumerate(k for k in STREAMS if data.get(k)):
        stream = data[kind]
        seq, batch = int(stream["seq_len"]) // factor, int(stream["batch_size"])
        count = (
            8 * dp if not kind.startswith("val") else 2 * batch * int(data.get("val_batches") or 4)
        )
        urls = write_stream(out / "data" / kind, seq, max(count, 2 * batch * dp), i, profile.vocab)
        new_data[kind] = {"urls": urls, "seq_len": seq, "batch_size": batch}
    validates = (
        bool(data.get("val_short") or data.get("val_long"))
        and train.get("limit_val_batches", 1) != 0
    )
    accumulate = int(train.get("accumulate_grad_batches", 1))
    new_train: dict[str, Any] = {
        "accelerator": profile.accelerator,
        "devices": devices,
        "num_nodes": 1,
        "precision": profile.precision or train.get("precision", "32-true"),
        "strategy": _strategy(train, devices, profile),
        "max_steps": 1,
        "default_root_dir": str(out),
        "callbacks": _callbacks(train, out, profile),
        "enable_checkpointing": True,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(out), "name": "logs"},
        },
    }
    if validates:
        new_train.update(val_check_interval=accumulate, check_val_every_n_epoch=None)
    new_model: dict[str, Any] = {
        "teacher_path": teacher_dir,
        "target_length": int(model["target_length"]) // factor,
    }
    positions = _scaled_positions(config, factor)
    if positions is not None:
        new_model["position_kwargs"] = positions
    override = {"trainer": new_train, "model": new_model, "data": new_data}
    out.mkdir(parents=True, exist_ok=True)
    (out / "rehearsal.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    return Rehearsal(fit, trainer, factor, devices, validates, override, out)


def metrics(out: Path) -> list[dict[str, str]]:
    """Rows of every ``metrics.csv`` under ``out`` (the CSV logger's), in version order."""
    import csv

    rows: list[dict[str, str]] = []
    for path in sorted(out.glob("logs/version_*/metrics.csv")):
        with path.open() as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def finite(value: str) -> bool:
    return value not in ("", None) and math.isfinite(float(value))
