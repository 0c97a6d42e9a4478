"""The study's long stream: plays split into short documents, shuffled, packed with boundaries.

Pure pieces (no model, no tokenizer): :func:`split_text` cuts a text into short documents
at blank lines, :func:`short_documents` does it for every play and shuffles the result,
:func:`pack_documents` writes tokenised documents as packed shards that record their
document starts and says what they hold. The library is imported only where it is used.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHUFFLE_SEED = 0  # the order of the short documents: fixed, so every run reads the same shards


def text_units(text: str, max_chars: int) -> Iterator[str]:
    """The blank-line-separated blocks of ``text`` (speeches, directions, headings); a block
    longer than ``max_chars`` comes as runs of its lines (a single longer line stays whole)."""
    for block in text.split("\n\n"):
        block = block.strip("\n")
        if len(block) <= max_chars:
            if block:
                yield block
            continue
        run: list[str] = []
        for line in block.split("\n"):
            if run and len("\n".join([*run, line])) > max_chars:
                yield "\n".join(run)
                run = []
            run.append(line)
        yield "\n".join(run)


def split_text(text: str, max_chars: int) -> list[str]:
    """Consecutive units of ``text`` grouped greedily into pieces of at most ``max_chars``
    characters (blank lines between units), in order; joined by blank lines they give the
    text back, up to blank-line runs and the text's own ends."""
    if max_chars <= 0:
        raise ValueError(f"max_chars must be > 0, got {max_chars}")
    pieces: list[str] = []
    group: list[str] = []
    for unit in text_units(text, max_chars):
        if group and len("\n\n".join([*group, unit])) > max_chars:
            pieces.append("\n\n".join(group))
            group = []
        group.append(unit)
    if group:
        pieces.append("\n\n".join(group))
    return pieces


def short_documents(plays: Iterable[Any], max_chars: int, seed: int = SHUFFLE_SEED) -> list[Any]:
    """Every play split into short documents (``<play>#<n>``), shuffled with ``seed``: a
    document's neighbours in the packed stream come from elsewhere, as in a web corpus."""
    from longred_pl.data.documents import Document

    docs = [
        Document(f"{play.name}#{n}", piece + "\n")
        for play in plays
        for n, piece in enumerate(split_text(play.text, max_chars))
    ]
    random.Random(seed).shuffle(docs)
    return docs


def pack_documents(
    token_docs: Sequence[np.ndarray], out: Path, seq_len: int, vocab_size: int, **index: Any
) -> dict[str, Any]:
    """Pack tokenised documents into ``seq_len``-token shards that record the document starts
    (``write_shards(pack=True)``, what ``longred prepare --pack`` writes); their index and the
    figures the report gives: documents, their token lengths, documents per sample."""
    from longred_pl.data.prepare import write_shards
    from longred_pl.data.shards import expand_urls, read_shard

    written = write_shards(
        token_docs, out, seq_len, pack=True, vocab_size=vocab_size, overwrite=True, **index
    )
    per_sample = [
        len(starts)
        for url in expand_urls(str(out))
        for _, starts in read_shard(url, seq_len, doc_starts=True)
    ]
    lengths = sorted(len(doc) for doc in token_docs)
    return {
        "num_samples": written["num_samples"],
        "document_boundaries": written["document_boundaries"],
        "documents": len(lengths),
        "document_tokens": {
            "mean": round(statistics.mean(lengths), 1),
            "median": statistics.median(lengths),
            "p90": lengths[int(0.9 * (len(lengths) - 1))],
            "max": lengths[-1],
        },
        "documents_per_sample": round(statistics.mean(per_sample), 2),
    }
