"""Tables and plots of the reproduction study: pure functions of its JSON.

The JSON is written by :mod:`experiments.reproduce.study`. This module imports nothing of
the repository at module level, so it also loads as a plain file (``notebooks/results.ipynb``
renders ``reproduce.json`` with it).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

METHODS = {"long-cpt": "Long+CPT", "mix-cpt": "Mix+CPT", "longred-c": "LongReD-C"}
METHODS["longred-u"] = "LongReD-U"
DOMAINS = ("shakespeare", "python")
UNTRAINED = "ABF, untrained"
NEAR, FAR = 64, 256  # copy filler distances: within / beyond the teacher's window


# -------------------------------------------------------------------------------- report
def scalars(ev: dict, teacher: dict) -> dict[str, float | None]:
    """The table's figures of one evaluation; retention against the teacher's short losses."""
    row: dict[str, float | None] = {}
    for d in DOMAINS:
        row[f"short_ppl/{d}"] = ev["short"][d]["ppl"]
        row[f"retention/{d}"] = math.exp(teacher["short"][d]["loss"] - ev["short"][d]["loss"])
        row[f"long_ppl/{d}"] = ev["long"][d]["ppl"] if ev["long"][d] else None
    acc = {int(k): v for k, v in ev["copy"]["accuracy"].items()}
    near, far = [v for k, v in acc.items() if k <= NEAR], [v for k, v in acc.items() if k >= FAR]
    row["copy_near"] = statistics.mean(near) if near else None
    row["copy_far"] = statistics.mean(far) if far else None
    return row


def mean_std(values: list) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def evals_by_row(results: dict) -> dict[str, list[dict]]:
    rows = {"Teacher (window 256)": [results["teacher"]["eval"]]}
    rows[UNTRAINED] = [results["untrained"]["eval"]]
    for name, label in METHODS.items():
        rows[label] = [r["eval"] for r in results["runs"].values() if r["method"] == name]
    return rows


def summary(results: dict) -> dict[str, dict]:
    """Per row (teacher, untrained, each method): ``{metric: (mean, std)}`` and ``n`` runs."""
    teacher, out = results["teacher"]["eval"], {}
    for label, evals in evals_by_row(results).items():
        per_seed = [scalars(ev, teacher) for ev in evals]
        keys = per_seed[0] if per_seed else {}
        out[label] = {"n": len(per_seed), **{k: mean_std([s[k] for s in per_seed]) for k in keys}}
    return out


def cell(value: tuple | None, spec: str, n: int = 2) -> str:
    """``mean ± std``; the mean alone for a single run, ``-`` for no value."""
    if value is None:
        return "-"
    return f"{value[0]:{spec}}" + (f" ± {value[1]:{spec}}" if n > 1 else "")


def markdown(results: dict) -> str:
    s = results["settings"]
    keys = [f"{m}/{d}" for m in ("short_ppl", "retention", "long_ppl") for d in DOMAINS]
    heads = [k.replace("_", " ").replace("/", " ") for k in keys]
    heads += [f"copy d<={NEAR}", f"copy d>={FAR}"]
    lines = [
        f"Optimizer steps per run: {s['steps']}; seeds {s['seeds_done']}; mean ± std over seeds. "
        "Retention = exp(loss_teacher - loss_model) on held-out short text (1 = the teacher's). "
        "Long ppl: held-out 1024-token texts. Copy: top-1 repeat-copy accuracy, filler "
        f"<= {NEAR} / >= {FAR} tokens.",
        "",
        "| method | runs | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * (len(heads) + 1),
    ]
    specs = [".4f" if k.startswith("retention") else ".2f" for k in keys] + [".3f", ".3f"]
    for label, row in summary(results).items():
        cells = [
            cell(row.get(k), f, row["n"])
            for k, f in zip([*keys, "copy_near", "copy_far"], specs, strict=True)
        ]
        lines.append(f"| {label} | {row['n']} | " + " | ".join(cells) + " |")
    lines += ["", *cost_lines(results, METHODS)]
    built = results["teacher_build"]
    times = [{k: v for k, v in i.items() if k != "machine"} for i in results["invocations"]]
    lines += ["", f"Teacher: {built['num_parameters']} parameters, built in "]
    lines[-1] += f"{built['build_seconds']} s. Invocations: {json.dumps(times)}"
    return "\n".join(lines) + "\n"


def cost_lines(results: dict, methods: dict[str, str]) -> list[str]:
    """Training tokens per stream and fit / evaluation seconds (mean ± std) of each method."""
    lines = ["| method | long tokens | short tokens | s2l tokens | fit s | eval s |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, label in methods.items():
        t = results["settings"]["tokens_per_run"][name]
        runs = [r for r in results["runs"].values() if r["method"] == name]
        fit_s = cell(mean_std([r["fit"]["wall_s"] for r in runs]), ".0f", len(runs))
        eval_s = cell(mean_std([r["eval"]["seconds"] for r in runs]), ".0f", len(runs))
        lines.append(f"| {label} | {t['long']} | {t['short']} | {t['s2l']} | {fit_s} | {eval_s} |")
    return lines


def band(ax: Any, label: str, evals: list[dict], domain: str) -> None:
    """Mean long perplexity by position bucket over ``evals``, with a +- std band."""
    buckets = [ev["long"][domain]["buckets"] for ev in evals]
    columns = [[row[j]["ppl"] for row in buckets] for j in range(len(buckets[0]))]
    mids = [(b["start"] + b["end"]) / 2 for b in buckets[0]]
    mean = [statistics.mean(c) for c in columns]
    std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
    style = "--" if label == UNTRAINED else "-"
    line = ax.plot(mids, mean, style, marker="o", ms=3, label=label)[0]
    low = [m - e for m, e in zip(mean, std, strict=True)]
    high = [m + e for m, e in zip(mean, std, strict=True)]
    ax.fill_between(mids, low, high, color=line.get_color(), alpha=0.2)


def plot(results: dict, path: Path) -> None:
    """Retention per domain (mean, std error bars); long perplexity by position per domain."""
    from longred_pl.drift import pyplot

    plt, table, rows = pyplot(), summary(results), evals_by_row(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = [k for k in table if not k.startswith("Teacher")]
    for i, d in enumerate(DOMAINS):
        values = [table[k].get(f"retention/{d}") or (math.nan, 0.0) for k in labels]
        xs = [j + (i - 0.5) * 0.2 for j in range(len(labels))]
        means, stds = [v[0] for v in values], [v[1] for v in values]
        axes[0].errorbar(xs, means, stds, fmt="o", capsize=3, label=d)
    axes[0].axhline(1.0, color="grey", ls="--", lw=1)
    axes[0].set_xticks(range(len(labels)), labels, rotation=20, fontsize="small")
    axes[0].set(ylabel="ppl_teacher / ppl_model", title="short-text retention (1 = teacher)")
    for ax, d in zip(axes[1:], DOMAINS, strict=True):
        for label in [k for k in labels if rows[k]]:
            band(ax, label, rows[label], d)
        ax.axvline(256, ls=":", color="grey")
        ax.set(xlabel="target position (dotted: teacher window)", ylabel="perplexity")
        ax.set_title(f"held-out long {d}: perplexity by position")
    save_figure(fig, axes, path)


def save_figure(fig: Any, axes: Any, path: Path) -> None:
    """Grid and legend on every axis, then the PNG (120 dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
