"""Cost of a LongReD optimizer step: trainer overhead, loss memory, data rate, teacher memory.

Measures the targets of the step-cost issue on one fixed model (defaults sized for 2 CPU
cores in fp32: a random Llama, hidden 256, 4 layers, 8 heads, vocabulary 32000; long
1024, short 128, s2l 256 tokens; the published 16-micro-step schedule; every micro-batch
holds the same number of tokens):

1. a LongReD optimizer step through ``lightning.Trainer`` vs the sum of its necessary
   parts timed alone in plain PyTorch (target: at most 1.10x); ``long_cpt`` too;
2. the step peak of a long micro-step, ``loss_chunk_size`` N vs 0 = full logits, each in
   a fresh process (target: at least 2x lower with the chunked loss);
3. tokens/s of the training DataLoader (default workers, s2l position ids included) vs
   tokens/s of training in (1) (target: at least 10x);
4. peak of a short distillation micro-step vs the student-only equivalent (target: the
   excess is at most the teacher's weights plus one layer's activations), and that the
   teacher holds no gradient and no optimizer state;

plus the time of the chunked vs the full-logits loss. Prints a markdown table and writes
every raw figure, the machine and the settings to ``--out`` (JSON). No assertion is made:
the JSON records each target's value, threshold and whether it was met.

    python -m benchmarks.step_cost                # full run (minutes on 2 CPU cores)
    python -m benchmarks.step_cost --smoke        # 1-2 min on 2 cores; checks that it all runs

Files: ``workload`` (model, streams, module), ``timing`` (targets 1 and 3, loss time),
``memory`` (targets 2 and 4, one fresh process per variant), ``report`` (rows, markdown).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.step_cost import timing, workload
from benchmarks.step_cost.memory import MALLOC_ENV, run_probe
from benchmarks.step_cost.report import markdown, targets
from longred_pl.data.schedule import PUBLISHED_SCHEDULE

PARTS = ("step", "long_cpt", "data", "loss", "memory", "teacher")
SMOKE = {
    "vocab": 1024,
    "hidden": 64,
    "intermediate": 128,
    "layers": 2,
    "heads": 4,
    "long": 256,
    "short": 32,
    "s2l": 64,
    "steps": 2,
    "reps": 1,
    "data_batches": 32,
    "mem_len": 512,
    "mem_chunks": "0,512,128",
    "out": "artifacts/benchmarks/step_cost_smoke.json",  # smoke figures are noise: not in results/
}
QUICKSTART_NOTE = (
    "'Quickstart scale' (target 3) stands for this benchmark's model and lengths: "
    "configs/quickstart.yaml trains the demo teacher (artifacts/teacher: vocab 2048, hidden "
    "128, 4 layers) at long 1024 x1, short 128 x8, s2l 256 x4, the lengths and batches used "
    "here; the default model here is larger (vocab 32000, hidden 256), so training is slower "
    "and the data-rate ratio is, if anything, easier to meet than at the demo's size. Pass "
    "--teacher artifacts/teacher to measure the demo model itself."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.step_cost", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--out", default="benchmarks/results/step_cost.json", help="JSON output")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (flags still win)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--attn", default="sdpa", help="attn_implementation of both models")
    p.add_argument("--teacher", default=None, help="existing HF model dir (default: build one)")
    g = p.add_argument_group("model built when --teacher is not given")
    for flag, value in (
        ("vocab", 32000),
        ("hidden", 256),
        ("intermediate", 688),
        ("layers", 4),
        ("heads", 8),
    ):
        g.add_argument(f"--{flag}", type=int, default=value)
    g.add_argument("--kv-heads", type=int, default=None, help="default: --heads (MHA)")
    g = p.add_argument_group("lengths and schedule")
    g.add_argument("--long", type=int, default=1024, help="long tokens = model.target_length")
    g.add_argument("--short", type=int, default=128)
    g.add_argument("--s2l", type=int, default=256, help="s2l tokens = the teacher's window")
    g.add_argument("--long-batch", type=int, default=1, help="others get equal tokens")
    g.add_argument("--schedule", default=",".join(PUBLISHED_SCHEDULE), help="comma list of kinds")
    g.add_argument("--loss-chunk-size", type=int, default=4096, help="module's, in trainer runs")
    g.add_argument("--num-workers", type=int, default=None, help="default: the data module's")
    g = p.add_argument_group("repetitions")
    g.add_argument("--steps", type=int, default=4, help="trainer optimizer steps (first dropped)")
    g.add_argument("--reps", type=int, default=3, help="timings per plain part (median)")
    g.add_argument("--data-batches", type=int, default=256, help="micro-batches read in (3)")
    g = p.add_argument_group("memory (2, 4) and loss time")
    g.add_argument("--mem-len", type=int, default=4096, help="tokens of the long micro-batch")
    g.add_argument("--mem-batch", type=int, default=1)
    g.add_argument("--mem-chunks", default="0,4096,1024", help="loss_chunk_size values; 0 first")
    p.add_argument("--skip", default="", help=f"comma list of parts to skip: {','.join(PARTS)}")
    p.add_argument("--seed", type=int, default=0)
    if "--smoke" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**SMOKE)
    args = p.parse_args(argv)
    args.mem_chunks = [int(c) for c in str(args.mem_chunks).split(",")]
    args.schedule = [k.strip() for k in args.schedule.split(",") if k.strip()]
    args.skip = {s for s in args.skip.split(",") if s}
    if args.mem_chunks[0] != 0 or len(args.mem_chunks) < 2:
        p.error("--mem-chunks must start with 0 (full logits) and name at least one chunk size")
    if bad := args.skip - set(PARTS):
        p.error(f"--skip: unknown parts {sorted(bad)}; choose from {PARTS}")
    return args


def bench_step(
    teacher: str, urls: dict[str, str], args: argparse.Namespace, device
) -> dict[str, Any]:
    """Target 1: trainer step vs the sum of its plain parts; long_cpt likewise."""
    batches = timing.step_batches(urls, args, args.schedule, teacher, args.long)
    plain = timing.time_plain_parts(teacher, batches, args, args.long, device)
    out: dict[str, Any] = {"plain": plain}
    if "step" not in args.skip:
        trainer = timing.time_trainer(
            teacher, urls, args, "longred", args.schedule, args.long, device
        )
        out["trainer_longred"] = trainer
        out["ratio"] = trainer["median_step_s"] / plain["sum_of_parts_s"]
        out["ratio_with_optimizer"] = trainer["median_step_s"] / (
            plain["sum_of_parts_s"] + plain["optimizer_step_median_s"]
        )
    if "long_cpt" not in args.skip:
        cpt_schedule = ["long"] * len(args.schedule)
        long_parts = [
            r["student_fwd_bwd_median_s"] for r in plain["micro_steps"] if r["kind"] == "long"
        ]
        cpt_plain = common.median(long_parts) * len(cpt_schedule)
        cpt = timing.time_trainer(teacher, urls, args, "long_cpt", cpt_schedule, args.long, device)
        out["trainer_long_cpt"] = cpt
        out["long_cpt_sum_of_parts_s"] = cpt_plain
        out["long_cpt_ratio"] = cpt["median_step_s"] / cpt_plain
    return out


def probe(teacher: str, args: argparse.Namespace, device, **spec: Any) -> dict[str, Any]:
    """One memory-probe variant in a fresh process (see ``memory``)."""
    shared = {"long": args.long, "s2l": args.s2l, "attn": args.attn, "seed": args.seed}
    full = {"teacher": teacher, "device": str(device), "precision": args.precision, "args": shared}
    return run_probe({**full, **spec})


def bench_chunked_memory(teacher: str, args: argparse.Namespace, device) -> dict[str, Any]:
    """Target 2: step peak of one long micro-step per ``loss_chunk_size``, fresh process each."""
    target = max(args.long, args.mem_len)
    runs = {
        str(chunk): probe(
            teacher,
            args,
            device,
            mode="long",
            chunk=chunk,
            batch=args.mem_batch,
            length=args.mem_len,
            target_length=target,
        )
        for chunk in args.mem_chunks
    }
    ratios = {}
    for chunk, result in runs.items():
        if chunk != "0":
            ratios[chunk] = {
                key: runs["0"][key] / max(1, result[key])
                for key in ("step_peak_bytes", "peak_above_start_bytes")
            }
    return {"runs": runs, "ratios_full_over_chunked": ratios, "malloc_env": MALLOC_ENV}


ONE_LAYER = (
    "B*T*max(2*hidden + 3*intermediate, 6*hidden)*bytes_per_activation: a decoder layer's "
    "no-grad transient (input and residual, MLP gate, up and their product; or q, k, v, "
    "attention output, o-projection and residual). The teacher's distilled states are matched "
    "by the student-only run's fixed targets, so they are not in the bound."
)


def bench_teacher_memory(
    teacher: str, facts: dict[str, Any], args: argparse.Namespace, device
) -> dict[str, Any]:
    """Target 4: short distillation micro-step vs the student-only equivalent."""
    batch = workload.batch_sizes(args)["short"]
    runs = {
        mode: probe(
            teacher,
            args,
            device,
            mode=mode,
            batch=batch,
            length=args.short,
            target_length=args.long,
        )
        for mode in ("distill", "student_only")
    }
    act_bytes = 2 if args.precision == "bf16-mixed" else 4
    hidden, inter = facts["hidden_size"], facts["intermediate_size"]
    one_layer = batch * args.short * max(2 * hidden + 3 * inter, 6 * hidden) * act_bytes
    weights = runs["distill"]["teacher_weight_bytes"]
    above = {mode: run["peak_above_start_bytes"] for mode, run in runs.items()}
    return {
        "runs": runs,
        "excess_bytes": above["distill"] - above["student_only"],
        "excess_measure": "peak_above_start (weights + gradients + step) of distill minus "
        "that of student_only; both hold the same student and its gradients",
        "teacher_weight_bytes": weights,
        "one_layer_activation_bytes": one_layer,
        "one_layer_estimate": ONE_LAYER,
        "bound_bytes": weights + one_layer,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every part not skipped; the JSON is rewritten after each, so a cut-off run leaves data."""
    device = common.resolve_device(args.device)
    common.quiet()
    report: dict[str, Any] = {
        "benchmark": "step_cost",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "settings": {
            **vars(args),
            "skip": sorted(args.skip),
            "batch_sizes": workload.batch_sizes(args),
            "tokens_per_micro_batch": args.long * args.long_batch,
        },
        "machine": common.machine_info(device),
        "quickstart_scale": QUICKSTART_NOTE,
        "results": {},
        "targets": [],
    }

    def record(name: str, value: dict[str, Any]) -> None:
        report["results"][name] = value
        compare_data_with_training(report["results"], args)
        report["targets"] = targets(report["results"], args)
        report["machine"]["load_average_at_end"] = common.load_average()
        save(report, args.out)

    with tempfile.TemporaryDirectory(prefix="step_cost_") as tmp:
        teacher = args.teacher or workload.build_teacher(Path(tmp) / "teacher", args)
        facts = common.model_facts(teacher)
        report["model"] = {**facts, "built_here": args.teacher is None}
        urls = workload.write_streams(
            Path(tmp) / "shards", args, facts["vocab_size"], args.schedule
        )
        if not {"step", "long_cpt"} <= args.skip:
            record("step", bench_step(teacher, urls, args, device))
        if "data" not in args.skip:
            data = timing.time_data_pipeline(urls, args, args.schedule, teacher, facts, args.long)
            record("data_pipeline", data)
        if "loss" not in args.skip:
            record("loss_time", timing.time_loss(facts, args, device))
        if "memory" not in args.skip:
            record("chunked_memory", bench_chunked_memory(teacher, args, device))
        if "teacher" not in args.skip:
            record("teacher_memory", bench_teacher_memory(teacher, facts, args, device))
    report["complete"] = True
    save(report, args.out)
    return report


def save(report: dict[str, Any], path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def compare_data_with_training(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Target 3's ratio: steady data-loader tokens/s over the trainer's LongReD tokens/s."""
    data, step = results.get("data_pipeline"), results.get("step", {})
    if data and "trainer_longred" in step:
        tokens_per_step = args.long * args.long_batch * len(args.schedule)
        train = tokens_per_step / step["trainer_longred"]["median_step_s"]
        data["training_tokens_per_s"] = train
        data["ratio"] = data["tokens_per_s_steady"] / train


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    print(markdown(report))
    print(f"\nwrote {args.out}")
    return report
