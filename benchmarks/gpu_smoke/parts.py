"""The parts of the GPU smoke (``__main__`` docstring). Each returns ``(figures, ok)``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common

# bf16 dense matmul peak of an H100/H200 SXM, from NVIDIA's datasheet (989.5 TFLOP/s
# without sparsity); MFU is reported against it and against the rate measured by `env`.
DATASHEET_BF16_TFLOPS = 989.5
FIT = "configs/llama3-8b/32k-abf-longred-c.yaml"
TRAINER = "configs/trainer/fsdp2-8gpu.yaml"


def _cuda() -> bool:
    return torch.cuda.is_available()


def _sync() -> None:
    if _cuda():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ env
def env(args: Any) -> tuple[dict[str, Any], bool]:
    """Versions, the device, bf16, and the measured matmul rate."""
    import lightning
    import transformers

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "machine": common.machine_info(torch.device("cuda" if _cuda() else "cpu")),
    }
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = None
    device = torch.device("cuda" if _cuda() else "cpu")
    if _cuda():
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            capability=list(torch.cuda.get_device_capability()),
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
    n = 512 if args.tiny else 8192
    dtype = torch.bfloat16 if _cuda() else torch.float32
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(3):
        a @ b
    _sync()
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    seconds = (time.perf_counter() - start) / reps
    info["matmul"] = {"n": n, "dtype": str(dtype), "tflops": round(2 * n**3 / seconds / 1e12, 1)}
    ok = not _cuda() or bool(info["bf16"])
    return info, ok


# ----------------------------------------------------------------------------- ring
def ring(args: Any) -> tuple[dict[str, Any], bool]:
    """(b) ``ring_simulation`` vs unsharded attention, per dtype and number of chunks."""
    from longred_pl.parallel.ring_simulation import simulate_ring, unsharded_attention

    device = torch.device("cuda" if _cuda() else "cpu")
    b, h, k, t, d = (1, 4, 2, 64, 16) if args.tiny else (1, 16, 4, 4096, 128)
    dtypes = [torch.bfloat16, torch.float32] if _cuda() else [torch.float32]
    gen = torch.Generator(device).manual_seed(0)
    q32, k32, v32, g32 = (
        torch.randn(b, n, t, d, device=device, generator=gen) for n in (h, k, k, h)
    )
    exact = unsharded_attention(q32.double(), k32.double(), v32.double(), g32.double())
    cases, ok = [], True
    for dtype in dtypes:
        q, kk, v, g = (x.to(dtype) for x in (q32, k32, v32, g32))
        kernel_alone = unsharded_attention(q, kk, v, g)  # the kernel's own rounding
        for cp in (2, 4):
            simulated = simulate_ring(q, kk, v, g, cp=cp)
            case: dict[str, Any] = {"dtype": str(dtype), "cp": cp, "tokens": t}
            for name in ("out", "dq", "dk", "dv"):
                scale = float(exact[name].abs().max())
                ring_err = float((simulated[name].double() - exact[name]).abs().max()) / scale
                alone = float((kernel_alone[name].double() - exact[name]).abs().max()) / scale
                # the ring may add rounding of its own, never an error of another order
                bound = 1e-4 if dtype == torch.float32 else max(4 * alone, 2e-2)
                case[name] = {"ring": ring_err, "unsharded": alone, "bound": bound}
                ok &= ring_err <= bound
            cases.append(case)
    kernel = "cpu flash" if not _cuda() else "cuda flash (bf16), memory-efficient (fp32)"
    return {"kernels": kernel, "cases": cases, "shape": [b, h, k, t, d]}, ok


# --------------------------------------------------------------------------- recipe
def _rehearsal():
    sys.path.insert(0, str(common.ROOT / "tests" / "rehearsal"))
    import recipes

    return recipes


def _profile(recipes: Any, tiny: bool) -> Any:
    if not tiny:
        return recipes.GPU
    if _cuda():
        return recipes.Profile(accelerator="gpu", max_devices=1, precision=None, backend=None)
    return recipes.Profile(max_devices=1)


def _dir_bytes(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def recipe(args: Any) -> tuple[dict[str, Any], bool]:
    """(a) the 32K recipe as written, on one GPU at ~1.2B parameters and 8K tokens."""
    recipes = _rehearsal()
    out = args.work / "recipe"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    plan = recipes.plan(FIT, TRAINER, out, _profile(recipes, args.tiny))
    figures: dict[str, Any] = {
        "config": [FIT, TRAINER],
        "factor": plan.factor,
        "lengths": {k: v["seq_len"] for k, v in plan.override["data"].items()},
        "prepare_s": round(time.perf_counter() - start, 1),
    }
    from transformers import AutoConfig

    from benchmarks.gpu_smoke.flops import Shape

    config = AutoConfig.from_pretrained(out / "teacher")
    figures["model"] = {
        **common.model_facts(str(out / "teacher")),
        "parameters": Shape.of(config).params,
    }
    ok = True
    for name, extra in (
        ("fit", ()),
        (
            "resume",
            (
                "--trainer.max_steps",
                "2",
                "--ckpt_path",
                str(out / "checkpoints" / "epoch=0-step=1.ckpt"),
            ),
        ),
    ):
        start = time.perf_counter()
        proc = plan.run(*extra)
        figures[f"{name}_s"] = round(time.perf_counter() - start, 1)
        figures[f"{name}_rc"] = proc.returncode
        (args.work / f"recipe_{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            figures[f"{name}_error"] = proc.stderr[-2000:]
            return figures, False
    rows = [r for r in recipes.metrics(out) if r.get("train/loss")]
    figures["steps"] = [
        {
            k: r[k]
            for k in (
                "step",
                "train/loss",
                "train/loss_long",
                "train/loss_short",
                "train/loss_s2l",
                "train/grad_norm",
            )
            if k in r
        }
        for r in rows
    ]
    ok &= sorted(int(r["step"]) for r in rows) == [0, 1]
    ok &= all(
        recipes.finite(r["train/loss"]) and recipes.finite(r["train/grad_norm"]) for r in rows
    )
    val = [r for r in recipes.metrics(out) if r.get("val/ppl_short")]
    figures["validation"] = {
        k: v for k, v in (val[0] if val else {}).items() if k.startswith("val/") and v
    }
    ckpt = out / "checkpoints" / "epoch=0-step=1.ckpt"
    figures["checkpoint_gib"] = round(_dir_bytes(ckpt) / 2**30, 2)
    from longred_pl.export import export_checkpoint

    start = time.perf_counter()
    exported = export_checkpoint(str(ckpt), str(out / "export"))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True)
    figures["export_s"] = round(time.perf_counter() - start, 1)
    figures["export_window"] = model.config.max_position_embeddings
    ok &= model.config.max_position_embeddings == plan.override["model"]["target_length"]
    logits = model(torch.arange(16)[None] % model.config.vocab_size).logits
    ok &= bool(torch.isfinite(logits).all())
    del model
    for path in (out / "checkpoints", out / "export"):  # the disk is needed next
        shutil.rmtree(path, ignore_errors=True)
    return figures, ok


# ----------------------------------------------------------------------- throughput
CASES = [("long_cpt", 8192), ("longred", 8192), ("long_cpt", 32768), ("longred", 32768)]


def throughput(args: Any) -> tuple[dict[str, Any], bool]:
    """(c) tokens/s and MFU, (d) peak of one long micro-step vs the README's estimate.

    Each case runs in a fresh process (``benchmarks.gpu_smoke.case``); the figures are
    written after each case, so a time limit keeps what was measured.
    """
    peak = args.peak_tflops or _measured_peak(args.json.parent)
    teacher = _teacher_for_throughput(args)
    cases = [(m, n // 32) for m, n in CASES[:2]] if args.tiny else CASES
    results: list[dict[str, Any]] = []
    figures: dict[str, Any] = {
        "peak_tflops_measured": peak,
        "peak_tflops_datasheet": DATASHEET_BF16_TFLOPS,
        "flops": "benchmarks/gpu_smoke/flops.py",
        "cases": results,
    }
    ok = True
    for method, tokens in cases:
        out = args.work / f"case_{method}_{tokens}.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.gpu_smoke.case",
            "--teacher",
            str(teacher),
            "--method",
            method,
            "--long",
            str(tokens),
            "--out",
            str(out),
        ]
        cmd += ["--tiny"] if args.tiny else []
        proc = subprocess.run(
            cmd,
            cwd=common.ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if proc.returncode or not out.exists():
            results.append({"method": method, "long": tokens, "error": proc.stderr[-2000:]})
            ok = False
        else:
            case = json.loads(out.read_text())
            if peak and case.get("tflops"):
                case["mfu_measured_peak"] = round(case["tflops"] / peak, 3)
            case["mfu_datasheet"] = round(case.get("tflops", 0) / DATASHEET_BF16_TFLOPS, 3)
            results.append(case)
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return figures, ok


def _measured_peak(folder: Path) -> float | None:
    path = folder / "env.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("matmul", {}).get("tflops")


def _teacher_for_throughput(args: Any) -> Path:
    """The recipe part's random teacher if it is there, else a new one (same sizes)."""
    recipes = _rehearsal()
    path = args.work / "recipe" / "teacher"
    if not (path / "config.json").exists():
        teacher = recipes.TEACHERS["/models/Meta-Llama-3-8B"]
        profile = _profile(recipes, args.tiny)
        recipes.save_teacher(path, teacher, 8192 // (profile.factor or 4), 32, profile)
    return path


PARTS = {"env": env, "ring": ring, "recipe": recipe, "throughput": throughput}
