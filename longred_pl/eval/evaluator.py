"""Evaluate extended models, and choose distillation layers from measured drift.

* :func:`evaluate_model`: one local Hugging Face model directory (teacher, baseline or
  exported student): short-text perplexity (what LongReD must keep; docs/method.md), long-text
  perplexity by position bucket and repeat-copy accuracy by distance (what the extension
  must add), and optionally passkey retrieval and RULER (real LMs with a tokenizer).
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
    passkey_min_length,
    passkey_probe,
    position_bucket_perplexity,
    repeat_copy_probe,
    token_nll,
)
from longred_pl.eval.settings import COPY_MAX_DISTANCE, PASSKEY_DEPTHS, EvalData, Probes
from longred_pl.models import freeze, load_causal_lm, load_config, resolve_device

__all__ = [
    "default_copy_distances",
    "default_passkey_lengths",
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
) -> Iterator[torch.Tensor]:
    """``num_samples`` samples of a shard stream as ``[b, seq_len]`` batches.

    ``order="first"`` reads the first ones in file order; ``"spread"`` every k-th over the
    whole stream (k = total // num_samples, from ``index.json``), as validation picks them
    (``data.datamodule.FixedStream``), so a small count covers every held-out document.
    """
    stride = spread_stride(urls, num_samples, flag) if order == "spread" else 1
    picked = itertools.islice(_samples(urls, seq_len, vocab_size, flag), 0, None, stride)
    samples = itertools.islice(picked, num_samples)
    while batch := list(itertools.islice(samples, batch_size)):
        yield torch.stack(batch)


def spread_stride(urls: str | Sequence[str], num_samples: int, flag: str) -> int:
    """Every how many samples a spread read takes one (1 when the count is unknown)."""
    total = stream_index(list(expand_urls(urls, field=flag)), flag).total
    return max(1, total // num_samples) if total else 1


def _samples(urls: str | Sequence[str], seq_len: int, vocab_size: int | None, flag: str):
    for url in expand_urls(urls, field=flag):
        for sample in read_shard(url, seq_len):
            if vocab_size is not None and int(sample.max()) >= vocab_size:
                raise UserError(
                    f"{flag}: token id {int(sample.max())} >= the model's vocab_size {vocab_size}; "
                    f"the shards were prepared with another tokenizer"
                )
            yield torch.from_numpy(sample).long()


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
    read = functools.partial(_read, data, int(config.vocab_size))
    result: dict[str, Any] = {
        "model": str(model_dir),
        "window": window,
        "rope": _rope_summary(config),
    }
    result["short"] = _short_perplexity(model, read("short", short_len), short_len, progress)
    result["long"] = None
    if data.long_data is not None and long_len is not None:
        long = read("long", long_len)
        result["long"] = _long_perplexity(model, long, long_len, data.buckets, progress)
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


def _read(data: EvalData, vocab: int, kind: str, seq_len: int) -> Iterator[torch.Tensor]:
    urls = data.short_data if kind == "short" else data.long_data
    num = data.num_short if kind == "short" else data.num_long
    batch = data.batch_size if kind == "short" else 1  # long samples run one at a time
    flag = f"--{kind}-data"
    return read_batches(urls, seq_len, num, batch, vocab, flag, order=data.order)  # type: ignore[arg-type]


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
        raise UserError(
            f"--passkey needs a tokenizer in {model_dir!r} (tokenizer.json or similar); "
            f"save one there or drop --passkey"
        ) from err


# ------------------------------------------------------------------------ eval CLI
