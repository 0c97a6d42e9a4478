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

The plots say what the tables say: the copy plot's x axis is the table's filler distances
(:func:`copy_distances`), its "at chance" is the table's test (:func:`at_chance`: a
one-sided exact binomial test at :data:`CHANCE_ALPHA`, named in both), the heat-map's
columns carry the table's lengths (:func:`passkey_columns`). Curves of different models
differ in marker, size and line style, the earlier drawn larger and below, so identical
curves stay visible; legends sit outside the axes; heat-map labels take the text colour
that reads on their cell (:func:`text_colour`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHANCE_ALPHA",
    "at_chance",
    "binomial_tail",
    "copy_distances",
    "min_hits_above_chance",
    "model_names",
    "passkey_columns",
    "passkey_markdown",
    "plot_passkey",
    "plot_results",
    "plot_ruler",
    "results_markdown",
    "ruler_markdown",
    "text_colour",
]

CHANCE_ALPHA = 0.01
CHANCE_TEST = f"one-sided exact binomial test, alpha = {CHANCE_ALPHA}"


def model_names(dirs: Sequence[str]) -> list[str]:
    """Directory names, or the full paths when two directories share a name."""
    base = [Path(d).name or str(d) for d in dirs]
    return base if len(set(base)) == len(base) else [str(d) for d in dirs]


def _fmt(value: float | None, spec: str = ".3f") -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else format(value, spec)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def binomial_tail(hits: int, n: int, p: float) -> float:
    """``P(X >= hits)`` for ``X ~ Binomial(n, p)``: the one-sided p-value of ``hits`` in ``n``.

    Exact: the terms are summed in log space (``lgamma``), so large ``n`` and tiny ``p``
    (chance = 1/vocab) neither overflow nor round to zero.
    """
    if hits <= 0 or p >= 1.0:
        return 1.0
    if hits > n or p <= 0.0:
        return 0.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    logs = [
        log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(hits, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


def at_chance(accuracy: float, chance: float, scored: int, alpha: float = CHANCE_ALPHA) -> bool:
    """Whether ``accuracy`` over ``scored`` tokens is *not* above ``chance``: the one-sided
    exact binomial test of its hits (``round(accuracy * scored)``) gives p >= ``alpha``."""
    return binomial_tail(round(accuracy * scored), scored, chance) >= alpha


def min_hits_above_chance(scored: int, chance: float, alpha: float = CHANCE_ALPHA) -> int:
    """The fewest hits in ``scored`` that :func:`at_chance` calls above chance (``scored + 1``
    when none is)."""
    low, high = 0, scored + 1  # the tail falls as hits grow: bisect for p < alpha
    while low < high:
        mid = (low + high) // 2
        if binomial_tail(mid, scored, chance) < alpha:
            high = mid
        else:
            low = mid + 1
    return low


def copy_distances(rows: Sequence[dict[str, Any]]) -> list[int]:
    """The filler distances of the copy table's rows (and of the copy plot's x axis)."""
    return sorted({int(d) for r in rows for d in r["copy"]["accuracy"]})


def _copy_scored(row: dict[str, Any]) -> int:
    """Tokens scored per distance: each trial scores ``span - 1`` (probes.repeat_copy_probe)."""
    return row["copy"]["trials"] * (row["copy"]["span"] - 1)


def passkey_columns(
    lengths: Sequence[str | int], windows: Sequence[int], answer: int | None = None
) -> list[str]:
    """Column labels of the passkey table and heat-map: the prompt lengths probed, and for
    one that is a window less the decoded answer's tokens, that window too (``1014 (= 1024
    - 10)``: the prompt of a full 1024-token window)."""
    if answer is None:
        from longred_pl.eval.probes import PASSKEY_ANSWER_TOKENS as answer
    return [
        f"{n} (= {int(n) + answer} - {answer})" if int(n) + answer in windows else str(n)
        for n in lengths
    ]


def text_colour(rgba: Sequence[float]) -> str:
    """``black`` or ``white``, whichever contrasts more with a cell of colour ``rgba``
    (WCAG relative luminance: black above 0.179, where both contrasts are equal)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


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
    named = r.get("is_teacher") and r["name"] != "teacher"  # not "teacher (teacher)"
    name = r["name"] + (" (teacher)" if named else "")
    ruler_mean = _mean([100 * v for v in ruler.get("average", {}).values()])
    return (
        f"| {name} | {r['window']} | {r['rope']} | {_fmt(r['short']['ppl'])} | "
        f"{_fmt(r.get('short_retention'), '.4f')} | {_fmt(long.get('ppl'))} | {_fmt(last)} | "
        f"{_fmt(_mean(copy))} | {_fmt(_mean(keys), '.2f')} | {_fmt(ruler_mean, '.1f')} |"
    )


def _copy_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    chances = sorted({r["copy"]["chance"] for r in rows})
    copy = rows[0]["copy"]
    chance = ", ".join(f"{c:.2g}" for c in chances)
    scored = ", ".join(str(n) for n in sorted({_copy_scored(r) for r in rows}))
    title = (
        f"Repeat-copy accuracy by filler distance (span {copy['span']}, {copy['trials']} "
        f"trials: {scored} scored tokens per distance; chance = 1/vocab = {chance}; `~` = "
        "not above chance, i.e. no retrieval (one-sided exact binomial test of the hits "
        f"against 1/vocab: p-value >= alpha = {CHANCE_ALPHA}); - = not run):"
    )

    def cell(r: dict[str, Any], d: int) -> str:
        value = r["copy"]["accuracy"].get(str(d))
        if value is None:
            return "-"
        marked = at_chance(value, r["copy"]["chance"], _copy_scored(r))
        return f"{value:.3f}" + (" ~" if marked else "")

    return _column_table(title, "distance", copy_distances(rows), rows, cell)


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The ``results.md`` tables: one row per model, then per-bucket, per-distance, passkey, RULER."""
    lines = [
        "| model | window | RoPE | short ppl | short retention | long ppl | long ppl (last bucket) "
        "| copy acc (mean) | passkey (mean) | RULER % (mean) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_summary_line(r) for r in rows]
    masked = [k for k in ("short", "long") if any((r[k] or {}).get("document_mask") for r in rows)]
    if masked:
        lines += [
            "",
            f"Document masks on ({' and '.join(masked)} text): each document of a packed sample "
            "is read on its own (positions restart at its start, no label crosses a boundary).",
        ]
    if any(r["long"] for r in rows):
        edges = next(r["long"]["buckets"] for r in rows if r["long"])
        keys = [f"{b['start']}-{b['end']}" for b in edges]
        title = f"Long-text perplexity by target position{_within(rows)}:"
        lines += _column_table(title, "positions", keys, rows, lambda r, k: _fmt(_bucket_ppl(r, k)))
    lines += _copy_table(rows)
    if any(r["passkey"] for r in rows):
        lines += ["", passkey_markdown(rows).rstrip("\n")]
    if any(r.get("ruler") for r in rows):
        lines += ["", ruler_markdown([r for r in rows if r.get("ruler")]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _within(rows: Sequence[dict[str, Any]]) -> str:
    """`` within documents`` when the long text was read with document masks, else empty."""
    return " within documents" if any((r["long"] or {}).get("document_mask") for r in rows) else ""


def _bucket_ppl(row: dict[str, Any], key: str) -> float | None:
    buckets = (row["long"] or {}).get("buckets", [])
    return next((b["ppl"] for b in buckets if f"{b['start']}-{b['end']}" == key), None)


def passkey_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Passkey accuracy per model: one row per needle depth, one column per prompt length."""
    windows = [r["window"] for r in rows]
    lengths = sorted({n for r in rows if r["passkey"] for n in r["passkey"]}, key=int)
    full = [c.replace(" (= ", " = ")[:-1] for c in passkey_columns(lengths, windows) if "=" in c]
    note = "".join(f"; {c}: a whole window less the decoded answer's tokens" for c in full)
    lines = [
        f"Passkey retrieval accuracy (rows: needle depth, 0 = start; columns: prompt tokens{note}):"
    ]
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
    from longred_pl.eval.ruler import skipped_markdown

    return "\n".join(lines) + "\n" + skipped_markdown(rows)


# -------------------------------------------------------------------------- figures
_MARKERS = ("o", "s", "D", "^", "v", "P", "X")
_LINESTYLES = ("-", "--", "-.", ":")


def _style(k: int) -> dict[str, Any]:
    """Model ``k``'s line: its own colour, marker and line style; earlier models are drawn
    larger and below, so a curve identical to another still shows around it."""
    return {
        "color": f"C{k % 10}",
        "marker": _MARKERS[k % len(_MARKERS)],
        "linestyle": _LINESTYLES[k % len(_LINESTYLES)],
        "markersize": max(3.5, 10.0 - 3.0 * k),
        "linewidth": max(1.0, 3.0 - 0.9 * k),
        "zorder": 2 + k,
    }


def _legend_outside(ax: Any, handles: list[Any] | None = None, **kwargs: Any) -> Any:
    """The legend right of the axes, never on the data."""
    if handles is None:
        handles = ax.get_legend_handles_labels()[0]
    return ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        **kwargs,
    )


def _save(plt: Any, fig: Any, path: str) -> str:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _log2_axis(plt: Any, ax: Any) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())


def _ppl_figure(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    fig, ax = plt.subplots(figsize=(7.5, 4), layout="constrained")
    for k, r in enumerate(rows):
        if r["long"]:
            mids = [(b["start"] + b["end"]) / 2 for b in r["long"]["buckets"]]
            ppls = [b["ppl"] for b in r["long"]["buckets"]]
            ax.plot(mids, ppls, label=r["name"], **_style(k))
            ax.axvline(r["window"], ls=":", color=_style(k)["color"], alpha=0.6)
    ppls = [b["ppl"] for r in rows if r["long"] for b in r["long"]["buckets"]]
    ax.set(
        xlabel=f"target position{_within(rows)} (dotted: model window)",
        ylabel="perplexity",
        title="long-text perplexity by position",
        yscale="log" if max(ppls) > 10 * min(ppls) else "linear",
    )
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return fig


def _copy_figure(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """Accuracy against the table's filler distances (evenly spaced, labelled by value);
    points not above chance by the table's test are hollow, over the band of such values."""
    from matplotlib.lines import Line2D

    distances = copy_distances(rows)
    column = {d: j for j, d in enumerate(distances)}
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    for k, r in enumerate(rows):
        accuracy = {int(d): a for d, a in r["copy"]["accuracy"].items()}
        shown = sorted(accuracy)
        dodge = (k - (len(rows) - 1) / 2) * 0.06  # side by side, never hidden
        xs = [column[d] + dodge for d in shown]
        ys = [accuracy[d] for d in shown]
        style = _style(k)
        ax.plot(xs, ys, label=r["name"], **style)
        scored, chance = _copy_scored(r), r["copy"]["chance"]
        low = [j for j, d in enumerate(shown) if at_chance(accuracy[d], chance, scored)]
        ax.plot(
            [xs[j] for j in low],
            [ys[j] for j in low],
            ls="none",
            marker=style["marker"],
            markersize=style["markersize"],
            markerfacecolor="white",
            markeredgecolor=style["color"],
            zorder=style["zorder"] + 0.5,
        )
    for scored, chance in sorted({(_copy_scored(r), r["copy"]["chance"]) for r in rows}):
        hits = min_hits_above_chance(scored, chance)
        ax.axhspan(
            -0.02,
            hits / scored,
            color="grey",
            alpha=0.2,
            lw=0,
            label=f"not above chance: < {hits} hits of {scored}\n({CHANCE_TEST})",
        )
        ax.axhline(chance, ls="--", color="grey", lw=1, label=f"chance = 1/vocab = {chance:.2g}")
    hollow = Line2D(
        [],
        [],
        ls="none",
        marker="o",
        markerfacecolor="white",
        markeredgecolor="grey",
        label="hollow marker: not above chance",
    )
    ax.set_xticks(range(len(distances)), [str(d) for d in distances])
    copy = rows[0]["copy"]
    ax.set(
        xlabel="filler distance (tokens between a span and its copy; the rows of results.md)",
        ylabel="top-1 accuracy",
        title=f"repeat-copy accuracy (span {copy['span']}, {copy['trials']} trials)",
        xlim=(-0.5, len(distances) - 0.5),
        ylim=(-0.02, 1.02),
    )
    ax.grid(alpha=0.3)
    _legend_outside(ax, [*ax.get_legend_handles_labels()[0], hollow])
    return fig


def plot_passkey(rows: Sequence[dict[str, Any]], path: str) -> str:
    """The needle heat-map: accuracy by depth (rows) and prompt length (columns), per model."""
    from longred_pl.plotting import pyplot

    plt = pyplot()
    return _save(plt, _passkey_figure(plt, rows), path)


def _passkey_figure(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    rows = [r for r in rows if r["passkey"]]
    windows = [r["window"] for r in rows]
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
                cell = (1.0, 1.0, 1.0) if math.isnan(value) else image.cmap(image.norm(value))
                colour = text_colour(cell)
                ax.text(
                    j, i, _fmt(value, ".2f"), ha="center", va="center", fontsize=7, color=colour
                )
        beyond = [j for j, n in enumerate(lengths) if int(n) > r["window"]]
        if beyond:
            ax.axvline(beyond[0] - 0.5, color="black", ls="--", lw=1.2)
        labels = [c.replace(" (= ", "\n(= ") for c in passkey_columns(lengths, windows)]
        ax.set_xticks(range(len(lengths)), labels, fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths], fontsize=7)
        ax.set(
            xlabel="prompt tokens (dashed: window)",
            ylabel="needle depth" if k == 0 else "",
            title=f"{r['name']} (window {r['window']})",
        )
    fig.colorbar(image, ax=axes[0].tolist(), label="passkey accuracy", shrink=0.9)
    fig.suptitle("passkey retrieval: needle depth x prompt length")
    return fig


def plot_ruler(rows: Sequence[dict[str, Any]], path: str) -> str:
    """RULER score against prompt length: the mean over tasks, then one panel per task."""
    from longred_pl.plotting import pyplot

    plt = pyplot()
    return _save(plt, _ruler_figure(plt, rows), path)


def _ruler_figure(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r.get("ruler")]
    tasks = list(dict.fromkeys(t for r in rows for t in r["ruler"]["tasks"]))
    panels = ["average", *tasks]
    cols = min(4, len(panels))
    n_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        n_rows,
        cols,
        figsize=(3.4 * cols, 2.8 * n_rows + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        for m, r in enumerate(rows):
            values = r["ruler"]["average" if k == 0 else "tasks"]
            values = values if k == 0 else values.get(panels[k], {})
            lengths = sorted(values, key=int)
            ax.plot(
                [int(n) for n in lengths],
                [100 * values[n] for n in lengths],
                label=r["name"],
                **_style(m),
            )
            ax.axvline(r["window"], ls=":", color=_style(m)["color"], alpha=0.6)
        ax.set(title=panels[k], ylim=(-3, 103), xlabel="prompt tokens", ylabel="score %")
        _log2_axis(plt, ax)
        ax.grid(alpha=0.3)
    handles = axes.flat[0].get_legend_handles_labels()[0]
    window = Line2D([], [], ls=":", color="grey", label="dotted: model window")
    fig.legend(
        handles=[*handles, window],
        loc="outside lower center",
        ncols=len(handles) + 1,
        fontsize="small",
    )
    fig.suptitle("RULER score against length")
    return fig


def plot_results(rows: Sequence[dict[str, Any]], out_dir: str) -> list[str]:
    """``ppl_by_position.png`` (long data given), ``copy_accuracy.png``, and when run
    ``passkey_heatmap.png`` and ``ruler.png``."""
    from longred_pl.plotting import pyplot

    plt = pyplot()
    written = []
    if any(r["long"] for r in rows):
        path = os.path.join(out_dir, "ppl_by_position.png")
        written.append(_save(plt, _ppl_figure(plt, rows), path))
    path = os.path.join(out_dir, "copy_accuracy.png")
    written.append(_save(plt, _copy_figure(plt, rows), path))
    if any(r["passkey"] for r in rows):
        written.append(plot_passkey(rows, os.path.join(out_dir, "passkey_heatmap.png")))
    if any(r.get("ruler") for r in rows):
        written.append(plot_ruler(rows, os.path.join(out_dir, "ruler.png")))
    return written
