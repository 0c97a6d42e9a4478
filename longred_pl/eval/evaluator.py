"""Evaluate extended models, and choose distillation layers from measured drift.

* :func:`evaluate_model`: one local Hugging Face model directory (teacher, baseline or
  exported student): short-text perplexity (what LongReD must keep; LONGRED.md), long-text
  perplexity by position bucket and repeat-copy accuracy by distance (what the extension
  must add), and optionally passkey retrieval (real LMs only).
* ``longred eval`` (:func:`eval_main`): several models side by side, written as
  ``results.json``, ``results.md`` and PNG plots. With ``--teacher`` each row also shows
  the short-perplexity retention ``exp(loss_teacher - loss_model) = ppl_teacher /
  ppl_model`` (1 = the teacher's short-text quality, the paper's goal; Sec. 4).
* ``longred select-layers`` (:func:`select_layers_main`): per-layer drift and a
  ``model.distill_layers`` snippet; it lives in ``drift.py``, beside the rule, and is
  re-exported here so both evaluation commands come from one module.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from longred_pl.data.shards import expand_urls, read_shard
from longred_pl.eval.metrics import TokenPerplexity
from longred_pl.eval.probes import (
    MAX_LOG_PPL,
    passkey_probe,
    position_bucket_perplexity,
    repeat_copy_probe,
    token_nll,
)
from longred_pl.models import freeze, load_causal_lm, load_config

__all__ = [
    "add_common_flags",
    "default_copy_distances",
    "default_passkey_lengths",
    "eval_main",
    "evaluate_model",
    "read_batches",
    "resolve_device",
    "select_layers_main",
]

PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
EVAL_FLAGS = (  # `longred eval` flags passed to evaluate_model under the same names
    "num_short", "num_long", "batch_size", "buckets", "copy_span", "copy_trials",
    "copy_distances", "passkey", "passkey_lengths", "passkey_depths", "seed", "device",
    "dtype", "attn_implementation", "trust_remote_code",
)  # fmt: skip


# ------------------------------------------------------------------------- helpers
def read_batches(
    urls: str | Sequence[str],
    seq_len: int,
    num_samples: int,
    batch_size: int,
    vocab_size: int | None = None,
    flag: str = "urls",
) -> Iterator[torch.Tensor]:
    """The first ``num_samples`` samples of a shard stream, in file order, as ``[b, seq_len]``."""
    samples = itertools.islice(_samples(urls, seq_len, vocab_size, flag), num_samples)
    while batch := list(itertools.islice(samples, batch_size)):
        yield torch.stack(batch)


def _samples(urls: str | Sequence[str], seq_len: int, vocab_size: int | None, flag: str):
    for url in expand_urls(urls, field=flag):
        for sample in read_shard(url, seq_len):
            if vocab_size is not None and int(sample.max()) >= vocab_size:
                raise ValueError(
                    f"{flag}: token id {int(sample.max())} >= the model's vocab_size {vocab_size}; "
                    f"the shards were prepared with another tokenizer"
                )
            yield torch.from_numpy(sample).long()


def default_copy_distances(window: int, span: int, bos: bool = True) -> list[int]:
    """0, powers of 4, and the longest filler that fits ``window`` (``window - 2 * span - bos``)."""
    longest = window - 2 * span - int(bos)
    if longest < 0:
        raise ValueError(
            f"--copy-span {span}: two copies ({2 * span} tokens) do not fit the model's "
            f"window {window}; use a smaller --copy-span"
        )
    powers = [4**j for j in range(1, 32) if 4**j < longest]
    return sorted({0, *powers, longest})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _rope_summary(config: Any) -> str:
    params = dict(getattr(config, "rope_parameters", None) or {})
    parts = [str(params.get("rope_type", "default"))]
    if "rope_theta" in params:
        parts.append(f"theta={params['rope_theta']:g}")
    if "factor" in params:
        parts.append(f"factor={params['factor']:g}")
    return " ".join(parts)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, MAX_LOG_PPL))


# ----------------------------------------------------------------------- evaluation
def evaluate_model(
    model_dir: str,
    short_urls: str | Sequence[str],
    short_seq_len: int,
    long_urls: str | Sequence[str] | None = None,
    long_seq_len: int | None = None,
    *,
    num_short: int = 32,
    num_long: int = 4,
    batch_size: int = 4,
    buckets: int = 8,
    copy_span: int = 16,
    copy_trials: int = 8,
    copy_distances: Sequence[int] | None = None,
    passkey: bool = False,
    passkey_lengths: Sequence[int] | None = None,
    passkey_depths: Sequence[float] = PASSKEY_DEPTHS,
    passkey_trials: int = 1,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Short and long perplexity, copy accuracy (and passkey) of one local model directory.

    Args:
        model_dir: local Hugging Face causal-LM directory.
        short_urls, short_seq_len: short-text shards (``longred prepare``) and their length.
        long_urls, long_seq_len: long-text shards and their length (optional). Lengths
            beyond the model's window are evaluated too (that is how a teacher fails).
        num_short, num_long: samples read from each stream (first ones, file order).
        batch_size: samples per forward (long samples run one at a time).
        buckets: equal-width position buckets of the long perplexity.
        copy_span, copy_trials: repeat-copy span length and sequences per distance.
        copy_distances: filler lengths; default :func:`default_copy_distances` up to the
            model's ``max_position_embeddings``.
        passkey: run passkey retrieval (needs a tokenizer in ``model_dir``).
        passkey_lengths: prompt lengths; default :func:`default_passkey_lengths`.
        passkey_depths, passkey_trials: needle depths and keys per cell.
        seed: seeds the copy and passkey probes.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:0``...
        dtype, attn_implementation, trust_remote_code: as in ``load_causal_lm``.
        progress: tqdm bars.

    Returns:
        A JSON-ready dict: ``model``, ``window``, ``rope``, ``short``, ``long``, ``copy``,
        ``passkey`` (``long`` and ``passkey`` are ``None`` when not run).
    """
    config = load_config(model_dir, trust_remote_code, field="MODEL_DIR")
    vocab, window = int(config.vocab_size), int(config.max_position_embeddings)
    bos = getattr(config, "bos_token_id", None)
    distances = list(copy_distances or default_copy_distances(window, copy_span, bos is not None))
    expand_urls(short_urls, field="--short-data")
    if long_urls is not None:
        expand_urls(long_urls, field="--long-data")
    tokenizer = _tokenizer(model_dir, trust_remote_code) if passkey else None
    model = freeze(load_causal_lm(model_dir, config, attn_implementation, dtype, trust_remote_code))
    model.to(resolve_device(device))

    short = read_batches(short_urls, short_seq_len, num_short, batch_size, vocab, "--short-data")
    result: dict[str, Any] = {
        "model": str(model_dir),
        "window": window,
        "rope": _rope_summary(config),
        "short": _short_perplexity(model, short, short_seq_len, progress),
        "long": None,
        "copy": None,
        "passkey": None,
    }
    if long_urls is not None and long_seq_len is not None:
        long = read_batches(long_urls, long_seq_len, num_long, 1, vocab, "--long-data")
        result["long"] = _long_perplexity(model, long, long_seq_len, buckets, progress)
    gen = torch.Generator().manual_seed(seed)
    accuracy = repeat_copy_probe(
        model, vocab, distances, copy_span, copy_trials, gen, bos_token_id=bos, progress=progress
    )
    result["copy"] = {
        "span": copy_span,
        "trials": copy_trials,
        "chance": 1.0 / vocab,
        "accuracy": {str(d): a for d, a in accuracy.items()},
    }
    if tokenizer is not None:
        lengths = passkey_lengths or default_passkey_lengths(window)
        gen = torch.Generator().manual_seed(seed)
        scores = passkey_probe(
            model, tokenizer, lengths, passkey_depths, passkey_trials, gen, progress=progress
        )
        result["passkey"] = {
            str(n): {str(d): a for d, a in row.items()} for n, row in scores.items()
        }
    return result


def default_passkey_lengths(window: int) -> list[int]:
    """A quarter, half and nearly all of the window (room left for the decoded answer)."""
    return sorted({n for n in (window // 4, window // 2, window - 32) if n > 0}) or [window]


def _short_perplexity(
    model: torch.nn.Module, batches: Iterator[torch.Tensor], seq_len: int, progress: bool
) -> dict[str, float]:
    from tqdm.auto import tqdm

    metric = TokenPerplexity()
    for batch in tqdm(batches, desc="short ppl", unit="batch", disable=not progress):
        metric.update(token_nll(model, batch).cpu())
    return _loss_entry(float(metric.compute_loss()), int(metric.count), seq_len)


def _long_perplexity(
    model: torch.nn.Module,
    batches: Iterator[torch.Tensor],
    seq_len: int,
    buckets: int,
    progress: bool,
) -> dict[str, Any]:
    rows = position_bucket_perplexity(model, batches, buckets, progress=progress)
    tokens = int(sum(r["tokens"] for r in rows))
    loss = sum(r["loss"] * r["tokens"] for r in rows if r["tokens"]) / max(tokens, 1)
    return {**_loss_entry(loss, tokens, seq_len), "buckets": rows}


def _loss_entry(loss: float, tokens: int, seq_len: int) -> dict[str, float]:
    return {"loss": loss, "ppl": _ppl(loss), "tokens": tokens, "seq_len": seq_len}


def _tokenizer(model_dir: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--passkey needs a tokenizer in {model_dir!r} (tokenizer.json or similar); "
            f"save one there or drop --passkey"
        ) from err


# --------------------------------------------------------------------- eval report
def _names(dirs: Sequence[str]) -> list[str]:
    base = [Path(d).name or str(d) for d in dirs]
    return base if len(set(base)) == len(base) else [str(d) for d in dirs]


def _fmt(value: float | None, spec: str = ".3f") -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else format(value, spec)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _column_table(title: str, label: str, keys: Sequence[Any], rows, cell) -> list[str]:
    """A table with one row per key and one column per model; ``cell(row, key)`` fills it."""
    names = [r["name"] for r in rows]
    lines = ["", title, "", f"| {label} | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    lines += [f"| {k} | " + " | ".join(_fmt(cell(r, k)) for r in rows) + " |" for k in keys]
    return lines


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The ``results.md`` tables: one row per model, then per-bucket and per-distance tables."""
    lines = [
        "| model | window | RoPE | short ppl | short retention | long ppl | long ppl (last bucket) | copy acc (mean) | passkey (mean) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        long = r["long"] or {}
        last = long["buckets"][-1]["ppl"] if long else None
        copy = list(r["copy"]["accuracy"].values())
        keys = [v for row in (r["passkey"] or {}).values() for v in row.values()]
        name = r["name"] + (" (teacher)" if r.get("is_teacher") else "")
        lines.append(
            f"| {name} | {r['window']} | {r['rope']} | {_fmt(r['short']['ppl'])} | "
            f"{_fmt(r.get('short_retention'), '.4f')} | {_fmt(long.get('ppl'))} | {_fmt(last)} | "
            f"{_fmt(_mean(copy))} | {_fmt(_mean(keys), '.2f')} |"
        )
    if any(r["long"] for r in rows):
        edges = next(r["long"]["buckets"] for r in rows if r["long"])
        keys = [f"{b['start']}-{b['end']}" for b in edges]
        title = "Long-text perplexity by target position:"
        lines += _column_table(title, "positions", keys, rows, _bucket_ppl)
    distances = sorted({int(d) for r in rows for d in r["copy"]["accuracy"]})
    copy = rows[0]["copy"]
    title = (
        f"Repeat-copy accuracy by filler distance (span {copy['span']}, chance "
        f"{copy['chance']:.4f}; - = not run, beyond that model's window):"
    )
    lines += _column_table(
        title, "distance", distances, rows, lambda r, d: r["copy"]["accuracy"].get(str(d))
    )
    return "\n".join(lines) + "\n"


def _bucket_ppl(row: dict[str, Any], key: str) -> float | None:
    buckets = (row["long"] or {}).get("buckets", [])
    return next((b["ppl"] for b in buckets if f"{b['start']}-{b['end']}" == key), None)


def plot_results(rows: Sequence[dict[str, Any]], out_dir: str) -> list[str]:
    """``ppl_by_position.png`` (when long data was given) and ``copy_accuracy.png``."""
    from longred_pl.drift import pyplot

    plt = pyplot()
    written = []
    if any(r["long"] for r in rows):
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
        written.append(_save(plt, fig, ax, os.path.join(out_dir, "ppl_by_position.png")))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        acc = r["copy"]["accuracy"]
        ax.plot(
            [int(d) + r["copy"]["span"] for d in acc],
            list(acc.values()),
            marker="o",
            label=r["name"],
        )
    ax.axhline(rows[0]["copy"]["chance"], ls="--", color="grey", label="chance")
    ax.set(
        xlabel="copy distance (span + filler tokens)",
        ylabel="top-1 accuracy",
        title="repeat-copy accuracy",
        ylim=(-0.02, 1.02),
    )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    written.append(_save(plt, fig, ax, os.path.join(out_dir, "copy_accuracy.png")))
    return written


def _save(plt: Any, fig: Any, ax: Any, path: str) -> str:
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ eval CLI
def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=4, help="samples per forward")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda:0 ..."
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true", help="allow custom model code")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longred eval",
        description="Short/long perplexity and copy accuracy of local Hugging Face models.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_DIR", help="local model directories")
    p.add_argument("--teacher", default=None, help="the original model; adds short-ppl retention")
    p.add_argument(
        "--short-data", required=True, help="held-out short-text shards (`longred prepare`)"
    )
    p.add_argument("--short-seq-len", type=int, required=True, help="tokens per short sample")
    p.add_argument("--long-data", default=None, help="held-out long-text shards (optional)")
    p.add_argument("--long-seq-len", type=int, default=None, help="tokens per long sample")
    p.add_argument("--num-short", type=int, default=32, help="short samples evaluated")
    p.add_argument("--num-long", type=int, default=4, help="long samples evaluated")
    p.add_argument("--buckets", type=int, default=8, help="position buckets of the long ppl")
    p.add_argument("--copy-span", type=int, default=16, help="repeat-copy span length")
    p.add_argument("--copy-trials", type=int, default=8, help="repeat-copy sequences per distance")
    p.add_argument(
        "--copy-distances",
        type=_int_list,
        default=None,
        help="comma-separated filler lengths (default: 0, powers of 4, up to the window)",
    )
    p.add_argument(
        "--passkey", action="store_true", help="passkey retrieval (real LMs with a tokenizer)"
    )
    p.add_argument(
        "--passkey-lengths", type=_int_list, default=None, help="comma-separated prompt lengths"
    )
    p.add_argument("--passkey-depths", type=_float_list, default=list(PASSKEY_DEPTHS))
    p.add_argument(
        "--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"]
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the copy and passkey probes")
    add_common_flags(p)
    return p


def _check_eval_args(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if (ns.long_data is None) != (ns.long_seq_len is None):
        parser.error("--long-data and --long-seq-len go together: pass both or neither")
    minimum = {"short_seq_len": 2, "long_seq_len": 2, "copy_span": 2, "num_short": 1,
               "num_long": 1, "batch_size": 1, "buckets": 1, "copy_trials": 1}  # fmt: skip
    for flag, low in minimum.items():
        value = getattr(ns, flag)
        if value is not None and value < low:
            parser.error(f"--{flag.replace('_', '-')} must be >= {low} (got {value})")
    if ns.long_seq_len is not None and ns.buckets >= ns.long_seq_len:
        parser.error(f"--buckets must be < --long-seq-len ({ns.long_seq_len})")
    try:
        for path in ([ns.teacher] if ns.teacher else []) + ns.models:
            load_config(
                path, ns.trust_remote_code, field="--teacher" if path == ns.teacher else "MODEL_DIR"
            )
        expand_urls(ns.short_data, field="--short-data")
        if ns.long_data:
            expand_urls(ns.long_data, field="--long-data")
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


def eval_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``longred eval MODEL_DIR ... --short-data DIR --short-seq-len N --out DIR``."""
    parser = _eval_parser()
    ns = parser.parse_args(None if argv is None else list(argv))
    _check_eval_args(parser, ns)
    dirs = list(dict.fromkeys(([ns.teacher] if ns.teacher else []) + ns.models))
    rows = []
    for name, model_dir in zip(_names(dirs), dirs, strict=True):
        print(f"[longred eval] {name}: {model_dir}")
        kwargs = {flag: getattr(ns, flag) for flag in EVAL_FLAGS}
        row = evaluate_model(
            model_dir, ns.short_data, ns.short_seq_len, ns.long_data, ns.long_seq_len,
            progress=not ns.no_progress, **kwargs,
        )  # fmt: skip
        rows.append({"name": name, "is_teacher": model_dir == ns.teacher, **row})
    if ns.teacher:
        teacher_loss = rows[0]["short"]["loss"]
        for row in rows:
            row["short_retention"] = math.exp(teacher_loss - row["short"]["loss"])
    os.makedirs(ns.out, exist_ok=True)
    results = {"teacher": ns.teacher, "models": rows, "args": vars(ns)}
    Path(ns.out, "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = results_markdown(rows)
    Path(ns.out, "results.md").write_text(markdown)
    results["plots"] = plot_results(rows, ns.out)
    print(markdown)
    print(
        f"[longred eval] wrote {ns.out}/results.json, results.md, {len(results['plots'])} plot(s)"
    )
    return results


def select_layers_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``longred select-layers``; implemented in :func:`longred_pl.drift.select_layers_main`."""
    from longred_pl.drift import select_layers_main as main

    return main(argv)
