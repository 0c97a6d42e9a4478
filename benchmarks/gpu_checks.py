"""GPU checks run by ``gpu_smoke.sh``: CUDA and bf16, flash-attn parity, FSDP fits.

Each sub-command prints what it measured and exits 0 (pass), 1 (fail) or 3 (skip, with
the reason), so the shell script can tabulate the statuses:

    python benchmarks/gpu_checks.py env
    python benchmarks/gpu_checks.py flash-parity
    python benchmarks/gpu_checks.py fit --strategy fsdp    # lightning FSDPStrategy, bf16-mixed
    python benchmarks/gpu_checks.py fit --strategy fsdp2   # ModelParallelStrategy (fully_shard)

``fit --strategy single --accelerator cpu --precision 32-true`` runs the same harness on
a CPU, which is how it is checked on machines without a GPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_setup as setup  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402

PASS, FAIL, SKIP = 0, 1, 3


def tiny_teacher(out_dir: Path, vocab: int, hidden: int, heads: int, window: int) -> str:
    args = argparse.Namespace(
        vocab=vocab,
        hidden=hidden,
        intermediate=2 * hidden,
        layers=2,
        heads=heads,
        kv_heads=max(1, heads // 2),
        s2l=window,
        seed=0,
    )
    return setup.build_teacher(out_dir, args)


def check_env(_: argparse.Namespace) -> int:
    """CUDA is visible, bf16 is supported and a bf16 matmul agrees with fp32."""
    import lightning
    import transformers

    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
        f"{transformers.__version__}, lightning {lightning.__version__}"
    )
    if not torch.cuda.is_available():
        print("FAIL: torch.cuda.is_available() is False")
        return FAIL
    device = torch.device("cuda")
    print(
        f"device {torch.cuda.get_device_name(device)}, capability "
        f"{torch.cuda.get_device_capability(device)}, bf16 {torch.cuda.is_bf16_supported()}"
    )
    a = torch.randn(1024, 1024, device=device, generator=torch.Generator(device).manual_seed(0))
    reference = a @ a
    error = ((a.bfloat16() @ a.bfloat16()).float() - reference).norm() / reference.norm()
    print(f"bf16 matmul relative error vs fp32: {error:.2e}")
    try:
        import flash_attn

        print(f"flash_attn {flash_attn.__version__}")
    except ImportError as err:
        print(f"flash_attn not importable: {err}")
    return PASS if torch.cuda.is_bf16_supported() and error < 1e-2 else FAIL


def _states_and_grad(
    model: Any, input_ids, position_ids, layers: list[int], target: dict[int, Any]
):
    """Library path (``LongReDModule.hidden_states``), then the cosine loss's gradient."""
    from longred_pl.module import LongReDModule
    from longred_pl.objectives import hidden_cosine_loss

    model.zero_grad(set_to_none=True)
    states = LongReDModule.hidden_states(model, input_ids, layers, position_ids)
    hidden_cosine_loss(states, target, layers).backward()
    grad = model.base_model.layers[0].self_attn.q_proj.weight.grad.float()
    return {i: s.detach().float() for i, s in states.items()}, grad


def _compare(name: str, a: dict[int, Any], b: dict[int, Any], grad_a, grad_b) -> bool:
    ok = True
    for i in a:
        cos = torch.nn.functional.cosine_similarity(a[i], b[i], dim=-1).min().item()
        rel = ((a[i] - b[i]).abs().max() / b[i].abs().max()).item()
        ok &= cos > 0.999 and rel < 0.05
        print(f"  {name} hidden[{i}]: min token cosine {cos:.5f}, max |diff| / max |ref| {rel:.2e}")
    grad_rel = ((grad_a - grad_b).norm() / grad_b.norm()).item()
    print(f"  {name} q_proj grad: relative difference {grad_rel:.2e}")
    return ok and grad_rel < 0.05


def check_flash(_: argparse.Namespace) -> int:
    """flash_attention_2 vs sdpa in bf16: contiguous, and s2l (skipped ids + all-ones mask)."""
    try:
        import flash_attn  # noqa: F401
    except ImportError as err:
        print(f"SKIP: flash_attn does not import ({err}); install longred_pl[flash]")
        return SKIP
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return SKIP
    from longred_pl import rope
    from longred_pl.models import load_causal_lm, load_config
    from longred_pl.positions import cream_position_ids

    device, window, target = torch.device("cuda"), 256, 1024
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_teacher(Path(tmp), vocab=1024, hidden=256, heads=4, window=window)
        config = rope.extend_rope(load_config(path), "abf", target, rope_theta=40000.0)
        models = {
            impl: load_causal_lm(path, config, impl, "bfloat16").to(device).train()
            for impl in ("sdpa", "flash_attention_2")
        }
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 1024, (2, window), generator=gen).to(device)
    skipped = cream_position_ids(2, window, target, generator=gen).to(device)
    layers = [1, 2]
    target_states = {i: torch.randn(2, window, 256, generator=gen).to(device) for i in layers}
    ok = True
    for case, position_ids in (("contiguous", None), ("s2l skipped ids + all-ones mask", skipped)):
        sdpa = _states_and_grad(models["sdpa"], input_ids, position_ids, layers, target_states)
        flash = _states_and_grad(
            models["flash_attention_2"], input_ids, position_ids, layers, target_states
        )
        ok &= _compare(case, flash[0], sdpa[0], flash[1], sdpa[1])
    with torch.no_grad():  # information: what the all-ones mask prevents (NOTES.md)
        from longred_pl.module import LongReDModule

        out = models["flash_attention_2"](
            input_ids=input_ids, position_ids=skipped, output_hidden_states=True
        )
        masked = LongReDModule.hidden_states(models["sdpa"], input_ids, [2], skipped)[2].float()
        cos = torch.nn.functional.cosine_similarity(out.hidden_states[2].float(), masked, dim=-1)
    print(
        f"  info: flash, skipped ids WITHOUT the mask: min token cosine to sdpa-with-mask {cos.min().item():.4f}"
    )
    print("PASS" if ok else "FAIL")
    return PASS if ok else FAIL


class LossRecorder(L.Callback):
    """``train/loss`` after each optimizer step."""

    def __init__(self, accumulate: int) -> None:
        self.accumulate, self.losses = accumulate, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.accumulate == 0:
            self.losses.append(float(trainer.callback_metrics.get("train/loss", math.nan)))


def _strategy(name: str) -> Any:
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer})
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy()
    return "auto"


def _full_weights(module: Any, name: str) -> dict[str, torch.Tensor]:
    """Every weight of ``module.<name>``, resharded and gathered, wrapper prefixes removed."""
    model, out = getattr(module, name), {}
    unsharded = [
        k
        for k, v in model.named_parameters()
        if hasattr(model, "reshard") and not hasattr(v, "full_tensor")
    ]
    if unsharded:
        print(
            f"  WARN: {name}: {len(unsharded)} FSDP2 params left unsharded after fit, e.g. {unsharded[:3]}"
        )
        model.reshard()
    for key, value in model.named_parameters():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        clean = key.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
        out[clean] = value.detach().float().cpu()
    return out


def _rope_dtypes(module: Any) -> set[str]:
    return {str(b.dtype) for n, b in module.named_buffers() if n.endswith("inv_freq")}


def _fit_trainer(args: argparse.Namespace, accumulate: int, callbacks: list[Any]) -> L.Trainer:
    return L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        strategy=_strategy(args.strategy),
        precision=args.precision,
        max_steps=args.steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def _fit_verdict(
    module: Any, reference: dict[str, torch.Tensor], losses: list[float], steps: int
) -> bool:
    """Print what the fit did; True when losses are finite, the teacher unchanged, the student trained."""
    teacher_now, student_now = _full_weights(module, "teacher"), _full_weights(module, "student")
    teacher_moved = max((teacher_now[k] - reference[k]).abs().max().item() for k in teacher_now)
    student_moved = max((student_now[k] - reference[k]).abs().max().item() for k in student_now)
    teacher_grads = sum(p.grad is not None for p in module.teacher.parameters())
    print(f"  losses {losses}")
    print(
        f"  teacher max |change| {teacher_moved:.2e}, teacher params with grad {teacher_grads}, "
        f"student max |change| {student_moved:.2e}"
    )
    dtypes = {name: _rope_dtypes(getattr(module, name)) for name in ("student", "teacher")}
    print(f"  rotary inv_freq dtypes: {dtypes}")
    if any("torch.bfloat16" in d for d in dtypes.values()):
        print("  WARN: a rotary inv_freq buffer is bf16 (positions lose precision at long range)")
    return (
        len(losses) == steps
        and all(math.isfinite(x) for x in losses)
        and teacher_moved == 0.0
        and teacher_grads == 0
        and student_moved > 0.0
    )


def check_fit(args: argparse.Namespace) -> int:
    """A few LongReD steps under the strategy: finite losses, teacher unchanged, student trained."""
    from safetensors.torch import load_file

    from longred_pl.module import LongReDModule

    schedule = ["long", "s2l", "long", "short"]
    sizes = argparse.Namespace(long=256, short=16, s2l=64, long_batch=1, num_workers=0, seed=0)
    print(f"strategy {args.strategy}, precision {args.precision}, {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        teacher = tiny_teacher(Path(tmp) / "teacher", vocab=512, hidden=64, heads=4, window=64)
        weights = load_file(str(Path(teacher) / "model.safetensors"))
        reference = {key: value.float() for key, value in weights.items()}
        urls = setup.write_streams(Path(tmp) / "shards", sizes, 512, schedule)
        data = setup.datamodule(urls, sizes, schedule, num_workers=0)
        module = LongReDModule(
            teacher,
            target_length=256,
            rope_kwargs={"rope_theta": 40000.0},
            distill_layers=[1, 2],
            optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
        )
        recorder = LossRecorder(len(schedule))
        _fit_trainer(args, len(schedule), [recorder]).fit(module, datamodule=data)
    ok = _fit_verdict(module, reference, recorder.losses, args.steps)
    print("PASS" if ok else "FAIL")
    return PASS if ok else FAIL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    sub.add_parser("env").set_defaults(fn=check_env)
    sub.add_parser("flash-parity").set_defaults(fn=check_flash)
    fit = sub.add_parser("fit")
    fit.add_argument("--strategy", choices=["fsdp", "fsdp2", "single"], default="fsdp2")
    fit.add_argument("--accelerator", default="gpu")
    fit.add_argument("--precision", default="bf16-mixed")
    fit.add_argument("--steps", type=int, default=3)
    fit.set_defaults(fn=check_fit)
    args = parser.parse_args(argv)
    setup.quiet()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
