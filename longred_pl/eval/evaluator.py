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

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

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
from longred_pl.models import freeze, load_causal_lm, load_config, resolve_device

__all__ = [
    "default_copy_distances",
    "default_passkey_lengths",
    "evaluate_model",
    "read_batches",
    "resolve_device",
]

PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
COPY_MAX_DISTANCE = 4096  # default longest filler of the copy probe (0 = the model's window)
RULER_LIMIT = 20  # default prompts per RULER task and length in `longred eval`


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
    copy_max_distance: int = COPY_MAX_DISTANCE,
    passkey: bool = False,
    passkey_lengths: Sequence[int] | None = None,
    passkey_depths: Sequence[float] = PASSKEY_DEPTHS,
    passkey_trials: int = 1,
    passkey_window: int | None = None,
    ruler_lengths: Sequence[int] | None = None,
    ruler_tasks: Sequence[str] | None = None,
    ruler_limit: int | None = RULER_LIMIT,
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
            model's ``max_position_embeddings``, capped at ``copy_max_distance``.
        copy_max_distance: longest default filler (``<= 0``: the model's window).
        passkey: run passkey retrieval (needs a tokenizer in ``model_dir``).
        passkey_lengths: prompt lengths (at most, in tokens); default
            :func:`default_passkey_lengths` of the model's window.
        passkey_depths, passkey_trials: needle depths and keys per cell.
        passkey_window: window the default passkey lengths span (default the model's own;
            ``longred eval`` passes the largest window of the models it compares).
        ruler_lengths: run RULER at these prompt lengths (needs lm-eval and a tokenizer;
            :func:`longred_pl.eval.ruler.score_ruler`); ``None`` skips it.
        ruler_tasks: RULER task names (default: the synthetic tasks, which run offline).
        ruler_limit: prompts per RULER task and length (``None``: lm-eval's 500).
        seed: seeds the copy, passkey and RULER probes.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:0``...
        dtype, attn_implementation, trust_remote_code: as in ``load_causal_lm``.
        progress: tqdm bars.

    Returns:
        A JSON-ready dict: ``model``, ``window``, ``rope``, ``short``, ``long``, ``copy``,
        ``passkey``, ``ruler`` (``long``, ``passkey`` and ``ruler`` are ``None`` when not run).
    """
    config = load_config(model_dir, trust_remote_code, field="MODEL_DIR")
    vocab, window = int(config.vocab_size), int(config.max_position_embeddings)
    bos = getattr(config, "bos_token_id", None)
    distances = list(
        copy_distances
        or default_copy_distances(window, copy_span, bos is not None, copy_max_distance)
    )
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
        "ruler": None,
    }
    if long_urls is not None and long_seq_len is not None:
        long = read_batches(long_urls, long_seq_len, num_long, 1, vocab, "--long-data")
        result["long"] = _long_perplexity(model, long, long_seq_len, buckets, progress)
    gen = torch.Generator().manual_seed(seed)
    result["copy"] = _copy(model, vocab, distances, copy_span, copy_trials, gen, bos, progress)
    if tokenizer is not None:
        lengths = passkey_lengths or _fitting(
            default_passkey_lengths(passkey_window or window), tokenizer
        )
        gen = torch.Generator().manual_seed(seed)
        scores = passkey_probe(
            model, tokenizer, lengths, passkey_depths, passkey_trials, gen, progress=progress
        )
        result["passkey"] = {
            str(n): {str(d): a for d, a in row.items()} for n, row in scores.items()
        }
    if ruler_lengths:
        from longred_pl.eval.ruler import SYNTHETIC_TASKS, score_ruler

        result["ruler"] = score_ruler(
            model_dir,
            ruler_lengths,
            list(ruler_tasks or SYNTHETIC_TASKS),
            limit=ruler_limit,
            batch_size=batch_size,
            device=str(resolve_device(device)),
            seed=seed,
            model=model,
            trust_remote_code=trust_remote_code,
        )
    return result


def _copy(
    model: torch.nn.Module,
    vocab: int,
    distances: list[int],
    span: int,
    trials: int,
    gen: torch.Generator,
    bos: int | None,
    progress: bool,
) -> dict[str, Any]:
    """The copy probe's entry of ``results.json``: accuracies and the chance level 1/vocab."""
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
