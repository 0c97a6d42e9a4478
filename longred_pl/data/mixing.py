"""Per-input filters, packing and the weighted mix of `longred prepare`.

Documents of each input pass, in this order:
1. the vocabulary check (an id outside `[0, vocab_size)` fails, naming the document);
2. `--max-doc-tokens`: a longer document is *truncated* to its first N tokens, still ending
   with EOS. Truncated, not dropped: a long document is long-stream data whatever its
   length, and the cap keeps one huge book from filling a whole stream;
3. drops, counted by reason (`DROP_REASONS`): empty (blank text, no ids); fewer than
   `--min-doc-tokens` tokens, EOS included (the long stream wants long documents, not
   concatenated short ones: docs/method.md, "up-sampled long documents"); with `--no-pack`,
   fewer than `--seq-len` tokens (they could not give one sample).

`input_samples` packs (or cuts) the kept documents of one input into `seq_len` windows;
with several inputs and packing, each input's leftover tokens go to a shared `Packer`,
so many short files still fill samples. `Mix` interleaves the inputs' *samples*: the
next one comes from the input with the smallest `(count + 1) / weight` (ties to the
earlier input), so every prefix of the output, and hence a `--max-samples` cut, holds
the weighted shares to within one sample. No random state is involved: the output is a
function of the inputs and the flags (the data module shuffles at training time).
Without weights every input weighs 1 and each is read to its end; with weights the mix
stops when the first input runs out, so the shares stay exact.

Every count (read, kept, dropped by reason, truncated, used, tokens, samples) lands in
an `InputStats`, for the summary and `index.json`.

An input read to its end that gave nothing (`empty_input`) is named: with weights it is
refused (`empty_input_error`: its share cannot be met, so the mix would stop at once,
and blame another input or claim exact shares for one sample); without weights the
output is written and the input named in a warning (`empty_input_warning`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from longred_pl.data.sources import TokenizedDocument
from longred_pl.errors import UserError

DROP_REASONS = {
    "empty": "empty",
    "min_doc_tokens": "shorter than --min-doc-tokens",
    "shorter_than_seq_len": "shorter than --seq-len (--no-pack)",
}


def check_ids(document: TokenizedDocument, vocab_size: int) -> np.ndarray:
    """The document's ids, after checking they are 1-D and inside `[0, vocab_size)`."""
    ids = document.input_ids
    if ids.ndim != 1:
        raise UserError(f"{document.name}: token ids must be 1-D, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids.max()) if ids.max() >= vocab_size else int(ids.min())
        raise UserError(
            f"{document.name}: token id {bad} is outside the vocabulary [0, {vocab_size}); "
            "was it tokenised with another tokenizer (pass that one as --tokenizer)?"
        )
    return ids


class Sample(NamedTuple):
    """One `seq_len` window: its uint32 ids, and with packing where its documents start.

    `doc_starts` (uint32, packing only, else None) are the offsets in the window of the
    first token of each document piece it holds: strictly increasing, the first always 0
    (a document cut by the previous window continues as this window's first piece). A
    document is its tokens as read, its trailing EOS included.
    """

    input_ids: np.ndarray
    doc_starts: np.ndarray | None = None


@dataclass
class InputStats:
    """Counts of one input, filled while it streams; the summary and `index.json` show them."""

    label: str
    read: int = 0
    kept: int = 0
    used: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    tokens_read: int = 0
    tokens_cut: int = 0
    tokens_kept: int = 0
    tokens_used: int = 0
    longest: int = 0
    samples: int = 0
    exhausted: bool = False

    def drop(self, reason: str) -> None:
        """Count one document dropped for `reason` (a key of `DROP_REASONS`)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


@dataclass(frozen=True)
class DocFilter:
    """Per-document filters (module docstring); `eos` stays last when a document is truncated."""

    min_doc_tokens: int = 0
    max_doc_tokens: int | None = None
    eos: int | None = None


def filter_documents(
    docs: Iterable[TokenizedDocument],
    stats: InputStats,
    rule: DocFilter,
    seq_len: int,
    pack: bool,
    vocab_size: int,
) -> Iterator[np.ndarray]:
    """The ids of the documents that pass `rule` (module docstring), counted in `stats`."""
    for doc in docs:
        ids = check_ids(doc, vocab_size)
        stats.read += 1
        stats.tokens_read += len(ids)
        stats.longest = max(stats.longest, len(ids))
        if rule.max_doc_tokens is not None and len(ids) > rule.max_doc_tokens:
            stats.truncated += 1
            stats.tokens_cut += len(ids) - rule.max_doc_tokens
            ends_eos = rule.eos is not None and ids[-1] == rule.eos
            ids = ids[: rule.max_doc_tokens]
            if ends_eos:
                ids = np.concatenate([ids[:-1], [rule.eos]])
        if not len(ids):
            stats.drop("empty")
        elif len(ids) < rule.min_doc_tokens:
            stats.drop("min_doc_tokens")
        elif not pack and len(ids) < seq_len:
            stats.drop("shorter_than_seq_len")
        else:
            stats.kept += 1
            stats.tokens_kept += len(ids)
            yield ids


class Packer:
    """Concatenates token runs and cuts `seq_len` windows, crediting tokens to their inputs.

    Each run is `[ids, stats, counted]`, one document (or what is left of one);
    `counted` records that the run's document already counts as used, so a document
    split over several samples counts once. A window's document starts are where its runs
    begin in it (`Sample.doc_starts`).
    """

    def __init__(self, seq_len: int) -> None:
        self.seq_len, self.size = seq_len, 0
        self.runs: deque[list[Any]] = deque()

    def add(self, ids: np.ndarray, stats: InputStats, counted: bool = False) -> None:
        if len(ids):
            self.runs.append([ids, stats, counted])
            self.size += len(ids)

    def take(self) -> Sample | None:
        """The next full window and its document starts, or None when fewer than `seq_len`
        tokens are held."""
        if self.size < self.seq_len:
            return None
        pieces, starts, need = [], [], self.seq_len
        while need:
            starts.append(self.seq_len - need)
            run = self.runs[0]
            ids, stats = run[0], run[1]
            n = min(need, len(ids))
            pieces.append(ids[:n])
            stats.tokens_used += n
            stats.used += not run[2]
            run[2] = True
            if n == len(ids):
                self.runs.popleft()
            else:
                run[0] = ids[n:]
            need -= n
        self.size -= self.seq_len
        return Sample(np.concatenate(pieces).astype(np.uint32), np.array(starts, np.uint32))

    def move_to(self, other: Packer | None) -> None:
        """Hand the held runs to `other` (None: drop them)."""
        if other is not None:
            for ids, stats, counted in self.runs:
                other.add(ids, stats, counted)
        self.runs.clear()
        self.size = 0


def input_samples(
    token_ids: Iterable[np.ndarray],
    stats: InputStats,
    seq_len: int,
    pack: bool,
    leftovers: Packer | None,
) -> Iterator[Sample]:
    """One input's samples; at its end its leftover tokens go to `leftovers` (pack only).

    Packed samples carry their document starts; unpacked ones none (one document each).
    """
    packer = Packer(seq_len)
    for ids in token_ids:
        packer.add(ids, stats)
        while (sample := packer.take()) is not None:
            stats.samples += 1
            yield sample if pack else Sample(sample.input_ids)
        if not pack:
            packer.move_to(None)
    stats.exhausted = True
    packer.move_to(leftovers if pack else None)


class Mix:
    """Interleaves the inputs' samples by weight (module docstring); records why it stopped."""

    def __init__(
        self,
        streams: list[Iterator[Sample]],
        weights: Sequence[float] | None,
        leftovers: Packer | None,
        labels: Sequence[str] | None = None,
    ) -> None:
        self.streams, self.leftovers = streams, leftovers
        self.labels = list(labels) if labels else [f"#{k + 1}" for k in range(len(streams))]
        self.weights = list(weights) if weights else [1.0] * len(streams)
        self.stop_at_first_end = weights is not None
        self.counts = [0] * len(streams)
        self.pooled = 0
        self.stopped = "all inputs read"

    def __iter__(self) -> Iterator[Sample]:
        active = list(range(len(self.streams)))
        while active:
            k = min(active, key=lambda i: ((self.counts[i] + 1) / self.weights[i], i))
            sample = next(self.streams[k], None)
            if sample is not None:
                self.counts[k] += 1
                yield sample
                continue
            active.remove(k)
            while self.leftovers is not None and (sample := self.leftovers.take()) is not None:
                self.pooled += 1
                yield sample
            if self.stop_at_first_end and active:
                self.stopped = (
                    f"input {k + 1} {self.labels[k]} ran out; with --weights the mix stops "
                    "there, so the shares stay exact"
                )
                return


def nothing_written_error(stats: list[InputStats], seq_len: int) -> UserError:
    """The error for an empty result: which input gave nothing, and which filter dropped it."""
    kept = sum(s.kept for s in stats)
    if kept:  # only packing keeps documents that cannot fill one sample
        tokens = sum(s.tokens_kept for s in stats)
        return UserError(
            f"no sample written: the {kept} kept document(s) hold {tokens} tokens in all, "
            f"fewer than --seq-len {seq_len}; add text or lower --seq-len"
        )
    parts = []
    for s in stats:
        reasons = ", ".join(f"{n} {DROP_REASONS[r]}" for r, n in s.dropped.items())
        parts.append(f"{s.label}: " + (f"{s.read} read, {reasons}" if s.read else "no documents"))
    dropped = {r for s in stats for r in s.dropped}
    longest = f"the longest document has {max(s.longest for s in stats)} tokens"
    fixes = []
    if "min_doc_tokens" in dropped:
        fixes.append(f"lower --min-doc-tokens ({longest})")
    if "shorter_than_seq_len" in dropped:
        fixes.append(f"lower --seq-len ({longest}) or use --pack")
    fixes = fixes or ["check the inputs and --text-field"]
    return UserError(
        f"no sample written, no document kept ({'; '.join(parts)}); {' or '.join(fixes)}"
    )


def empty_input(stats: InputStats, weighted: bool) -> bool:
    """Whether an input read to its end gave nothing: with weights no sample of its own
    (its share cannot be met), without them no token in the output."""
    return stats.exhausted and not (stats.samples if weighted else stats.tokens_used)


def _why_empty(stats: InputStats, seq_len: int) -> tuple[str, str]:
    """What an empty input held, and the fix for it."""
    if not stats.read:
        return "it holds no document", "check the file and --text-field"
    if not stats.kept:
        reasons = ", ".join(f"{n} {DROP_REASONS[r]}" for r, n in stats.dropped.items())
        if "min_doc_tokens" in stats.dropped:
            fix = f"lower --min-doc-tokens (its longest document has {stats.longest} tokens)"
        elif "shorter_than_seq_len" in stats.dropped:
            fix = f"lower --seq-len (its longest document has {stats.longest} tokens) or use --pack"
        else:
            fix = "check the file and --text-field"
        return f"{stats.read} document(s) read, none kept: {reasons}", fix
    return (
        f"its {stats.kept} kept document(s) hold {stats.tokens_kept} tokens, fewer than "
        f"--seq-len {seq_len}",
        "add text or lower --seq-len",
    )


def empty_input_error(number: int, stats: InputStats, seq_len: int) -> UserError:
    """The one-line refusal of an empty input (number from 1) when --weights is given."""
    held, fix = _why_empty(stats, seq_len)
    return UserError(
        f"--weights: input {number} {stats.label} gave no sample ({held}), so its share "
        f"cannot be met; {fix}, or drop the input and its --weights value"
    )


def empty_input_warning(number: int, stats: InputStats, seq_len: int) -> str:
    """The one-line warning for an empty input (number from 1) without --weights."""
    held, fix = _why_empty(stats, seq_len)
    return (
        f"[longred prepare] warning: input {number} {stats.label} gave nothing to the shards "
        f"({held}); {fix}, or drop it"
    )
