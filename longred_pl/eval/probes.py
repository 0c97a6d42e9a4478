"""Probes of what a context-extended model can do, from tiny random models to real LMs.

* :func:`repeat_copy_probe`: a random span, ``d`` random filler tokens, the same span
  again; teacher-forced top-1 accuracy on the second copy. It needs no tokenizer and
  no pre-training data, so it runs on any causal LM (chance is ``1 / vocab``; a model
  that can attend ``span + d`` tokens back and copy scores near 1). It measures the
  retrieval the long stream is meant to teach, as a function of distance.
* :func:`passkey_probe`: passkey retrieval (Mohtashami & Jaggi 2023, "Landmark
  Attention", arXiv 2305.16300): a 5-digit key hidden at a relative depth in filler
  text, greedy-decoded after a question at the end. Prompts are sized with the model's
  own tokenizer as they are fed (special tokens included), so any real tokenizer can fill
  the whole window. Only meaningful for real LMs.
* :func:`position_bucket_perplexity`: next-token cross-entropy by position bucket, the
  usual check that perplexity stays flat up to the extended window. Packed samples with
  document ids (:func:`document_token_nll`) are read one document at a time: positions
  restart at each document start, no label crosses a boundary, and a target's bucket is
  its position within its document.

A *model* here is anything whose ``model(input_ids=...)`` returns logits ``[B, T, V]``
(or an object with ``.logits``); Hugging Face models take the faster paths
(``logits_to_keep``, a KV cache, chunked LM-head).

Shape legend: B batch, T tokens, V vocabulary, D hidden size.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from longred_pl.errors import UserError
from longred_pl.eval.metrics import next_token_nll

MAX_LOG_PPL = 50.0  # perplexities are reported as exp(min(loss, 50)) to stay finite

__all__ = [
    "Batch",
    "batch_nll",
    "bucket_edges",
    "copy_task_ids",
    "document_token_nll",
    "forward_logits",
    "greedy_decode",
    "passkey_min_length",
    "passkey_probe",
    "passkey_prompt",
    "position_bucket_perplexity",
    "repeat_copy_probe",
    "token_nll",
]


# ----------------------------------------------------------------------------- forward
def _accepts(model: nn.Module, name: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def forward_logits(
    model: nn.Module, input_ids_BT: torch.Tensor, keep: int | None = None
) -> torch.Tensor:
    """Logits ``[B, keep or T, V]`` of the last ``keep`` positions (all when ``None``)."""
    kwargs: dict[str, Any] = {"input_ids": input_ids_BT.to(_device(model))}
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    if keep is not None and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    logits_BTV = _logits(model(**kwargs))
    return logits_BTV if keep is None else logits_BTV[:, -keep:]


_CHECKED: weakref.WeakSet = weakref.WeakSet()


def _llama_like(model: nn.Module) -> bool:
    """A HF causal LM with ``embed_tokens`` / ``layers`` / ``norm`` and an output embedding."""
    base = getattr(model, "base_model", None)
    get_head: Any = getattr(model, "get_output_embeddings", None)
    return (
        base is not None
        and base is not model
        and get_head is not None
        and get_head() is not None
        and all(hasattr(base, n) for n in ("embed_tokens", "layers", "norm"))
    )


@torch.no_grad()
def token_nll(model: nn.Module, input_ids_BT: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Per-token next-token NLL ``[B, T-1]`` (fp32), entry ``t`` for target position ``t+1``.

    For Llama-like Hugging Face causal LMs this is the library's one NLL
    (``objectives.chunked_token_nll`` inside the model's forward, ``forward.run_model``,
    with the model's logit transform): the LM head runs ``chunk_size`` positions at a time
    (``<= 0``: all at once), so ``[B, T, V]`` logits of a long sequence never exist at once.
    Other models: their full logits.
    """
    input_ids_BT = input_ids_BT.to(_device(model))
    if not _llama_like(model):
        return next_token_nll(forward_logits(model, input_ids_BT), input_ids_BT)
    return _llama_nll(model, input_ids_BT, None, chunk_size)


def _llama_nll(
    model: nn.Module,
    input_ids_BT: torch.Tensor,
    position_BT: torch.Tensor | None,
    chunk_size: int,
) -> torch.Tensor:
    """:func:`token_nll` of a Llama-like model; ``position_BT`` given: restarting positions
    of packed documents (``run_model(packed=True)``: no mask, attention within each)."""
    from longred_pl.forward import check_logit_head, logit_head, run_model
    from longred_pl.losses import chunked_token_nll

    input_ids_BT = input_ids_BT.to(_device(model))
    head = logit_head(model)
    if model not in _CHECKED:  # once per model: its logits are what the formula says
        check_logit_head(model, head, field="MODEL_DIR")
        _CHECKED.add(model)

    def nll(hidden_BTD, weight_VD, bias_V):
        return chunked_token_nll(hidden_BTD, weight_VD, input_ids_BT, chunk_size, bias_V, head)

    if position_BT is not None:
        position_BT = position_BT.to(input_ids_BT.device)
    return run_model(model, input_ids_BT, (), position_BT, nll, packed=position_BT is not None)[1]


@torch.no_grad()
def document_token_nll(
    model: nn.Module,
    input_ids_BT: torch.Tensor,
    document_ids_BT: torch.Tensor,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token NLLs of packed samples, each document read on its own.

    ``document_ids`` ``[B, T]``: each token's 0-based document index in its sample
    (non-decreasing along a row). Llama-like Hugging Face causal LMs run once per batch
    with positions restarting at each document start and no attention mask
    (``forward.run_model(packed=True)``: transformers confines attention to each
    document); other models run each document piece alone.

    Returns:
        ``(nll, kept, position)``, each ``[B, T-1]``: entry ``t`` is for target ``t+1``
        (as :func:`token_nll`); ``kept`` is False where ``t+1`` starts a document (no label
        crosses a boundary: ``losses.shift_labels``; ``nll`` there means nothing);
        ``position`` is the target's position within its document (``>= 1`` where kept).
    """
    from longred_pl.losses import IGNORE_INDEX, shift_labels
    from longred_pl.positions import document_position_ids

    document_ids_BT = document_ids_BT.to(input_ids_BT.device)
    kept_BT = shift_labels(input_ids_BT, document_ids_BT)[:, :-1] != IGNORE_INDEX
    position_BT = document_position_ids(document_ids_BT)
    if _llama_like(model):
        nll_BT = _llama_nll(model, input_ids_BT, position_BT, chunk_size).cpu()
    else:
        nll_BT = _nll_document_by_document(model, input_ids_BT, document_ids_BT)
    return nll_BT, kept_BT.cpu(), position_BT[:, 1:].cpu()


def _nll_document_by_document(
    model: nn.Module, input_ids_BT: torch.Tensor, document_ids_BT: torch.Tensor
) -> torch.Tensor:
    """``[B, T-1]`` NLLs, each document piece of each row a forward of its own (0 at starts)."""
    nll_BT = torch.zeros(input_ids_BT.shape[0], input_ids_BT.shape[1] - 1)
    for row, (ids_T, docs_T) in enumerate(zip(input_ids_BT, document_ids_BT, strict=True)):
        _, counts = torch.unique_consecutive(docs_T, return_counts=True)
        start = 0
        for n in counts.tolist():
            if n > 1:
                piece_1N = ids_T[start : start + n].unsqueeze(0).to(_device(model))
                nll_1N = next_token_nll(forward_logits(model, piece_1N), piece_1N)
                nll_BT[row, start : start + n - 1] = nll_1N[0].float().cpu()
            start += n
    return nll_BT


# ------------------------------------------------------------------------ repeat-copy
def copy_task_ids(
    trials: int,
    span: int,
    distance: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    low: int = 0,
    bos_token_id: int | None = None,
) -> torch.Tensor:
    """``[trials, (1) + 2 * span + distance]``: ``[bos] span filler span``, random ids in ``[low, vocab_size)``."""
    span_BS = torch.randint(low, vocab_size, (trials, span), generator=generator)
    filler_BD = torch.randint(low, vocab_size, (trials, distance), generator=generator)
    parts = [span_BS, filler_BD, span_BS]
    if bos_token_id is not None:
        parts.insert(0, torch.full((trials, 1), bos_token_id, dtype=torch.long))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def repeat_copy_probe(
    model: nn.Module,
    vocab_size: int,
    distances: Sequence[int],
    span: int = 16,
    trials: int = 8,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    low: int = 0,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> dict[int, float]:
    """Top-1 accuracy of copying a random span after ``d`` filler tokens, for each ``d``.

    Each trial is ``[bos] S F S`` with ``S`` a random span of ``span`` tokens and ``F``
    ``d`` random filler tokens, so each token of the second copy sits ``span + d``
    positions after its original. Teacher-forced: the model sees the whole sequence and
    the argmax of its logits at the second copy's positions is compared with the next
    token. The copy's first token is excluded (nothing before it announces the copy), so
    each trial scores ``span - 1`` tokens. Sequences are ``(1) + 2 * span + d`` long.

    Args:
        model: a causal LM (see the module docstring).
        vocab_size: ids are drawn from ``[low, vocab_size)``; chance is ``1 / (vocab_size - low)``.
        distances: filler lengths ``d``.
        span: tokens per copy (``>= 2``).
        trials: random sequences per distance.
        generator: source of the random ids (reproducible runs).
        batch_size: sequences per forward (default all ``trials``).
        low: lowest id drawn (skip special tokens of real vocabularies).
        bos_token_id: prepended when given (real LMs expect their BOS).
        progress: show a tqdm bar over the tokens to score (long distances dominate).

    Returns:
        ``{d: accuracy}`` in the order of ``distances``.
    """
    from tqdm.auto import tqdm

    if span < 2 or trials < 1 or not 0 <= low < vocab_size:
        raise UserError(
            f"repeat_copy_probe needs span >= 2, trials >= 1 and 0 <= low < vocab_size "
            f"(got span={span}, trials={trials}, low={low}, vocab_size={vocab_size})"
        )
    if any(d < 0 for d in distances):
        raise UserError(f"--copy-distances must be >= 0, got {list(distances)}")
    tokens = sum((int(bos_token_id is not None) + 2 * span + int(d)) * trials for d in distances)
    bar = tqdm(total=tokens, desc="repeat-copy", unit="tok", unit_scale=True, disable=not progress)
    scores: dict[int, float] = {}
    for distance in distances:
        bar.set_postfix(distance=int(distance))
        ids_BT = copy_task_ids(
            trials, span, int(distance), vocab_size, generator, low, bos_token_id
        )
        correct = sum(
            _copied(model, chunk_BT, span, bar) for chunk_BT in ids_BT.split(batch_size or trials)
        )
        scores[int(distance)] = correct / (trials * (span - 1))
    bar.close()
    return scores


def _copied(model: nn.Module, ids_BT: torch.Tensor, span: int, bar: Any) -> int:
    """How many of the second copy's tokens (its first excluded) the model predicts."""
    logits_BSV = forward_logits(model, ids_BT, keep=span)
    predicted_BS = logits_BSV[:, : span - 1].argmax(dim=-1).cpu()
    bar.update(ids_BT.numel())
    return int((predicted_BS == ids_BT[:, -(span - 1) :]).sum())


# ---------------------------------------------------------------------------- passkey
PASSKEY_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and "
    "memorize it. I will quiz you about the important information there."
)
PASSKEY_FILLER = (
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = " What is the pass key? The pass key is"
PASSKEY_ANSWER_TOKENS = 10  # decoded after the question: 5 digits even one token per digit


def _passkey_text(needle: str, before: int, after: int) -> str:
    return (
        PASSKEY_INTRO + PASSKEY_FILLER * before + needle + PASSKEY_FILLER * after + PASSKEY_QUESTION
    )


def passkey_prompt(tokenizer: Any, length: int, depth: float, key: int) -> str:
    """Intro, filler with the needle at relative ``depth``, question: at most ``length`` tokens.

    The length is counted as the probe feeds the prompt (``tokenizer.encode(prompt)``,
    special tokens included), so a prompt of the model's window minus the answer's tokens
    fits the window exactly, whatever the tokenizer merges across sentence boundaries. The
    filler is the largest whole number of filler sentences that fits.
    """
    if not 0.0 <= depth <= 1.0:
        raise UserError(f"--passkey-depths must be in [0, 1], got {depth}")
    needle = PASSKEY_NEEDLE.format(key=key)

    def count(text: str, special: bool = False) -> int:
        return len(tokenizer.encode(text, add_special_tokens=special))

    per_filler = max(1, count(PASSKEY_FILLER))
    repeats = max(0, (length - count(_passkey_text(needle, 0, 0), True)) // per_filler)
    while True:
        before = round(depth * repeats)
        prompt = _passkey_text(needle, before, repeats - before)
        over = count(prompt, True) - length
        if over <= 0:
            return prompt
        if repeats == 0:
            raise UserError(
                f"--passkey-lengths {length}: the passkey prompt without filler is already "
                f"{length + over} tokens with this tokenizer; use lengths above that"
            )
        repeats = max(0, repeats - max(1, math.ceil(over / per_filler)))


def passkey_min_length(tokenizer: Any) -> int:
    """Tokens of the passkey prompt with no filler (the shortest prompt there is)."""
    needle = PASSKEY_NEEDLE.format(key=99999)
    return len(tokenizer.encode(_passkey_text(needle, 0, 0)))


def _cache_argument(model: nn.Module) -> str | None:
    """Name of the KV-cache argument of ``model.forward`` (``cache`` since transformers 5.x)."""
    for name in ("cache", "past_key_values"):
        if _accepts(model, name):
            return name
    return None


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids_1T: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt; uses the model's KV cache when it has one."""
    ids_1T = input_ids_1T.to(_device(model))
    cache_name = _cache_argument(model)
    new: list[int] = []
    cache, step_ids = None, ids_1T
    for _ in range(max_new_tokens):
        if cache_name is None:
            out = model(input_ids=ids_1T)
        else:
            kwargs: dict[str, Any] = {cache_name: cache, "use_cache": True}
            if _accepts(model, "logits_to_keep"):
                kwargs["logits_to_keep"] = 1
            out = model(input_ids=step_ids, **kwargs)
            cache = getattr(out, cache_name)
        token_11 = _logits(out)[:, -1].argmax(dim=-1, keepdim=True)
        new.append(int(token_11))
        ids_1T = torch.cat([ids_1T, token_11], dim=1)
        step_ids = token_11
    return new


@torch.no_grad()
def passkey_probe(
    model: nn.Module,
    tokenizer: Any,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    trials: int = 1,
    generator: torch.Generator | None = None,
    max_new_tokens: int = PASSKEY_ANSWER_TOKENS,
    progress: bool = False,
) -> dict[int, dict[float, float]]:
    """Passkey retrieval accuracy for each prompt length and needle depth.

    A random 5-digit key is hidden at relative ``depth`` of a prompt of at most ``length``
    tokens (:func:`passkey_prompt`, counted with ``tokenizer`` itself, so any real
    tokenizer works); after "What is the pass key? The pass key is" the model decodes
    greedily ``max_new_tokens`` tokens, and the first run of digits must equal the key. A
    model's full window is probed with ``length = window - max_new_tokens``.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (``encode(text, add_special_tokens=...)``, ``decode``).
        lengths: prompt lengths in tokens (upper bounds, special tokens included).
        depths: relative needle positions in ``[0, 1]`` (0 = start of the filler).
        trials: keys per (length, depth).
        generator: source of the keys.
        max_new_tokens: tokens decoded after the question.
        progress: show a tqdm bar.

    Returns:
        ``{length: {depth: accuracy}}``.
    """
    from tqdm.auto import tqdm

    cells = [(length, depth) for length in lengths for depth in depths]
    scores: dict[int, dict[float, float]] = {int(length): {} for length in lengths}
    for length, depth in tqdm(cells, desc="passkey", unit="prompt", disable=not progress):
        hits = 0
        for _ in range(trials):
            key = int(torch.randint(10000, 100000, (1,), generator=generator))
            prompt = passkey_prompt(tokenizer, int(length), float(depth), key)
            ids_1T = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long)
            answer = tokenizer.decode(greedy_decode(model, ids_1T, max_new_tokens))
            found = re.search(r"\d+", answer)
            hits += int(found is not None and found.group() == str(key))
        scores[int(length)][float(depth)] = hits / trials
    return scores


# ------------------------------------------------------------------ position buckets
def bucket_edges(buckets: int | Sequence[int], seq_len: int) -> list[int]:
    """Edges ``e_0 < ... < e_n`` of target-position buckets ``[e_j, e_{j+1})``.

    An ``int`` gives that many equal-width buckets over ``[0, seq_len)``.
    """
    if isinstance(buckets, int):
        if not 1 <= buckets < seq_len:
            raise UserError(f"buckets must be in [1, seq_len) = [1, {seq_len}), got {buckets}")
        return [round(j * seq_len / buckets) for j in range(buckets + 1)]
    edges = [int(e) for e in buckets]
    if (
        len(edges) < 2
        or edges[0] < 0
        or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
    ):
        raise UserError(f"bucket edges must be >= 0 and strictly increasing, got {edges}")
    return edges


Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""``input_ids [B, T]``, or ``(input_ids, document_ids)`` of packed samples (both ``[B, T]``)."""


def batch_nll(
    model: nn.Module, batch: Batch, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(nll, kept, position)`` ``[B, T-1]`` of a batch (:func:`document_token_nll`).

    Without document ids every target is kept and its position is its index in the sample.
    """
    if isinstance(batch, tuple):
        return document_token_nll(model, batch[0], batch[1], chunk_size)
    nll_BT = token_nll(model, batch, chunk_size).cpu()
    position_BT = torch.arange(1, batch.shape[1]).expand_as(nll_BT)
    return nll_BT, torch.ones_like(nll_BT, dtype=torch.bool), position_BT


@torch.no_grad()
def position_bucket_perplexity(
    model: nn.Module,
    input_ids_BT: Batch | Iterable[Batch],
    buckets: int | Sequence[int] = 8,
    chunk_size: int = 4096,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Mean next-token cross-entropy and perplexity per bucket of target positions.

    The token at position ``t`` (``1 <= t < T``), predicted from positions ``0..t-1``,
    falls in the bucket ``[e_j, e_{j+1})`` that holds ``t``. A packed batch with document
    ids is read one document at a time (:func:`document_token_nll`): ``t`` is then the
    target's position within its document, and a document's first token is no target.

    Args:
        model: a causal LM.
        input_ids_BT: one batch or an iterable of batches of equal ``T``; a batch is
            ``[B, T]`` ids or ``(ids, document_ids)`` (:data:`Batch`).
        buckets: number of equal-width buckets over ``[0, T)``, or explicit edges.
        chunk_size: positions per LM-head chunk (see :func:`token_nll`).
        progress: show a tqdm bar over batches.

    Returns:
        One dict per bucket: ``start``, ``end``, ``tokens``, ``loss``, ``ppl``.
    """
    from tqdm.auto import tqdm

    one = isinstance(input_ids_BT, torch.Tensor | tuple)
    batches = iter([input_ids_BT] if one else input_ids_BT)  # type: ignore[list-item]
    first = next(batches, None)
    if first is None:
        raise ValueError("position_bucket_perplexity got no batch")
    edges = bucket_edges(buckets, (first[0] if isinstance(first, tuple) else first).shape[1])
    sums = torch.zeros(len(edges) - 1, dtype=torch.float64)
    counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
    inner = torch.tensor(edges[1:-1])
    for batch in tqdm(
        itertools.chain([first], batches), desc="position ppl", unit="batch", disable=not progress
    ):
        nll_BT, kept_BT, position_BT = batch_nll(model, batch, chunk_size)
        inside_BT = kept_BT & (position_BT >= edges[0]) & (position_BT < edges[-1])
        index_N = torch.bucketize(position_BT[inside_BT], inner, right=True)
        sums.index_add_(0, index_N, nll_BT.double()[inside_BT])
        counts.index_add_(0, index_N, torch.ones_like(index_N, dtype=torch.float64))
    rows = []
    for j in range(len(edges) - 1):
        loss = float(sums[j] / counts[j]) if counts[j] else float("nan")
        ppl = math.exp(min(loss, MAX_LOG_PPL)) if counts[j] else float("nan")
        rows.append(
            {
                "start": edges[j],
                "end": edges[j + 1],
                "tokens": int(counts[j]),
                "loss": loss,
                "ppl": ppl,
            }
        )
    return rows
