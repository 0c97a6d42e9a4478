"""Per-rank host memory of loading, training and validation, as ranks are added.

    .venv/bin/python -m benchmarks.scale_memory             # ~15 min on 2 CPU cores
    .venv/bin/python -m benchmarks.scale_memory --tokens 16384 --layouts dp2,cp2 \
        --no-compare-loaders --out benchmarks/results/scale_memory_16k.json   # ~30 min
    .venv/bin/python -m benchmarks.scale_memory --render benchmarks/results/scale_memory.json
    .venv/bin/python -m benchmarks.scale_memory --tokens 2048 --layers 4   # a quick look

A random Llama of >= 100M parameters (default: hidden 768, 12 layers, 12 heads, 4
key/value heads, intermediate 2048, vocabulary 32000: 125M) is saved with
``save_pretrained``; each layout runs ``longred fit`` as a user would (method ``longred``,
schedule ``[long, short]``, two optimizer steps, activation checkpointing, fp32, then a
validation on one ``--tokens`` held-out sequence and short text), with
``benchmarks/scale_probe.py`` recording each rank's resident memory (two optimizer steps;
the training figures are the second step's long micro-step, when gradients and AdamW
state exist)
(``MALLOC_MMAP_THRESHOLD_`` set so that freed tensors leave RSS at once):

* ``single``: 1 process, ``dp2``: FSDP2 on 2 processes (``ModelParallelStrategy``),
  ``cp2``: context parallelism on 2 processes (``ContextParallelStrategy``, one sequence
  split in two);
* each layout's load also with the loader of before (``--compare-loaders``: the models
  built whole by ``from_pretrained`` on every rank, then sharded; load only).

Figures per rank (MiB): process base (before any model), load peak, the first long
micro-step's peak and what it adds (``train_peak - train_before``: activations and
transients), the validation's peak. Targets (issue "per-rank memory that shrinks"):
load peak at 2 ranks <= base + (student + teacher) / 2 + 25 %; the long micro-step's
addition at cp=2 >= 1.7x lower than at cp=1 (dp2: same sharding, one sequence per rank);
validation peak at cp=2 <= training peak. Then the same arithmetic for Llama-3-8B and
-70B on 8 and 64 GPUs, *estimates* scaled from these measurements
(``estimates``). Writes ``benchmarks/results/scale_memory.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import MALLOC_ENV, ROOT, build_llama, machine_info

MIB = 2**20
LOAD_SLACK = 1.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of the long micro-step")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--layouts", default="single,dp2,cp2")
    parser.add_argument("--compare-loaders", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale_memory.json"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch (default: a temp dir)")
    parser.add_argument(
        "--render", type=Path, default=None, help="print the tables of a result JSON; run nothing"
    )
    return parser.parse_args(argv)


def write_data(root: Path, tokens: int, vocab: int) -> dict[str, tuple[str, int, int]]:
    """Random-token shards: ``{stream: (dir, seq_len, batch_size)}``."""
    import numpy as np

    from longred_pl.data.prepare import write_shards

    streams = {
        "long": (tokens, 1),
        "short": (256, 4),
        "val_long": (tokens, 1),
        "val_short": (256, 4),
    }
    rng = np.random.default_rng(0)
    out = {}
    for name, (length, batch) in streams.items():
        docs = [rng.integers(0, vocab, size=length) for _ in range(8)]
        write_shards(
            docs,
            root / name,
            length,
            samples_per_shard=2,
            pack=False,
            vocab_size=vocab,
            tokenizer_name="random",
            source="scale_memory",
        )
        out[name] = (str(root / name), length, batch)
    return out


STRATEGIES = {
    "single": None,
    "dp2": {
        "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {
            "data_parallel_size": 2,
            "tensor_parallel_size": 1,
            "process_group_backend": "gloo",
        },
    },
    "cp2": {
        "class_path": "longred_pl.parallel.ContextParallelStrategy",
        "init_args": {"context_parallel_size": 2, "process_group_backend": "gloo"},
    },
}


def run_layout(
    layout: str, model: str, data: dict, work: Path, train: bool, loader: str
) -> list[dict]:
    """One ``longred fit`` of ``layout``; each rank's probe figures."""
    import yaml

    out = work / f"{layout}-{loader}"
    shutil.rmtree(out, ignore_errors=True)
    probe = {"class_path": "scale_probe.MemoryProbe", "init_args": {"dirpath": str(out / "probe")}}
    trainer: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1 if layout == "single" else 2,
        "precision": "32-true",
        "max_steps": 2 if train else 0,
        "accumulate_grad_batches": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "val_check_interval": 4,
        "check_val_every_n_epoch": None,
        "callbacks": [probe],
        "default_root_dir": str(out),
    }
    if STRATEGIES[layout]:
        trainer["strategy"] = STRATEGIES[layout]
    config = {
        "seed_everything": 0,
        "trainer": trainer,
        "model": {
            "teacher_path": model,
            "target_length": data["long"][1],
            "rope_kwargs": {"rope_theta": 4e5},
            "distill_layers": [1, 2],
            "gradient_checkpointing": True,
            "attn_implementation": "longred_ring" if layout == "cp2" else "sdpa",
        },
        "data": {
            **{k: {"urls": u, "seq_len": n, "batch_size": b} for k, (u, n, b) in data.items()},
            "schedule": ["long", "short"],
            "num_workers": 0,
            "val_batches": 1,
        },
    }
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        **MALLOC_ENV,
        "OMP_NUM_THREADS": "1",
        "SCALE_MEMORY_LOADER": loader,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)]),
    }
    cmd = [sys.executable, "-m", "longred_pl.cli", "fit", "--config", str(out / "config.yaml")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{layout}/{loader}: {proc.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted((out / "probe").glob("rank*.json"))]
    for rank in ranks:
        rank["seconds"] = round(time.perf_counter() - start, 1)
    return ranks


def mib(value: float | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def summarise(ranks: list[dict]) -> dict[str, Any]:
    """The worst rank's figures (MiB)."""

    def worst(key: str) -> float | None:
        values = [r[key] for r in ranks if key in r]
        return mib(max(values)) if values else None

    added = [r["train_peak"] - r["train_before"] for r in ranks if "train_peak" in r]
    return {
        "ranks": len(ranks),
        "base": worst("load_before"),
        "load_peak": worst("load_peak"),
        "after_load": worst("load_after"),
        "train_peak": worst("train_peak"),
        "train_added": mib(max(added)) if added else None,
        "validation_peak": worst("validation_peak"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        print(markdown(result))
        return result
    work = args.work or Path(tempfile.mkdtemp(prefix="scale_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_llama(
        work / "model",
        vocab=args.vocab,
        hidden=args.hidden,
        intermediate=args.intermediate,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        window=args.tokens // 4,
    )
    weights = sum(p.stat().st_size for p in Path(model).glob("*.safetensors"))
    data = write_data(work / "data", args.tokens, args.vocab)
    result: dict[str, Any] = {
        "settings": vars(args) | {"out": str(args.out), "work": str(work)},
        "model_bytes": weights,
        "student_plus_teacher_mib": mib(2 * weights),
        "machine": machine_info(__import__("torch").device("cpu")),
        "layouts": {},
    }
    for layout in args.layouts.split(","):
        print(f"[scale_memory] {layout}: fit", flush=True)
        result["layouts"][layout] = {
            "sharded": summarise(run_layout(layout, model, data, work, True, "sharded"))
        }
        if args.compare_loaders:
            print(f"[scale_memory] {layout}: load with from_pretrained", flush=True)
            before = run_layout(layout, model, data, work, False, "pretrained")
            result["layouts"][layout]["pretrained"] = summarise(before)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    result["targets"] = targets(result)
    if "dp2" in result["layouts"] and "cp2" in result["layouts"]:
        result["estimates"] = estimates(result)
    args.out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return result


LLAMA3 = {  # the public configs of Llama-3-8B and -70B
    "Llama-3-8B": dict(
        num_hidden_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    ),
    "Llama-3-70B": dict(
        num_hidden_layers=80,
        hidden_size=8192,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
        vocab_size=128256,
    ),
}


def _per_token(shape: Any) -> float:
    """Activation values per token of ``flops.long_microstep_bytes``'s scaling terms."""
    return (
        shape.layers * shape.hidden + 5 * shape.hidden + 2 * shape.kv_dim + 4 * shape.intermediate
    )


def estimates(result: dict[str, Any], tokens: int = 131072, cp: int = 8) -> list[dict[str, Any]]:
    """Per-GPU memory of Llama-3-8B / -70B on 8 and 64 GPUs, *estimated* from the measurements.

    Activations: the measured per-token slope (``dp2`` minus ``cp2`` added memory over the
    tokens they differ by) scaled by the ratio of ``flops``'s per-token terms and by 1/2
    (bf16 on the GPU, fp32 here); the measured token-independent part scaled by the ratio
    of vocabulary x hidden (it is the LM head's buffers). State: 16 bytes per student
    parameter (fp32 weights, gradients, AdamW moments) and 2 per teacher parameter (bf16),
    divided by the ranks. Host memory while loading: before, every rank built both models
    whole in fp32 on the CPU (``from_pretrained``); now one slice of one tensor at a time.
    """
    from types import SimpleNamespace

    from benchmarks.gpu_smoke.flops import Shape

    settings, layouts = result["settings"], result["layouts"]
    here = Shape.of(
        SimpleNamespace(
            num_hidden_layers=settings["layers"],
            hidden_size=settings["hidden"],
            num_attention_heads=settings["heads"],
            num_key_value_heads=settings["kv_heads"],
            intermediate_size=settings["intermediate"],
            vocab_size=settings["vocab"],
        )
    )
    t = settings["tokens"]
    dp2, cp2 = layouts["dp2"]["sharded"]["train_added"], layouts["cp2"]["sharded"]["train_added"]
    slope = (dp2 - cp2) / (t - t / 2)  # MiB per token on this rank
    fixed = cp2 - slope * t / 2
    rows = []
    for name, config in LLAMA3.items():
        shape = Shape.of(SimpleNamespace(**config))
        per_token = slope * _per_token(shape) / _per_token(here) / 2
        vocab = fixed * (shape.vocab * shape.hidden) / (here.vocab * here.hidden)
        for gpus in (8, 64):
            local = tokens // cp
            state = shape.params * 18 / gpus / 2**30
            activations = (per_token * local + vocab) / 1024
            rows.append(
                {
                    "model": name,
                    "gpus": gpus,
                    "tokens": tokens,
                    "cp": cp,
                    "host_load_before_gib": round(shape.params * 8 / 2**30, 1),
                    "host_load_after_gib": round(shape.vocab * shape.hidden * 4 / gpus / 2**30, 2),
                    "gpu_state_gib": round(state, 1),
                    "gpu_activations_gib": round(activations, 1),
                    "gpu_total_gib": round(state + activations, 1),
                }
            )
    return rows


def targets(result: dict[str, Any]) -> dict[str, Any]:
    layouts, out = result["layouts"], {}
    both = result["student_plus_teacher_mib"]
    for name in ("dp2", "cp2"):
        if name in layouts:
            row = layouts[name]["sharded"]
            bound = row["base"] + both / 2 * LOAD_SLACK
            out[f"load_{name}"] = {
                "measured": row["load_peak"],
                "bound": round(bound, 1),
                "met": row["load_peak"] <= bound,
            }
    if "dp2" in layouts and "cp2" in layouts:
        cp1, cp2 = (
            layouts["dp2"]["sharded"]["train_added"],
            layouts["cp2"]["sharded"]["train_added"],
        )
        out["activation_ratio"] = {
            "cp1": cp1,
            "cp2": cp2,
            "ratio": round(cp1 / cp2, 2),
            "met": cp1 / cp2 >= 1.7,
        }
    if "cp2" in layouts:
        row = layouts["cp2"]["sharded"]
        out["validation_cp2"] = {
            "validation_peak": row["validation_peak"],
            "train_peak": row["train_peak"],
            "met": row["validation_peak"] <= row["train_peak"],
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    """The result as README tables: per-rank figures, targets, estimates."""
    tokens = result["settings"]["tokens"]
    lines = [
        f"Per-rank host memory (MiB), long micro-step of {tokens} tokens:",
        "",
        "| layout | loader | ranks | base | load peak | long micro-step peak (added) | validation peak |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for layout, loaders in result["layouts"].items():
        for loader, row in loaders.items():
            train = (
                "-" if row["train_peak"] is None else f"{row['train_peak']} ({row['train_added']})"
            )
            lines.append(
                f"| {layout} | {loader} | {row['ranks']} | {row['base']} | {row['load_peak']} | "
                f"{train} | {row['validation_peak'] or '-'} |"
            )
    names = {
        "load_dp2": "load peak per rank, dp=2 <= base + (student + teacher) / 2 + 25 %",
        "load_cp2": "load peak per rank, cp=2 <= base + (student + teacher) / 2 + 25 %",
        "activation_ratio": "long micro-step's added memory, cp=1 (dp2) / cp=2 >= 1.7",
        "validation_cp2": "validation peak <= training peak, cp=2",
    }
    rows = []
    for key, value in result.get("targets", {}).items():
        if key == "activation_ratio":
            shown = f"{value['ratio']}x ({value['cp1']} vs {value['cp2']})"
        elif key == "validation_cp2":
            shown = f"{value['validation_peak']} vs {value['train_peak']}"
        else:
            shown = f"{value['measured']} vs bound {value['bound']}"
        rows.append(f"| {names[key]} | {shown} | {'yes' if value['met'] else 'no'} |")
    if rows:
        lines += ["", "| target | measured (MiB) | met |", "|---|---|---|", *rows]
    if result.get("estimates"):
        lines += [
            "",
            "*Estimates* (arithmetic from the measured slopes above, not measurements):",
            "",
            "| model | GPUs | tokens | cp | host load before / after (GiB per rank) | GPU state | GPU activations | GPU total |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in result["estimates"]:
            lines.append(
                f"| {e['model']} | {e['gpus']} | {e['tokens']} | {e['cp']} | "
                f"{e['host_load_before_gib']} / {e['host_load_after_gib']} | {e['gpu_state_gib']} | "
                f"{e['gpu_activations_gib']} | {e['gpu_total_gib']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
