"""Tables, verdicts and plot of the paper-setting study: pure functions of its JSON.

The JSON is written by :mod:`experiments.paper_setting.study`. Nothing of the repository is
imported at module level except the reproduction study's report helpers (also pure).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from experiments.reproduce.report import band, cell, cost_lines, mean_std, save_figure

METHODS = {
    "long-cpt": "Long+CPT",
    "mix-cpt": "Mix+CPT",
    "longred-c": "LongReD-C",
    "longred-c-3x": "LongReD-C, 3x weights",
}
DOMAINS = ("shakespeare", "python", "bible")
"""A (the teacher's, and the long stream's), B (the teacher's only), C (the short/s2l text)."""
LONG_DOMAINS = DOMAINS[:2]
TEACHER_DOMAINS = DOMAINS[:2]
CPT_DOMAIN = DOMAINS[2]
ROLE = {"shakespeare": "A", "python": "B", "bible": "C"}
ALPHAS = (0.25, 0.5, 0.75)
MERGED = ("longred-c", "mix-cpt")
TEACHER, UNTRAINED = "Teacher (window 256)", "ABF, untrained"


def scalars(ev: dict, teacher: dict) -> dict[str, float | None]:
    """One evaluation's figures; retention = exp(loss_teacher - loss_model) on short text.

    ``retention/A+B`` is the geometric mean of the two teacher domains' retentions.
    """
    row: dict[str, float | None] = {}
    gaps = []
    for d in DOMAINS:
        gap = teacher["short"][d]["loss"] - ev["short"][d]["loss"]
        row[f"short_ppl/{d}"] = ev["short"][d]["ppl"]
        row[f"retention/{d}"] = math.exp(gap)
        gaps += [gap] if d in TEACHER_DOMAINS else []
    row["retention/A+B"] = math.exp(statistics.mean(gaps))
    for d in LONG_DOMAINS:
        row[f"long_ppl/{d}"] = ev["long"][d]["ppl"] if ev["long"].get(d) else None
    return row


def evals_by_row(results: dict) -> dict[str, list[dict]]:
    rows = {TEACHER: [results["teacher"]["eval"]], UNTRAINED: [results["untrained"]["eval"]]}
    for name, label in METHODS.items():
        rows[label] = [r["eval"] for r in results["runs"].values() if r["method"] == name]
    return rows


def aggregate(evals: list[dict], teacher: dict) -> dict[str, Any]:
    per_seed = [scalars(ev, teacher) for ev in evals]
    keys = per_seed[0] if per_seed else {}
    return {"n": len(per_seed), **{k: mean_std([s[k] for s in per_seed]) for k in keys}}


def summary(results: dict) -> dict[str, dict]:
    """Per row (teacher, untrained, each method): ``{metric: (mean, std)}`` and ``n`` runs."""
    teacher = results["teacher"]["eval"]
    return {label: aggregate(evals, teacher) for label, evals in evals_by_row(results).items()}


def alpha_curve(results: dict, method: str) -> dict[float, dict]:
    """Figures of ``method`` merged with the teacher, by alpha: 0 is the untrained extended
    student (the teacher's weights, the student's RoPE), 1 the trained student."""
    teacher = results["teacher"]["eval"]
    curve = {0.0: aggregate([results["untrained"]["eval"]], teacher)}
    alphas = sorted({m["alpha"] for m in results["merges"].values() if m["method"] == method})
    for alpha in alphas:
        evals = [
            m["eval"]
            for m in results["merges"].values()
            if m["method"] == method and m["alpha"] == alpha
        ]
        curve[alpha] = aggregate(evals, teacher)
    runs = [r["eval"] for r in results["runs"].values() if r["method"] == method]
    if runs:
        curve[1.0] = aggregate(runs, teacher)
    return curve


def compare(a: dict, b: dict, key: str) -> tuple[float, float] | None:
    """``mean_a - mean_b`` and the seed spread ``std_a + std_b`` (None if either is missing)."""
    if not a.get(key) or not b.get(key):
        return None
    return a[key][0] - b[key][0], a[key][1] + b[key][1]


def verdicts(results: dict) -> list[str]:
    """The issue's claims, each decided from the figures (spread = sum of the two stds)."""
    table, lines = summary(results), []
    red, mix, long_ = table["LongReD-C"], table["Mix+CPT"], table["Long+CPT"]
    for d in TEACHER_DOMAINS:
        c = compare(red, mix, f"retention/{d}")
        if c:
            word = "beats" if c[0] > c[1] else ("trails" if c[0] < -c[1] else "ties")
            lines.append(
                f"retention {ROLE[d]} ({d}): LongReD-C {word} Mix+CPT, "
                f"difference {c[0]:+.4f}, spread {c[1]:.4f}"
            )
    for label, other in (("Long+CPT", long_), ("Mix+CPT", mix)):
        c = compare(red, other, f"long_ppl/{DOMAINS[0]}")
        if c:
            word = (
                "matches {} within"
                if abs(c[0]) <= c[1]
                else (
                    "is worse than {} by more than"
                    if c[0] > 0
                    else "is better than {} by more than"
                )
            )
            lines.append(
                f"long ppl A: LongReD-C {word.format(label)} the spread, "
                f"difference {c[0]:+.2f}, spread {c[1]:.2f}"
            )
    strong = table.get("LongReD-C, 3x weights", {})
    for key in ("retention/A+B", f"long_ppl/{DOMAINS[0]}"):
        c = compare(strong, red, key)
        if c:
            lines.append(
                f"{key}: 3x weights minus published weights {c[0]:+.4f}, spread {c[1]:.4f}"
            )
    return lines


def markdown(results: dict) -> str:
    s = results["settings"]
    keys = [f"retention/{d}" for d in DOMAINS] + ["retention/A+B"]
    keys += [f"short_ppl/{d}" for d in DOMAINS] + [f"long_ppl/{d}" for d in LONG_DOMAINS]
    heads = [
        k.split("/")[0].replace("_", " ") + " " + ROLE.get(k.split("/")[1], k.split("/")[1])
        for k in keys
    ]
    specs = [".4f" if k.startswith("retention") else ".2f" for k in keys]
    lines = [
        f"Optimizer steps per run: {s['steps']}; seeds {s['seeds_done']}; mean ± std over seeds. "
        "A = Shakespeare (teacher's, long stream), B = Python stdlib (teacher's only), C = World "
        "English Bible (short and s2l streams; never seen by the teacher). Retention = "
        "exp(loss_teacher - loss_model) on held-out short text (1 = the teacher's); A+B: "
        "geometric mean. Long ppl: held-out 1024-token texts.",
        "",
        "| method | runs | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * (len(heads) + 1),
    ]
    for label, row in summary(results).items():
        cells = [cell(row.get(k), f, row["n"]) for k, f in zip(keys, specs, strict=True)]
        lines.append(f"| {label} | {row['n']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Merged with the teacher (`longred merge STUDENT TEACHER OUT --alpha A`; "
        "alpha 0 = untrained extended student, 1 = the trained student):",
        "",
        "| method | alpha | runs | retention A | retention B | retention A+B | long ppl A |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method in MERGED:
        for alpha, row in alpha_curve(results, method).items():
            cells = [
                cell(row.get(k), f, row["n"])
                for k, f in (
                    ("retention/shakespeare", ".4f"),
                    ("retention/python", ".4f"),
                    ("retention/A+B", ".4f"),
                    ("long_ppl/shakespeare", ".2f"),
                )
            ]
            lines.append(
                f"| {METHODS[method]} | {alpha:g} | {row['n']} | " + " | ".join(cells) + " |"
            )
    lines += ["", *cost_lines(results, METHODS)]
    lines += ["", *teacher_lines(results)]
    if "select_layers" in results:
        sel = results["select_layers"]
        lines += ["", f"Distilled layers {sel['distill_layers']} from `{sel['command']}`."]
    lines += ["", "Verdicts (spread = std of one + std of the other):", ""]
    lines += [f"- {v}" for v in verdicts(results)]
    times = [{k: v for k, v in i.items() if k != "machine"} for i in results["invocations"]]
    lines += ["", f"Invocations: {json.dumps(times)}"]
    return "\n".join(lines) + "\n"


def teacher_lines(results: dict) -> list[str]:
    """The teacher's size, build time and held-out learning curve (every recorded point)."""
    built = results["teacher_build"]
    lines = [
        f"Teacher: {built['num_parameters']} parameters, {built['tokens_seen']} training "
        f"tokens, built in {built['build_seconds']} s."
    ]
    curve = built.get("curve") or []
    if curve:
        lines += [
            "",
            "| teacher step | tokens | "
            + " | ".join(f"val loss {ROLE[d]}" for d in TEACHER_DOMAINS)
            + " |",
            "|---:|---:|" + "---:|" * len(TEACHER_DOMAINS),
        ]
        for p in curve:
            losses = " | ".join(f"{p[f'val/{d}/loss']:.4f}" for d in TEACHER_DOMAINS)
            lines.append(f"| {p['step']} | {p['tokens']} | {losses} |")
    return lines


def plot(results: dict, path: Path) -> None:
    """Retention per domain; long perplexity of A by position; the merge curve."""
    from longred_pl.drift import pyplot

    plt, table, rows = pyplot(), summary(results), evals_by_row(results)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    labels = [k for k in table if k != TEACHER]
    for i, d in enumerate(DOMAINS):
        values = [table[k].get(f"retention/{d}") or (math.nan, 0.0) for k in labels]
        xs = [j + (i - 1) * 0.2 for j in range(len(labels))]
        axes[0].errorbar(
            xs,
            [v[0] for v in values],
            [v[1] for v in values],
            fmt="o",
            capsize=3,
            label=f"{ROLE[d]}: {d}",
        )
    axes[0].axhline(1.0, color="grey", ls="--", lw=1)
    axes[0].set_yscale("log")  # C under Mix+CPT is far above 1; A and B stay readable
    axes[0].set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
    axes[0].set(ylabel="ppl_teacher / ppl_model", title="short-text retention (1 = teacher)")
    for label in [k for k in labels if rows[k]]:
        band(axes[1], label, rows[label], DOMAINS[0])
    axes[1].axvline(256, ls=":", color="grey")
    axes[1].set(
        xlabel="target position (dotted: teacher window)",
        ylabel="perplexity",
        title=f"held-out long A ({DOMAINS[0]}): perplexity by position",
    )
    for method in MERGED:
        curve = alpha_curve(results, method)
        pts = [(a, r) for a, r in curve.items() if r.get("long_ppl/shakespeare")]
        xs = [r["long_ppl/shakespeare"][0] for _, r in pts]
        ys = [r["retention/A+B"][0] for _, r in pts]
        axes[2].plot(xs, ys, marker="o", label=f"{METHODS[method]} merged")
        for (a, _), x, y in zip(pts, xs, ys, strict=True):
            axes[2].annotate(
                f"{a:g}", (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points"
            )
    strong = table.get("LongReD-C, 3x weights", {})
    if strong.get("long_ppl/shakespeare"):
        axes[2].plot(
            strong["long_ppl/shakespeare"][0],
            strong["retention/A+B"][0],
            "s",
            label="LongReD-C, 3x weights",
        )
    axes[2].set(
        xlabel="long ppl A (lower is better)",
        ylabel="retention A+B (higher is better)",
        title="merge with the teacher: alpha annotated",
    )
    save_figure(fig, axes, path)
