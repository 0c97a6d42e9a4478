"""Tables and figures of the evaluation commands: what a reader of ``results.md`` looks at.

Every function takes *rows*, one dict per model as :func:`~longred_pl.eval.evaluator.evaluate_model`
returns it plus ``name`` (and ``is_teacher``, ``short_retention``, ``ruler`` when known), and
writes markdown or a PNG (matplotlib, Agg backend):

* :func:`results_markdown`: the summary row per model, long perplexity by position,
  repeat-copy accuracy by distance (cells at chance marked), passkey by length and depth,
  RULER by task and length;
* :func:`plot_results`: ``ppl_by_position.png``, ``copy_accuracy.png``,
  ``passkey_heatmap.png`` (needle depth x prompt length, one panel per model) and
  ``ruler.png`` (score against length, one line per model, one panel per task).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "at_chance",
    "model_names",
    "passkey_markdown",
    "plot_passkey",
    "plot_results",
    "plot_ruler",
    "results_markdown",
    "ruler_markdown",
]


def model_names(dirs: Sequence[str]) -> list[str]:
    """Directory names, or the full paths when two directories share a name."""
    base = [Path(d).name or str(d) for d in dirs]
    return base if len(set(base)) == len(base) else [str(d) for d in dirs]


def _fmt(value: float | None, spec: str = ".3f") -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else format(value, spec)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def at_chance(accuracy: float, chance: float, scored: int) -> bool:
    """Whether ``accuracy`` over ``scored`` tokens is within 2 binomial s.d. of ``chance``."""
    return accuracy <= chance + 2.0 * math.sqrt(chance * (1.0 - chance) / max(scored, 1))


def _column_table(title: str, label: str, keys: Sequence[Any], rows, cell) -> list[str]:
    """A table with one row per key and one column per model; ``cell(row, key)`` is its text."""
    names = [r["name"] for r in rows]
    lines = ["", title, "", f"| {label} | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    lines += [f"| {k} | " + " | ".join(cell(r, k) for r in rows) + " |" for k in keys]
    return lines


# ------------------------------------------------------------------------- markdown
def _summary_line(r: dict[str, Any]) -> str:
    long = r["long"] or {}
    last = long["buckets"][-1]["ppl"] if long else None
    copy = list(r["copy"]["accuracy"].values())
    keys = [v for row in (r["passkey"] or {}).values() for v in row.values()]
    ruler = r.get("ruler") or {}
    name = r["name"] + (" (teacher)" if r.get("is_teacher") else "")
    ruler_mean = _mean([100 * v for v in ruler.get("average", {}).values()])
    return (
        f"| {name} | {r['window']} | {r['rope']} | {_fmt(r['short']['ppl'])} | "
        f"{_fmt(r.get('short_retention'), '.4f')} | {_fmt(long.get('ppl'))} | {_fmt(last)} | "
        f"{_fmt(_mean(copy))} | {_fmt(_mean(keys), '.2f')} | {_fmt(ruler_mean, '.1f')} |"
    )


def _copy_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    distances = sorted({int(d) for r in rows for d in r["copy"]["accuracy"]})
    chances = sorted({r["copy"]["chance"] for r in rows})
    copy = rows[0]["copy"]
    chance = ", ".join(f"{c:.2g}" for c in chances)
    title = (
        f"Repeat-copy accuracy by filler distance (span {copy['span']}, {copy['trials']} "
        f"trials; chance = 1/vocab = {chance}; `~` = within 2 s.d. of chance, i.e. no "
        "retrieval; - = not run):"
    )

    def cell(r: dict[str, Any], d: int) -> str:
        value = r["copy"]["accuracy"].get(str(d))
        if value is None:
            return "-"
        scored = r["copy"]["trials"] * (r["copy"]["span"] - 1)
        return f"{value:.3f}" + (" ~" if at_chance(value, r["copy"]["chance"], scored) else "")

    return _column_table(title, "distance", distances, rows, cell)


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The ``results.md`` tables: one row per model, then per-bucket, per-distance, passkey, RULER."""
    lines = [
        "| model | window | RoPE | short ppl | short retention | long ppl | long ppl (last bucket) "
        "| copy acc (mean) | passkey (mean) | RULER % (mean) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_summary_line(r) for r in rows]
    if any(r["long"] for r in rows):
        edges = next(r["long"]["buckets"] for r in rows if r["long"])
        keys = [f"{b['start']}-{b['end']}" for b in edges]
        title = "Long-text perplexity by target position:"
        lines += _column_table(title, "positions", keys, rows, lambda r, k: _fmt(_bucket_ppl(r, k)))
    lines += _copy_table(rows)
    if any(r["passkey"] for r in rows):
        lines += ["", passkey_markdown(rows).rstrip("\n")]
    if any(r.get("ruler") for r in rows):
        lines += ["", ruler_markdown([r for r in rows if r.get("ruler")]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _bucket_ppl(row: dict[str, Any], key: str) -> float | None:
    buckets = (row["long"] or {}).get("buckets", [])
    return next((b["ppl"] for b in buckets if f"{b['start']}-{b['end']}" == key), None)


def passkey_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Passkey accuracy per model: one row per needle depth, one column per prompt length."""
    lines = ["Passkey retrieval accuracy (rows: needle depth, 0 = start; columns: prompt tokens):"]
    for r in rows:
        if not r["passkey"]:
            continue
        lengths = sorted(r["passkey"], key=int)
        depths = sorted({d for row in r["passkey"].values() for d in row}, key=float)
        marks = [f"{n}" + (" (> window)" if int(n) > r["window"] else "") for n in lengths]
        lines += ["", f"{r['name']} (window {r['window']}):", ""]
        lines += ["| depth | " + " | ".join(marks) + " |", "|---|" + "---:|" * len(lengths)]
        for d in depths:
            cells = [_fmt(r["passkey"][n].get(d), ".2f") for n in lengths]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ruler_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """RULER scores (%): the mean over tasks per model and length, then every task."""
    lengths = sorted({int(n) for r in rows for n in r["ruler"]["average"]})
    head = " | ".join(str(n) for n in lengths)
    limit = rows[0]["ruler"].get("limit")
    per = f"{limit} prompts" if limit else "all 500 prompts"
    lines = [
        f"RULER (lm-eval `ruler` tasks, % of expected answers found by string match; {per} "
        f"per task and length; `*` = length beyond that model's window):",
        "",
        f"| model | window | {head} |",
        "|---|---:|" + "---:|" * len(lengths),
    ]

    def cells(r: dict[str, Any], values: dict[str, float]) -> str:
        out = []
        for n in lengths:
            text = _fmt(100 * values[str(n)] if str(n) in values else None, ".1f")
            out.append(text + ("*" if n > r["window"] and text != "-" else ""))
        return " | ".join(out)

    lines += [f"| {r['name']} | {r['window']} | {cells(r, r['ruler']['average'])} |" for r in rows]
    lines += [
        "",
        "By task:",
        "",
        f"| model | task | {head} |",
        "|---|---|" + "---:|" * len(lengths),
    ]
    for r in rows:
        for task, values in r["ruler"]["tasks"].items():
            lines.append(f"| {r['name']} | {task} | {cells(r, values)} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------- figures
def _save(plt: Any, fig: Any, ax: Any, path: str, legend: bool = True) -> str:
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _log2_axis(plt: Any, ax: Any) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())


def _plot_ppl(plt: Any, rows: Sequence[dict[str, Any]], path: str) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        if r["long"]:
            mids = [(b["start"] + b["end"]) / 2 for b in r["long"]["buckets"]]
            ax.plot(mids, [b["ppl"] for b in r["long"]["buckets"]], marker="o", label=r["name"])
            ax.axvline(r["window"], ls=":", color=ax.lines[-1].get_color(), alpha=0.6)
    ppls = [b["ppl"] for r in rows if r["long"] for b in r["long"]["buckets"]]
    ax.set(
        xlabel="target position (dotted: model window)",
        ylabel="perplexity",
        title="long-text perplexity by position",
        yscale="log" if max(ppls) > 10 * min(ppls) else "linear",
    )
    return _save(plt, fig, ax, path)


def _plot_copy(plt: Any, rows: Sequence[dict[str, Any]], path: str) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        acc = r["copy"]["accuracy"]
        span = r["copy"]["span"]
        ax.plot([int(d) + span for d in acc], list(acc.values()), marker="o", label=r["name"])
    ax.axhline(rows[0]["copy"]["chance"], ls="--", color="grey", label="chance (1/vocab)")
    ax.set(
        xlabel="copy distance (span + filler tokens)",
        ylabel="top-1 accuracy",
        title="repeat-copy accuracy",
        ylim=(-0.02, 1.02),
    )
    _log2_axis(plt, ax)
    return _save(plt, fig, ax, path)


def plot_passkey(rows: Sequence[dict[str, Any]], path: str) -> str:
    """The needle heat-map: accuracy by depth (rows) and prompt length (columns), per model."""
    from longred_pl.plotting import pyplot

    plt = pyplot()
    rows = [r for r in rows if r["passkey"]]
    fig, axes = plt.subplots(
        1, len(rows), figsize=(1.5 + 3.6 * len(rows), 3.8), squeeze=False, layout="constrained"
    )
    for k, (ax, r) in enumerate(zip(axes[0], rows, strict=True)):
        lengths = sorted(r["passkey"], key=int)
        depths = sorted({d for row in r["passkey"].values() for d in row}, key=float)
        grid = [[r["passkey"][n].get(d, math.nan) for n in lengths] for d in depths]
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                ax.text(j, i, _fmt(value, ".2f"), ha="center", va="center", fontsize=7)
        beyond = [j for j, n in enumerate(lengths) if int(n) > r["window"]]
        if beyond:
            ax.axvline(beyond[0] - 0.5, color="black", ls="--", lw=1.2)
        ax.set_xticks(range(len(lengths)), lengths, rotation=45, fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths], fontsize=7)
        ax.set(
            xlabel="prompt tokens (dashed: window)",
            ylabel="needle depth" if k == 0 else "",
            title=f"{r['name']} (window {r['window']})",
        )
    fig.colorbar(image, ax=axes[0].tolist(), label="passkey accuracy", shrink=0.9)
    fig.suptitle("passkey retrieval: needle depth x prompt length")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ruler(rows: Sequence[dict[str, Any]], path: str) -> str:
    """RULER score against prompt length: the mean over tasks, then one panel per task."""
    from longred_pl.plotting import pyplot

    plt = pyplot()
    rows = [r for r in rows if r.get("ruler")]
    tasks = list(dict.fromkeys(t for r in rows for t in r["ruler"]["tasks"]))
    panels = ["average", *tasks]
    cols = min(4, len(panels))
    n_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.4 * cols, 2.8 * n_rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        for r in rows:
            values = r["ruler"]["average" if k == 0 else "tasks"]
            values = values if k == 0 else values.get(panels[k], {})
            lengths = sorted(values, key=int)
            ax.plot(
                [int(n) for n in lengths],
                [100 * values[n] for n in lengths],
                marker="o",
                label=r["name"],
            )
            ax.axvline(r["window"], ls=":", color=ax.lines[-1].get_color(), alpha=0.6)
        ax.set(title=panels[k], ylim=(-3, 103), xlabel="prompt tokens", ylabel="score %")
        _log2_axis(plt, ax)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small", title="dotted: window", title_fontsize="small")
    fig.suptitle("RULER score against length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_results(rows: Sequence[dict[str, Any]], out_dir: str) -> list[str]:
    """``ppl_by_position.png`` (long data given), ``copy_accuracy.png``, and when run
    ``passkey_heatmap.png`` and ``ruler.png``."""
    from longred_pl.plotting import pyplot

    plt = pyplot()
    written = []
    if any(r["long"] for r in rows):
        written.append(_plot_ppl(plt, rows, os.path.join(out_dir, "ppl_by_position.png")))
    written.append(_plot_copy(plt, rows, os.path.join(out_dir, "copy_accuracy.png")))
    if any(r["passkey"] for r in rows):
        written.append(plot_passkey(rows, os.path.join(out_dir, "passkey_heatmap.png")))
    if any(r.get("ruler") for r in rows):
        written.append(plot_ruler(rows, os.path.join(out_dir, "ruler.png")))
    return written
