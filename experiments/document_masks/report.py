"""Tables and plot of the document-mask study: pure functions of its JSON.

The JSON is written by :mod:`experiments.document_masks.study`. Differences between the
arms are paired by seed (the same seed gives both arms the same data order and skipped
positions) and called clear only when the 95% t-interval of the paired differences
excludes 0; otherwise they are within noise.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from experiments.reproduce.report import cell, cost_lines, mean_std, save_figure

NAME = "document_masks"
BASE = "longred-c"  # the quickstart's method; the arms differ only in data.long.document_mask
DOMAIN = "shakespeare"
ARMS = {"unmasked": "LongReD-C, no document masks", "masked": "LongReD-C, document masks"}
TEACHER, UNTRAINED = "Teacher (window 256)", "ABF, untrained"
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}
"""Two-sided 95% quantile of Student's t by degrees of freedom (1.96 beyond)."""


def scalars(ev: dict, teacher: dict) -> dict[str, float | None]:
    """One evaluation's figures; retention against the teacher's short loss."""
    short, long = ev["short"][DOMAIN], ev["long"][DOMAIN]
    row: dict[str, float | None] = {
        "short_ppl": short["ppl"],
        "retention": math.exp(teacher["short"][DOMAIN]["loss"] - short["loss"]),
        "long_ppl": long["ppl"] if long else None,
    }
    for j, bucket in enumerate(long["buckets"] if long else []):
        row[f"bucket{j}"] = bucket["ppl"]
    return row


def buckets(results: dict) -> list[tuple[int, int]]:
    """The long evaluation's position buckets ``(start, end)``."""
    rows = results["untrained"]["eval"]["long"][DOMAIN]["buckets"]
    return [(int(b["start"]), int(b["end"])) for b in rows]


def per_seed(results: dict, arm: str) -> dict[int, dict]:
    """``{seed: scalars}`` of the arm's runs."""
    teacher = results["teacher"]["eval"]
    runs = [r for r in results["runs"].values() if r["method"] == arm]
    return {r["seed"]: scalars(r["eval"], teacher) for r in runs}


def summary(results: dict) -> dict[str, dict]:
    """Per row (teacher, untrained, each arm): ``{figure: (mean, std)}`` and ``n`` runs."""
    teacher = results["teacher"]["eval"]
    rows = {TEACHER: [scalars(teacher, teacher)]}
    rows[UNTRAINED] = [scalars(results["untrained"]["eval"], teacher)]
    rows |= {label: list(per_seed(results, arm).values()) for arm, label in ARMS.items()}
    out = {}
    for label, seeds in rows.items():
        keys = seeds[0] if seeds else {}
        out[label] = {"n": len(seeds), **{k: mean_std([s[k] for s in seeds]) for k in keys}}
    return out


def paired(results: dict, key: str) -> dict[str, Any] | None:
    """Masked minus unmasked ``key`` over the seeds both arms have: mean, std, the 95%
    t half-width, n, and the call (``lower``, ``higher``, ``within noise``; one seed:
    ``one seed``)."""
    a, b = per_seed(results, "masked"), per_seed(results, "unmasked")
    diffs = [a[s][key] - b[s][key] for s in sorted(set(a) & set(b)) if a[s].get(key) is not None]
    if not diffs:
        return None
    mean, n = statistics.mean(diffs), len(diffs)
    std = statistics.stdev(diffs) if n > 1 else 0.0
    half = T95.get(n - 1, 1.96) * std / math.sqrt(n) if n > 1 else math.nan
    call = "one seed only" if n < 2 else "within noise" if abs(mean) <= half else None
    call = call or ("lower with masks" if mean < 0 else "higher with masks")
    return {"mean": mean, "std": std, "ci95": half, "n": n, "call": call}


def diff_cell(d: dict | None, spec: str) -> str:
    if d is None:
        return "-"
    ci = "" if math.isnan(d["ci95"]) else f" (95% ±{d['ci95']:{spec}})"
    return f"{d['mean']:+{spec}} ± {d['std']:{spec}}{ci}: {d['call']}"


def verdict(results: dict) -> str:
    """One sentence from the paired differences: long perplexity (all positions and by
    position) and short retention."""
    table, long, kept = summary(results), paired(results, "long_ppl"), paired(results, "retention")
    if long is None or kept is None:
        return "No seed has both arms yet."
    u, m = table[ARMS["unmasked"]], table[ARMS["masked"]]
    by: dict[str, list[str]] = {}
    for j, (start, end) in enumerate(buckets(results)):
        call = paired(results, f"bucket{j}")["call"]  # type: ignore[index]
        by.setdefault(call, []).append(f"{start}-{end - 1}")
    where = "; ".join(f"{c} at positions {', '.join(v)}" for c, v in by.items())
    return (
        f"Document masks against none, over {long['n']} seed(s): held-out long perplexity "
        f"{long['call']} ({u['long_ppl'][0]:.2f} -> {m['long_ppl'][0]:.2f}, paired "
        f"{long['mean']:+.2f} ± {long['std']:.2f}; by position: {where}), short retention "
        f"{kept['call']} ({u['retention'][0]:.4f} -> {m['retention'][0]:.4f}, paired "
        f"{kept['mean']:+.4f} ± {kept['std']:.4f})."
    )


def markdown(results: dict) -> str:
    s, table = results["settings"], summary(results)
    docs = s["long_documents"]
    lines = [
        f"Optimizer steps per run: {s['steps']}; seeds {s['seeds_done']}; mean ± std over "
        "seeds. Long stream: the train plays split into "
        f"{docs['documents']} short documents (at most {s['doc_chars']} characters; tokens "
        f"median {docs['document_tokens']['median']}, mean {docs['document_tokens']['mean']}, "
        f"90th percentile {docs['document_tokens']['p90']}, max "
        f"{docs['document_tokens']['max']}), shuffled and packed into {docs['num_samples']} "
        f"samples of {s['lengths']['long']} tokens ({docs['documents_per_sample']} document "
        "pieces a sample). Retention = exp(loss_teacher - loss_model) on held-out 256-token "
        "text; long ppl: held-out plays read contiguously, 1024-token samples.",
        "",
    ]
    edges = buckets(results)
    keys = ["short_ppl", "retention", "long_ppl", "bucket0", f"bucket{len(edges) - 1}"]
    heads = ["short ppl", "retention", "long ppl (all positions)"]
    heads += [f"long ppl {a}-{b - 1}" for a, b in (edges[0], edges[-1])]
    lines += ["| model | runs | " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) + 1)]
    specs = [".2f", ".4f", ".2f", ".2f", ".2f"]
    for label, row in table.items():
        cells = [cell(row.get(k), f, row["n"]) for k, f in zip(keys, specs, strict=True)]
        lines.append(f"| {label} | {row['n']} | " + " | ".join(cells) + " |")
    diffs = [diff_cell(paired(results, k), f) for k, f in zip(keys, specs, strict=True)]
    lines += [f"| masked - unmasked (paired) | | {' | '.join(diffs)} |", ""]
    lines += position_lines(results, edges)
    lines += ["", *cost_lines(results, ARMS), "", f"**Verdict:** {verdict(results)}"]
    times = [{k: v for k, v in i.items() if k != "machine"} for i in results["invocations"]]
    lines += ["", f"Invocations: {json.dumps(times)}"]
    return "\n".join(lines) + "\n"


def position_lines(results: dict, edges: list[tuple[int, int]]) -> list[str]:
    """Long perplexity by position bucket: untrained, each arm, the paired difference."""
    table = summary(results)
    lines = [
        f"| positions | {UNTRAINED} | " + " | ".join(ARMS.values()) + " | masked - unmasked |",
        "|---|---:|---:|---:|---|",
    ]
    for j, (start, end) in enumerate(edges):
        key = f"bucket{j}"
        rows = [table[UNTRAINED], *(table[label] for label in ARMS.values())]
        cells = [cell(r.get(key), ".2f", r["n"]) for r in rows]
        cells.append(diff_cell(paired(results, key), ".2f"))
        lines.append(f"| {start}-{end - 1} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, path: Path) -> None:
    """Long perplexity by position (both arms, std error bars; untrained dashed), the paired
    difference by position (95% t-interval), short retention per arm."""
    from longred_pl.drift import pyplot

    plt, table, edges = pyplot(), summary(results), buckets(results)
    mids = [(a + b) / 2 for a, b in edges]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for shift, label in zip((-6, 0, 6), (UNTRAINED, *ARMS.values()), strict=True):
        row = table[label]
        values = [row.get(f"bucket{j}") or (math.nan, 0.0) for j in range(len(edges))]
        style = "--" if label == UNTRAINED else "-"
        xs = [x + shift for x in mids]
        means, stds = [v[0] for v in values], [v[1] for v in values]
        axes[0].errorbar(xs, means, stds, fmt=style, marker="o", ms=3, capsize=3, label=label)
    axes[0].axvline(256, ls=":", color="grey")
    axes[0].set(xlabel="target position (dotted: teacher window)", ylabel="perplexity")
    axes[0].set_title("held-out plays, read contiguously: perplexity by position")
    diffs = [paired(results, f"bucket{j}") for j in range(len(edges))]
    kept = [(x, d) for x, d in zip(mids, diffs, strict=True) if d is not None]
    errors = [0.0 if math.isnan(d["ci95"]) else d["ci95"] for _, d in kept]
    axes[1].errorbar(
        [x for x, _ in kept],
        [d["mean"] for _, d in kept],
        errors,
        fmt="o-",
        capsize=3,
        label="masked - unmasked (95% t-interval)",
    )
    axes[1].axhline(0.0, color="grey", lw=1)
    axes[1].set(xlabel="target position", ylabel="perplexity difference")
    axes[1].set_title("paired by seed: masked - unmasked")
    labels = [UNTRAINED, *ARMS.values()]
    values = [table[k].get("retention") or (math.nan, 0.0) for k in labels]
    axes[2].errorbar(
        range(len(labels)),
        [v[0] for v in values],
        [v[1] for v in values],
        fmt="o",
        capsize=3,
        label="held-out 256-token text",
    )
    axes[2].axhline(1.0, color="grey", ls="--", lw=1)
    axes[2].set_xticks(range(len(labels)), labels, rotation=12, fontsize="small")
    axes[2].set(ylabel="ppl_teacher / ppl_model", title="short-text retention (1 = teacher)")
    save_figure(fig, axes, path)
