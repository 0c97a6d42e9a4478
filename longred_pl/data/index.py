"""``index.json`` of a shard directory: the sample counts the streams seek with.

``longred prepare`` writes ``index.json`` beside the shards (format in NOTES.md). It is the
truth for counts: a shard it lists that is missing on disk, and a ``.tar`` beside it that it
does not list, are refused at data-module construction; for ``pipe:`` and other remote
URLs the index is fetched with the same command (shard name swapped for ``index.json``),
and without one the counts are unknown (a resume then replays, with one warning).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from typing import Any

from longred_pl.data.shards import expand_urls, index_url, is_remote, shard_name
from longred_pl.errors import UserError


@dataclass(frozen=True)
class StreamIndex:
    """A stream's shards and what their ``index.json`` files say about them."""

    shards: list[str]
    counts: dict[str, int]  # url -> samples, for the shards an index lists
    vocab_size: int | None
    tokenizer: str | None
    seq_len: int | None = None  # tokens per sample, when every index read records one
    # every shard's index.json says its packed samples record their document starts
    # (format_version 2, `longred prepare --pack`); False for older shards and unknown ones
    document_boundaries: bool = False
    unpacked: bool = False  # every shard's index.json says `"pack": false` (one document each)

    @property
    def total(self) -> int | None:
        """Samples in the stream, when every shard's count is known."""
        return sum(self.counts[url] for url in self.shards) if self.complete else None

    @property
    def complete(self) -> bool:
        """Every shard's count is known: resume seeks instead of replaying."""
        return all(url in self.counts for url in self.shards)


@functools.lru_cache(maxsize=64)
def _remote_index(url: str) -> dict[str, Any] | None:
    """An ``index.json`` read through a ``pipe:`` command or URL (once per process)."""
    from webdataset.gopen import gopen

    try:
        with gopen(url, "rb") as handle:
            return json.loads(handle.read())
    except (OSError, ValueError):
        return None  # counts unknown: resume replays (and says so)


def _load_index(where: str) -> dict[str, Any] | None:
    if is_remote(where):
        return _remote_index(where)
    if not os.path.isfile(where):
        return None
    with open(where) as handle:
        return json.load(handle)


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _check_listing(where: str, listed: dict[str, int], group: list[str], field: str) -> None:
    """Local shards must match their index: none listed and gone, none present and unlisted.

    An unlisted shard is refused rather than read: its tokenizer, length and count were
    not recorded (nothing vouches for it) and resume could not seek over it.
    """
    folder = os.path.dirname(where)
    missing = sorted(n for n in listed if not os.path.exists(os.path.join(folder, n)))
    if missing:
        raise UserError(
            f"{field}: {where} lists {len(missing)} shard(s) missing from {folder}: "
            f"{_names(missing)}; restore them, or re-run `longred prepare` for this stream"
        )
    unlisted = sorted(shard_name(u) for u in group if shard_name(u) not in listed)
    if unlisted:
        raise UserError(
            f"{field}: {_names(unlisted)} in {folder} not listed in its index.json (left by "
            f"another run?); remove them, or re-run `longred prepare` for this stream"
        )


def stream_index(urls: str | list[str], field: str) -> StreamIndex:
    """Expand ``urls`` and read the ``index.json`` beside each group of shards."""
    shards = expand_urls(urls, field)
    groups: dict[str, list[str]] = {}
    for url in shards:
        where = index_url(url)
        if where is not None:
            groups.setdefault(where, []).append(url)
    counts: dict[str, int] = {}
    vocab, tokenizer, lengths = None, None, {}
    read = []  # the index of each group, None where there is none
    for where, group in groups.items():
        index = _load_index(where)
        read.append(index)
        if index is None:
            continue
        listed = {s["name"]: int(s["num_samples"]) for s in index.get("shards", [])}
        if not is_remote(where):
            _check_listing(where, listed, group, field)
        counts.update({u: listed[shard_name(u)] for u in group if shard_name(u) in listed})
        vocab = max(vocab or 0, int(index.get("vocab_size", 0))) or None
        tokenizer = tokenizer or index.get("tokenizer")
        if index.get("seq_len") is not None:
            lengths[where] = int(index["seq_len"])
    if len(set(lengths.values())) > 1:
        found = ", ".join(f"{n} ({w})" for w, n in lengths.items())
        raise UserError(f"{field}: the shards mix sample lengths {found}; give one length")
    seq_len = next(iter(lengths.values())) if len(lengths) == len(groups) and groups else None
    every = bool(read) and all(index_url(u) is not None for u in shards)
    boundaries = every and all(i is not None and i.get("document_boundaries") for i in read)
    unpacked = every and all(i is not None and i.get("pack") is False for i in read)
    return StreamIndex(shards, counts, vocab, tokenizer, seq_len, boundaries, unpacked)
