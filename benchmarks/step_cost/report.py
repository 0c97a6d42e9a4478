"""Report of the step-cost benchmark: each target's value vs its threshold, rows and markdown.

Rows are reported, never asserted: ``met`` is True/False for a target with a threshold and
None for figures shown for information.
"""

from __future__ import annotations

import statistics
from typing import Any

MIB = 2**20


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _row(name: str, value: float | None, threshold: str, met: bool | None, detail: str):
    return {"name": name, "value": value, "threshold": threshold, "met": met, "detail": detail}


def _step_rows(step: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    if "ratio" in step:
        t, p = step["trainer_longred"]["median_step_s"], step["plain"]["sum_of_parts_s"]
        detail = (
            f"{t:.3f} s vs {p:.3f} s; {step['ratio_with_optimizer']:.3f}x with AdamW in the parts"
        )
        rows.append(
            _row(
                "1 LongReD step / sum of plain parts",
                step["ratio"],
                "<= 1.10",
                step["ratio"] <= 1.10,
                detail,
            )
        )
    if "long_cpt_ratio" in step:
        t, p = step["trainer_long_cpt"]["median_step_s"], step["long_cpt_sum_of_parts_s"]
        rows.append(
            _row(
                "1b long_cpt step / sum of plain parts",
                step["long_cpt_ratio"],
                "info",
                None,
                f"{t:.3f} s vs {p:.3f} s",
            )
        )
    return rows


def _memory_rows(memory: dict[str, Any], tokens: int) -> list[dict[str, Any]]:
    rows, runs = [], memory.get("runs", {})
    for chunk, ratios in memory.get("ratios_full_over_chunked", {}).items():
        ratio = ratios["step_peak_bytes"]
        full, part = runs["0"]["step_peak_bytes"] / MIB, runs[chunk]["step_peak_bytes"] / MIB
        rows.append(
            _row(
                f"2 long micro-step peak, full / chunk {chunk} ({tokens} tok)",
                ratio,
                ">= 2",
                ratio >= 2,
                f"{full:.0f} vs {part:.0f} MiB above the baseline",
            )
        )
    return rows


def _teacher_rows(tm: dict[str, Any]) -> list[dict[str, Any]]:
    detail = (
        f"teacher weights {tm['teacher_weight_bytes'] / MIB:.1f} MiB + one layer "
        f"{tm['one_layer_activation_bytes'] / MIB:.1f} MiB"
    )
    rows = [
        _row(
            "4 short step peak: distill - student-only (MiB)",
            tm["excess_bytes"] / MIB,
            f"<= {tm['bound_bytes'] / MIB:.1f}",
            tm["excess_bytes"] <= tm["bound_bytes"],
            detail,
        )
    ]
    c = tm["runs"]["distill"]["checks"]
    ok = (
        c["teacher_params_with_grad"] == 0
        and not c["optimizer_holds_teacher_params"]
        and c["optimizer_holds_all_student_params"]
        and c["optimizer_state_on_teacher"] == 0
    )
    detail = (
        f"{c['teacher_params_with_grad']} teacher grads; optimizer: {c['optimizer_params']} params "
        f"= {c['student_trainable_params']} student, state on {c['optimizer_state_on_teacher']} teacher"
    )
    rows.append(
        _row(
            "4b teacher grads / optimizer params and state", None, "none / student only", ok, detail
        )
    )
    return rows


def targets(results: dict[str, Any], args: Any) -> list[dict[str, Any]]:
    """Each target's measured value against its threshold (reported, never asserted)."""
    rows = _step_rows(results.get("step", {}))
    rows += _memory_rows(results.get("chunked_memory", {}), args.mem_len)
    data = results.get("data_pipeline", {})
    if "ratio" in data:
        detail = (
            f"{data['tokens_per_s_steady']:.3g} vs {data['training_tokens_per_s']:.3g} tok/s, "
            f"{data['num_workers']} worker(s)"
        )
        rows.append(
            _row(
                "3 data tokens/s / training tokens/s",
                data["ratio"],
                ">= 10",
                data["ratio"] >= 10,
                detail,
            )
        )
    if "teacher_memory" in results:
        rows += _teacher_rows(results["teacher_memory"])
    loss = results.get("loss_time", {}).get("by_chunk", {})
    for chunk in [c for c in loss if c != "0"]:
        a, b = loss[chunk]["median_s"], loss["0"]["median_s"]
        rows.append(
            _row(
                f"loss fwd+bwd time, chunk {chunk} / full ({args.mem_len} tok)",
                a / b,
                "info",
                None,
                f"{a:.4f} s vs {b:.4f} s",
            )
        )
    return rows


def _per_kind_table(step: dict[str, Any]) -> list[str]:
    """Plain parts vs the trainer's micro-steps, per kind (medians, seconds)."""
    lines = [
        "| kind | plain student fwd+bwd (s) | plain teacher fwd (s) | trainer micro-step (s) |",
        "|---|---|---|---|",
    ]
    for kind, trainer_s in step["trainer_longred"]["micro_step_median_s"].items():
        records = [r for r in step["plain"]["micro_steps"] if r["kind"] == kind]
        student = _median([r["student_fwd_bwd_median_s"] for r in records])
        teacher = [r["teacher_fwd_median_s"] for r in records if "teacher_fwd_median_s" in r]
        shown = f"{_median(teacher):.4f}" if teacher else "-"
        lines.append(f"| {kind} | {student:.4f} | {shown} | {trainer_s:.4f} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = ["| target | measured | threshold | met | detail |", "|---|---|---|---|---|"]
    for row in report["targets"]:
        value = "" if row["value"] is None else f"{row['value']:.3f}"
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        lines.append(f"| {row['name']} | {value} | {row['threshold']} | {met} | {row['detail']} |")
    step = report["results"].get("step", {})
    if "trainer_longred" in step:
        lines += ["", *_per_kind_table(step)]
    return "\n".join(lines)
