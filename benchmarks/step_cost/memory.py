"""Peak memory of one training micro-step, measured in a fresh process per variant.

``run_probe(spec)`` starts ``python -m benchmarks.step_cost.memory SPEC_JSON`` (from the
repository root) and returns the JSON line the child prints. The child builds
``LongReDModule`` and runs one micro-step:

* ``long``          ``L_long`` forward+backward (``spec["chunk"]`` = loss_chunk_size);
* ``distill``       ``L_short`` on a short batch (teacher no-grad + student), backward;
* ``student_only``  the student's forward+backward (``forward.run_model``) of the same
  cosine loss against fixed target tensors (allocated before the baseline, like the
  teacher's weights are).

How the peak is read:

* CUDA: ``torch.cuda.reset_peak_memory_stats`` after a full-size warm-up, then
  ``max_memory_allocated``; ``baseline`` is ``memory_allocated`` just before the step.
* CPU: resident set size (RSS). glibc is told to ``mmap`` every allocation of 128 KiB or
  more (``MALLOC_MMAP_THRESHOLD_``, fixed, so freed tensors leave RSS at once) and the
  weights are copied into private memory after loading (``from_pretrained`` maps the
  safetensors file, whose pages RSS counts only once touched). After a full-size warm-up
  the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``) and read back
  after the step (``VmHWM``); ``baseline`` is the RSS just before the step. Without
  ``clear_refs`` the warm-up is 1/8 of the length and ``ru_maxrss`` is read instead.

``start`` is the memory after every import, before any model is built, so ``peak - start``
counts weights, gradients and the step, and ``peak - baseline`` the step alone (the
gradients were allocated by the warm-up and are in the baseline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

from benchmarks.common import MALLOC_ENV, ROOT, Meter


def run_probe(spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run one variant in a fresh interpreter and return its result."""
    proc = subprocess.run(
        [sys.executable, "-m", __name__, json.dumps(spec)],
        cwd=ROOT,  # ``-m`` imports ``benchmarks`` from the working directory
        env={**os.environ, **MALLOC_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe {spec['mode']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# ----------------------------------------------------------------------- child side
def _privatize(*models: Any) -> None:
    """Copy weights out of the file mapping into private memory, so RSS counts them."""
    import torch

    with torch.no_grad():
        for model in models:
            if model is not None:
                for tensor in [*model.parameters(), *model.buffers()]:
                    tensor.data = tensor.data.clone()


def _step_fn(module: Any, spec: dict[str, Any], device: Any):
    """``fn(input_ids)`` running the variant's forward+backward."""
    import torch

    from longred_pl.forward import run_model
    from longred_pl.losses import hidden_cosine_loss

    layers = module.distill_layers
    targets: dict[int, torch.Tensor] = {}

    def run(input_ids: torch.Tensor) -> None:
        batch = {"kind": spec["mode"], "input_ids": input_ids, "index": torch.tensor(0)}
        if spec["mode"] == "long":
            loss = module.L_long(batch)
        elif spec["mode"] == "distill":
            loss = module.L_short(batch)  # the distilled layers vs the frozen teacher
        else:
            shape = (*input_ids.shape, int(module.student_config.hidden_size))
            for i in layers:
                if i not in targets or targets[i].shape != shape:
                    targets[i] = torch.randn(shape, device=device)
            states, _ = run_model(module.student, input_ids, layers)
            loss = hidden_cosine_loss(states, targets, layers)
        loss.backward()

    return run


def _teacher_checks(module: Any) -> dict[str, Any]:
    """No teacher gradient; the optimizer holds, and keeps state for, student params only."""
    teacher = list(module.teacher.parameters())
    student = [p for p in module.student.parameters() if p.requires_grad]
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    optimizer.step()
    return {
        "teacher_params": len(teacher),
        "teacher_params_requiring_grad": sum(p.requires_grad for p in teacher),
        "teacher_params_with_grad": sum(p.grad is not None for p in teacher),
        "student_trainable_params": len(student),
        "optimizer_params": len(held),
        "optimizer_holds_teacher_params": any(id(p) in held for p in teacher),
        "optimizer_holds_all_student_params": held == {id(p) for p in student},
        "optimizer_state_entries": len(optimizer.state),
        "optimizer_state_on_teacher": sum(p in optimizer.state for p in teacher),
    }


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported before `start`)

    import longred_pl.module  # noqa: F401
    from benchmarks.common import quiet
    from benchmarks.step_cost.workload import make_module

    quiet()
    device = torch.device(spec["device"])
    meter = Meter(device)
    start = meter.current()
    method = "longred" if spec["mode"] == "distill" else "long_cpt"
    args = SimpleNamespace(**spec["args"])
    module = make_module(spec["teacher"], args, method, spec["target_length"], spec.get("chunk", 0))
    module.configure_model()
    module.to(device)
    module.train()
    if device.type == "cpu":
        _privatize(module.student, module.teacher)
    gen = torch.Generator().manual_seed(0)
    vocab = int(module.teacher_config.vocab_size)
    input_ids = torch.randint(0, vocab, (spec["batch"], spec["length"]), generator=gen).to(device)
    run = _step_fn(module, spec, device)
    autocast = torch.autocast(
        device.type, torch.bfloat16, enabled=spec["precision"] == "bf16-mixed"
    )
    warm = input_ids if meter.can_reset else input_ids[:, : max(2, spec["length"] // 8)]
    with autocast:
        run(warm)  # kernels initialised, gradients allocated
    baseline = meter.current()
    meter.reset()
    with autocast:
        run(input_ids)
    peak = meter.peak()
    result = {
        "mode": spec["mode"],
        "chunk": spec.get("chunk"),
        "batch": spec["batch"],
        "length": spec["length"],
        "method": meter.method,
        "start_bytes": start,
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "step_peak_bytes": peak - baseline,
        "peak_above_start_bytes": peak - start,
    }
    if spec["mode"] == "distill":
        result["checks"] = _teacher_checks(module)
        result["teacher_weight_bytes"] = sum(
            t.numel() * t.element_size()
            for t in [*module.teacher.parameters(), *module.teacher.buffers()]
        )
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(child(json.loads(sys.argv[1]))), flush=True)
