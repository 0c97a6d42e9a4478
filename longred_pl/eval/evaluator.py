"""Evaluate extended models, and choose distillation layers from measured drift.

* :func:`evaluate_model`: one local Hugging Face model directory (teacher, baseline or
  exported student): short-text perplexity (what LongReD must keep; docs/method.md), long-text
  perplexity by position bucket and repeat-copy accuracy by distance (what the extension
  must add), and optionally passkey retrieval and RULER (real LMs with a tokenizer).
  Held-out shards that record document boundaries (``longred prepare --pack``) are read
  with document masks unless ``--no-document-mask`` (:func:`document_masks`): each document
  of a packed sample on its own, and the long buckets by position within documents.
* ``longred eval`` (:func:`longred_pl.eval.commands.evaluate_models`): several models
  side by side, written as
  ``results.json``, ``results.md`` and PNG plots (:mod:`longred_pl.eval.report`). With a
  teacher each row also shows the short-perplexity retention ``exp(loss_teacher -
  loss_model) = ppl_teacher / ppl_model`` (1 = the teacher's short-text quality, the
  paper's goal; Sec. 4).
* ``longred select-layers`` (:func:`longred_pl.drift.select_layers`): per-layer drift and a
  ``model.distill_layers`` snippet; it lives in ``drift.py``, beside the rule.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from longred_pl.arguments import ModelLoading
from longred_pl.data.index import stream_index
from longred_pl.data.shards import expand_urls, read_shard
from longred_pl.errors import UserError
from longred_pl.eval.metrics import TokenPerplexity
from longred_pl.eval.probes import (
    MAX_LOG_PPL,
    PASSKEY_ANSWER_TOKENS,
    Batch,
    batch_nll,
    passkey_min_length,
    passkey_probe,
    position_bucket_perplexity,
    repeat_copy_probe,
)
from longred_pl.eval.settings import COPY_MAX_DISTANCE, PASSKEY_DEPTHS, EvalData, Probes
from longred_pl.models import freeze, load_causal_lm, load_config, resolve_device

__all__ = [
    "default_copy_distances",
    "default_passkey_lengths",
    "document_mask_line",
    "document_masks",
    "evaluate_model",
    "read_batches",
    "resolve_device",
]


# ------------------------------------------------------------------------- helpers
def read_batches(
    urls: str | Sequence[str],
    seq_len: int,
    num_samples: int,
    batch_size: int,
    vocab_size: int | None = None,
    flag: str = "urls",
    order: str = "first",
    documents: bool = False,
) -> Iterator[Batch]:
    """``num_samples`` samples of a shard stream as ``[b, seq_len]`` batches.

    ``order="first"`` reads the first ones in file order; ``"spread"`` every k-th over the
    whole stream (k = total // num_samples, from ``index.json``), as validation picks them
    (``data.datamodule.FixedStream``), so a small count covers every held-out document.
    With ``documents`` (shards that record document starts) each batch is ``(input_ids,
    document_ids)``, both ``[b, seq_len]`` (``data.datamodule.document_ids``).
    """
    stride = spread_stride(urls, num_samples, flag) if order == "spread" else 1
    read = _samples(urls, seq_len, vocab_size, flag, documents)
    samples = itertools.islice(itertools.islice(read, 0, None, stride), num_samples)
    while batch := list(itertools.islice(samples, batch_size)):
        if not documents:
            yield torch.stack(batch)
            continue
        from longred_pl.data.datamodule import document_ids

        yield torch.stack([ids for ids, _ in batch]), document_ids([s for _, s in batch], seq_len)


def spread_stride(urls: str | Sequence[str], num_samples: int, flag: str) -> int:
    """Every how many samples a spread read takes one (1 when the count is unknown)."""
    total = stream_index(urls if isinstance(urls, str) else list(urls), flag).total
    return max(1, total // num_samples) if total else 1


def _samples(
    urls: str | Sequence[str], seq_len: int, vocab_size: int | None, flag: str, documents: bool
) -> Iterator[Any]:
    """Each sample's ids (a LongTensor), with ``documents`` as ``(ids, document starts)``."""
    for url in expand_urls(urls, field=flag):
        for item in read_shard(url, seq_len, doc_starts=documents):
            sample = item[0] if isinstance(item, tuple) else item
            if vocab_size is not None and int(sample.max()) >= vocab_size:
                raise UserError(
                    f"{flag}: token id {int(sample.max())} >= the model's vocab_size {vocab_size}; "
                    f"the shards were prepared with another tokenizer"
                )
            ids = torch.from_numpy(sample.astype("int64"))
            yield (ids, item[1]) if isinstance(item, tuple) else ids


def document_masks(data: EvalData) -> dict[str, bool]:
    """Whether the short and the long held-out streams are read with document masks.

    ``data.document_mask`` None follows each stream's shards (``index.json``'s
    ``document_boundaries``); False is off for both; True needs boundaries in both.

    Raises:
        UserError: ``--document-mask`` true for shards that record no boundaries.
    """
    streams = {"short": data.short_data, "long": data.long_data}
    found = {}
    for kind, urls in streams.items():
        if urls is None:
            continue
        index = stream_index(urls, f"--{kind}-data")
        found[kind] = data.document_mask is not False and index.document_boundaries
        if data.document_mask and not found[kind]:
            why = (
                "written with --no-pack: one document per sample"
                if index.unpacked
                else "written before format_version 2, or without an index.json"
            )
            raise UserError(
                f"--document-mask: the shards of --{kind}-data {urls} record no document "
                f"boundaries ({why}); re-write them with `longred prepare --pack`, or drop "
                f"--document-mask (--no-document-mask: off for both streams)"
            )
    return found


def document_mask_line(data: EvalData) -> str | None:
    """The line ``longred eval`` says when document masks are on (None when off for both)."""
    on = [f"--{kind}-data" for kind, masked in document_masks(data).items() if masked]
    if not on:
        return None
    why = "--document-mask" if data.document_mask else "shards record document boundaries"
    long = "; long perplexity by position within documents" if "--long-data" in on else ""
    return (
        f"[longred eval] document masks on for {', '.join(on)} ({why}): each document of a "
        f"packed sample is read on its own (positions restart at its start, no label crosses "
        f"a boundary){long}"
    )


def default_copy_distances(
    window: int, span: int, bos: bool = True, max_distance: int = COPY_MAX_DISTANCE
) -> list[int]:
    """0, powers of 4, and the longest filler: the window's (``window - 2 * span - bos``),
    capped at ``max_distance`` (``<= 0``: no cap).

    The cap keeps the default cheap: each distance costs ``trials`` forwards of
    ``2 * span + d`` tokens, and a 32K window would otherwise mean 8 x 32K-token forwards.
    The window itself is probed by passkey and RULER; ``--copy-max-distance 0`` or explicit
    ``--copy-distances`` take the copy probe there.
    """
    longest = window - 2 * span - int(bos)
    if longest < 0:
        raise UserError(
            f"--copy-span {span}: two copies ({2 * span} tokens) do not fit the model's "
            f"window {window}; use a smaller --copy-span"
        )
    if max_distance > 0:
        longest = min(longest, max_distance)
    powers = [4**j for j in range(1, 32) if 4**j < longest]
    return sorted({0, *powers, longest})


def _rope_summary(config: Any) -> str:
    params = dict(getattr(config, "rope_parameters", None) or {})
    kind = str(params.get("rope_type", "default"))
    parts = [] if kind == "default" else [kind]  # default: no scaling, only the base
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
    data: EvalData,
    probes: Probes = Probes(),
    loading: ModelLoading = ModelLoading(),
    *,
    attn_implementation: str = "sdpa",
    passkey_window: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Short and long perplexity, copy accuracy (and passkey, RULER) of one local model directory.

    Args:
        model_dir: local Hugging Face causal-LM directory.
        data: the held-out shards and how many samples to read (:class:`EvalData`); lengths
            beyond the model's window are evaluated too (that is how a teacher fails).
        probes: the copy, passkey and RULER probes (:class:`Probes`); the default copy
            distances are :func:`default_copy_distances` of the model's window, the default
            passkey lengths :func:`default_passkey_lengths` of ``passkey_window``.
        loading: device, dtype and trust_remote_code (:class:`ModelLoading`).
        attn_implementation: as in ``load_causal_lm``.
        passkey_window: window the default passkey lengths span (default the model's own;
            ``longred eval`` passes the largest window of the models it compares).
        progress: tqdm bars.

    Returns:
        A JSON-ready dict: ``model``, ``window``, ``rope``, ``short``, ``long``, ``copy``,
        ``passkey``, ``ruler`` (``long``, ``passkey`` and ``ruler`` are ``None`` when not run).
    """
    config = load_config(model_dir, loading.trust_remote_code, field="MODEL_DIR")
    short_len, long_len = stream_lengths(data)
    window = int(config.max_position_embeddings)
    tokenizer = _tokenizer(model_dir, loading.trust_remote_code) if probes.passkey else None
    model = freeze(
        load_causal_lm(
            model_dir, config, attn_implementation, loading.dtype, loading.trust_remote_code
        )
    ).to(resolve_device(loading.device))
    masks = document_masks(data)
    read = functools.partial(_read, data, int(config.vocab_size), masks)
    result: dict[str, Any] = {
        "model": str(model_dir),
        "window": window,
        "rope": _rope_summary(config),
    }
    result["short"] = _short_perplexity(model, read("short", short_len), short_len, progress)
    result["short"]["document_mask"] = masks["short"]
    result["long"] = None
    if data.long_data is not None and long_len is not None:
        long = read("long", long_len)
        result["long"] = _long_perplexity(model, long, long_len, data.buckets, progress)
        result["long"]["document_mask"] = masks["long"]
        result["long"]["positions"] = "within documents" if masks["long"] else "within samples"
    result["copy"] = _copy(model, config, probes, progress)
    result["passkey"] = None
    if tokenizer is not None:
        result["passkey"] = _passkey(model, tokenizer, probes, passkey_window or window, progress)
    result["ruler"] = _ruler(model_dir, model, probes, data.batch_size, loading)
    return result


def stream_lengths(data: EvalData) -> tuple[int, int | None]:
    """The short and long sample lengths: given, or read from the shards' ``index.json``.

    Raises:
        UserError: a length neither given nor recorded, or given unlike the index.
    """
    short = _stream_length(data.short_data, data.short_seq_len, "--short-data", "--short-seq-len")
    if data.long_data is None:
        if data.long_seq_len is not None:
            raise UserError("--long-seq-len needs --long-data: pass both or neither")
        return short, None
    return short, _stream_length(data.long_data, data.long_seq_len, "--long-data", "--long-seq-len")


def _stream_length(urls: str, given: int | None, field: str, flag: str) -> int:
    recorded = stream_index(urls, field).seq_len
    if given is None and recorded is None:
        raise UserError(f"{flag}: {urls} has no index.json recording seq_len; give {flag}")
    if given is not None and recorded is not None and given != recorded:
        raise UserError(
            f"{flag} {given}: the shards in {urls} hold {recorded}-token samples "
            f"(index.json); drop {flag} or give {recorded}"
        )
    return int(given if given is not None else recorded)  # type: ignore[arg-type]


def _read(
    data: EvalData, vocab: int, masks: dict[str, bool], kind: str, seq_len: int
) -> Iterator[Batch]:
    urls = data.short_data if kind == "short" else data.long_data
    num = data.num_short if kind == "short" else data.num_long
    batch = data.batch_size if kind == "short" else 1  # long samples run one at a time
    flag, documents = f"--{kind}-data", masks[kind]
    return read_batches(urls, seq_len, num, batch, vocab, flag, data.order, documents)  # type: ignore[arg-type]


def _passkey(
    model: torch.nn.Module, tokenizer: Any, probes: Probes, window: int, progress: bool
) -> dict[str, dict[str, float]]:
    lengths = probes.passkey_lengths or _fitting(default_passkey_lengths(window), tokenizer)
    depths = probes.passkey_depths or PASSKEY_DEPTHS
    gen = torch.Generator().manual_seed(probes.seed)
    scores = passkey_probe(
        model, tokenizer, lengths, depths, probes.passkey_trials, gen, progress=progress
    )
    return {str(n): {str(d): a for d, a in row.items()} for n, row in scores.items()}


def _ruler(
    model_dir: str, model: torch.nn.Module, probes: Probes, batch_size: int, loading: ModelLoading
) -> dict[str, Any] | None:
    if not probes.ruler_lengths:
        return None
    from longred_pl.eval.ruler import SYNTHETIC_TASKS, score_ruler

    return score_ruler(
        model_dir,
        probes.ruler_lengths,
        list(probes.ruler_tasks or SYNTHETIC_TASKS),
        limit=probes.ruler_limit or None,
        batch_size=batch_size,
        device=str(resolve_device(loading.device)),
        seed=probes.seed,
        model=model,
        trust_remote_code=loading.trust_remote_code,
    )


def _copy(model: torch.nn.Module, config: Any, probes: Probes, progress: bool) -> dict[str, Any]:
    """The copy probe's entry of ``results.json``: accuracies and the chance level 1/vocab."""
    vocab, window = int(config.vocab_size), int(config.max_position_embeddings)
    bos = getattr(config, "bos_token_id", None)
    span, trials = probes.copy_span, probes.copy_trials
    distances = list(
        probes.copy_distances
        or default_copy_distances(window, span, bos is not None, probes.copy_max_distance)
    )
    gen = torch.Generator().manual_seed(probes.seed)
    accuracy = repeat_copy_probe(
        model, vocab, distances, span, trials, gen, bos_token_id=bos, progress=progress
    )
    return {
        "span": span,
        "trials": trials,
        "chance": 1.0 / vocab,
        "vocab_size": vocab,
        "accuracy": {str(d): a for d, a in accuracy.items()},
    }


def default_passkey_lengths(window: int, answer: int = PASSKEY_ANSWER_TOKENS) -> list[int]:
    """Window / 16, / 8, / 4, / 2 and the full window less the decoded answer's tokens.

    The columns of the needle heat-map: the last one is the model's whole window.
    """
    full = window - answer
    return sorted({n for n in (window // 16, window // 8, window // 4, window // 2, full) if n > 0})


def _fitting(lengths: Sequence[int], tokenizer: Any) -> list[int]:
    """Default passkey lengths the prompt fits in; says which ones it drops."""
    shortest = passkey_min_length(tokenizer)
    kept = [n for n in lengths if n >= shortest]
    if len(kept) < len(lengths):
        dropped = [n for n in lengths if n < shortest]
        print(f"[longred eval] passkey: lengths {dropped} skipped (the prompt needs {shortest})")
    if not kept:
        raise UserError(
            f"--passkey: the passkey prompt needs {shortest} tokens, more than the window "
            "allows; give --passkey-lengths or drop --passkey"
        )
    return kept


def _short_perplexity(
    model: torch.nn.Module, batches: Iterator[Batch], seq_len: int, progress: bool
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    metric = TokenPerplexity()
    for batch in tqdm(batches, desc="short ppl", unit="batch", disable=not progress):
        nll_BT, kept_BT, _ = batch_nll(model, batch)
        metric.update(nll_BT[kept_BT])  # with document masks: no target across a boundary
    return _loss_entry(float(metric.compute_loss()), int(metric.count), seq_len)


def _long_perplexity(
    model: torch.nn.Module,
    batches: Iterator[Batch],
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
        raise UserError(
            f"--passkey needs a tokenizer in {model_dir!r} (tokenizer.json or similar); "
            f"save one there or drop --passkey"
        ) from err


# ------------------------------------------------------------------------ eval CLI
