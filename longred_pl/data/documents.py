"""A document before tokenisation, and the train/val splits of the embedded corpora.

Every text input (a user's files, an embedded corpus of ``longred_pl.demo.corpora``) becomes a
sequence of :class:`Document`; ``longred prepare`` tokenises them into shards.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from longred_pl.errors import UserError

Split = Literal["train", "val", "all"]
SPLITS: tuple[str, ...] = ("train", "val", "all")


@dataclass(frozen=True)
class Document:
    """One document: a stable `name` (for errors and provenance) and its text."""

    name: str
    text: str


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"split (--split) must be one of {list(SPLITS)}, got {split!r}")


def cap_documents(documents: Iterable[Document], max_bytes: int | None) -> list[Document]:
    """The leading documents whose UTF-8 sizes add up to at most `max_bytes` (all if None).

    The document that crosses the cap is cut at a line boundary, so a small cap still
    yields text.
    """
    if max_bytes is None:
        return list(documents)
    if max_bytes <= 0:
        raise UserError(f"max_bytes must be > 0 or None, got {max_bytes}")
    kept, budget = [], max_bytes
    for document in documents:
        data = document.text.encode("utf-8")
        if len(data) > budget:
            head = data[:budget].decode("utf-8", errors="ignore").rpartition("\n")[0]
            if head:
                kept.append(Document(document.name, head + "\n"))
            break
        kept.append(document)
        budget -= len(data)
    return kept
