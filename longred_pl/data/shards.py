"""Reading token shards safely, deterministically and resumably.

Shards are webdataset tar files (format in NOTES.md), opened with webdataset's ``gopen``
(local paths, ``file:``, ``pipe:`` commands): local files seekably, pipes as a stream.
Nothing here unpickles: only ``input_ids.u32`` members, and the ``doc_starts.u32`` member
that precedes a packed sample's ids (format_version 2), are decoded; any other is refused
by name (webdataset's ``.decode()`` is not used: its defaults unpickle ``.pkl``). A
reader asks for the document starts (``doc_starts=True``: it then gets ``(ids, starts)``
pairs) or not (plain id arrays; the ``doc_starts`` members are skipped unread).

Each reader ("consumer": one data-loader worker of one rank, see ``datamodule.py``) gets
a disjoint, balanced share of a stream: with ``S`` shards and ``C`` consumers, the first
``C * (S // C)`` shards (in the epoch's order) are dealt out whole, and every ``C``-th
sample of the remaining ``S mod C`` shards goes to each consumer. The order is a pure
function of ``(seed, stream name, epoch, consumer)``, so a stream resumes exactly.

Resume seeks: with every shard's count known (``index.json``), whole epochs and shards
are skipped by counting and the shuffle buffer is rebuilt by replaying the shuffle's
draws on input *numbers* (they do not depend on the samples); only shards holding a
sample still in the buffer, or a later one, are opened. Without counts the skipped
samples are read and dropped (replay). Bad shards are recorded (``ShardFaults``).
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import os
import sys
import tarfile
import time
import warnings
import zlib
from collections.abc import Container, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from longred_pl.errors import UserError

SAMPLE_SUFFIX = "input_ids.u32"
STARTS_SUFFIX = "doc_starts.u32"  # a packed sample's document starts, before its ids
BLOCK = tarfile.BLOCKSIZE
READ_ATTEMPTS = 3  # reads of a shard before a transient error makes it a bad shard
RETRY_BACKOFF_S = 0.5  # wait before the first retry, doubled before each further one
CORRUPT_ERRORS = (tarfile.TarError, EOFError, zlib.error)  # the bytes are wrong: no retry
TRANSIENT_ERRORS = (OSError,)  # I/O, network, a pipe's exit status: worth another read
EVERY = range(sys.maxsize)  # pick every sample of a shard

# a sample: its ids, or with ``doc_starts=True`` its ids and its document starts
Item = np.ndarray | tuple[np.ndarray, np.ndarray]
Samples = Generator[Item, None, int]  # yields samples, returns the shard's count


@dataclass(frozen=True)
class StreamConfig:
    """One stream of pre-tokenised fixed-length samples.

    Attributes:
        urls: shard URLs: a directory of ``*.tar`` files, a glob, a brace pattern
            (``data/long-{00000..00063}.tar``), ``pipe:`` commands, or a list of these.
        seq_len: tokens per sample; every sample in the shards must have this length.
        batch_size: samples per micro-batch on each rank.
        document_mask: confine attention to each document of a packed sample (batches
            then carry ``document_ids``). None: on when the shards record document
            boundaries (``longred prepare --pack``), else off; True: on, refused for
            shards without boundaries; False: off. Never applied to the s2l stream.
    """

    urls: str | list[str]
    seq_len: int
    batch_size: int
    document_mask: bool | None = None


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url  # read by a command or the network


def expand_urls(urls: str | Sequence[str], field: str = "urls") -> list[str]:
    """Expand directories, globs and brace patterns into a sorted list of shard URLs."""
    from webdataset.shardlists import expand_urls as wds_expand

    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        if is_remote(item):
            out.extend(wds_expand(item))
        elif os.path.isdir(item):
            out.extend(sorted(glob.glob(os.path.join(item, "*.tar"))))
        else:
            for url in wds_expand(item):
                matches = sorted(glob.glob(url)) if glob.has_magic(url) else [url]
                out.extend(m for m in matches if os.path.exists(m))
    if not out:
        raise UserError(
            f"{field}: {urls!r} matches no shard; point it at a directory of .tar shards "
            f"(written by `longred prepare`), a brace pattern or a pipe: command"
        )
    return out


def shard_name(url: str) -> str:
    """The shard's file name as ``index.json`` lists it (for ``pipe:``: its ``.tar`` word)."""
    if url.startswith("pipe:"):
        words = [w.strip("'\"") for w in url[5:].split() if ".tar" in w]
        return os.path.basename(words[-1]) if words else url
    return os.path.basename(url.split("?", 1)[0])


def index_url(url: str) -> str | None:
    """Where the ``index.json`` of the shard at ``url`` is: beside it (same command for pipes)."""
    if not is_remote(url):
        return os.path.join(os.path.dirname(url), "index.json")
    name = shard_name(url)
    head, found, tail = url.rpartition(name)
    return head + "index.json" + tail if found and name != url else None


def _split(name: str) -> tuple[str, str]:
    """A member's ``(key, suffix)``: ``000000012.input_ids.u32`` -> ``000000012``, ``input_ids.u32``."""
    key, _, suffix = os.path.basename(name).partition(".")
    return key, suffix


def decode_member(url: str, name: str, payload: bytes, seq_len: int) -> np.ndarray:
    """Decode one tar member into int32 token ids, refusing anything but ``input_ids.u32``."""
    if _split(name)[1] != SAMPLE_SUFFIX:
        raise UserError(
            f"shard {url}: member {name!r} is not a token sample; only '*.{SAMPLE_SUFFIX}' "
            f"(and '*.{STARTS_SUFFIX}') members are decoded (no pickles or other formats). "
            f"Re-write the shard with `longred prepare`."
        )
    if len(payload) % 4:
        raise UserError(f"shard {url}: member {name!r} has {len(payload)} bytes, not uint32s")
    ids = np.frombuffer(payload, dtype="<u4").astype(np.int32)  # int32 halves buffered memory
    if ids.shape[0] != seq_len:
        raise UserError(
            f"shard {url}: sample {name!r} has {ids.shape[0]} tokens but its stream's "
            f"seq_len is {seq_len}; set the stream's seq_len to the length the shards were "
            f"prepared with, or re-run `longred prepare --seq-len {seq_len}`"
        )
    return ids


def decode_starts(
    url: str, sample: str, head: tuple[str, bytes] | None, seq_len: int
) -> np.ndarray:
    """The document starts of sample member ``sample`` from the member before it, ``head``.

    ``head`` is ``(name, payload)`` of the ``doc_starts.u32`` member that preceded the
    sample's ids, or None. Checked: same key, whole uint32s, first 0, strictly
    increasing, inside the sample.
    """
    if head is None or _split(head[0])[0] != _split(sample)[0]:
        raise UserError(
            f"shard {url}: sample {sample!r} has no '{_split(sample)[0]}.{STARTS_SUFFIX}' member "
            f"before it, so its document boundaries are unknown; re-run `longred prepare "
            f"--pack` for this stream, or set its document_mask to false"
        )
    name, payload = head
    starts = np.frombuffer(payload, dtype="<u4").astype(np.int64)
    if len(payload) % 4 or not len(starts) or starts[0] != 0:
        why = "not uint32s" if len(payload) % 4 else "empty" if not len(starts) else "not from 0"
    elif np.any(np.diff(starts) <= 0) or starts[-1] >= seq_len:
        why = f"not strictly increasing below seq_len {seq_len}"
    else:
        return starts
    raise UserError(
        f"shard {url}: member {name!r} does not hold document starts ({why}); re-write the "
        f"shard with `longred prepare --pack`"
    )


def _payload(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else b""


def _header(tar: tarfile.TarFile, offset: int) -> tarfile.TarInfo | None:
    tar.fileobj.seek(offset)  # type: ignore[union-attr]
    try:
        return tarfile.TarInfo.fromtarfile(tar)
    except tarfile.HeaderError:
        return None


Found = list[tuple[tarfile.TarInfo | None, tarfile.TarInfo]]  # (doc_starts, ids) headers


def _jump(tar: tarfile.TarFile, wanted: list[int], seq_len: int) -> Found | None:
    """Headers of samples ``wanted`` (sorted) found by offset, or None: walk the shard.

    ``longred prepare`` writes each sample as same-size members under consecutive keys
    (``doc_starts`` then ``input_ids`` when packed), so sample ``i`` starts at ``first + i
    * stride``, checked by the key, suffix and size of its headers. A packed sample's
    ``doc_starts`` fills one 512-byte block up to 128 documents, so the stride holds
    while no sample has more; one that does makes a check fail, and the shard is walked.
    Parsing only these headers keeps rebuilding a shuffle buffer as cheap as filling one.
    """
    first, second = tar.next(), tar.next()
    key = _split(first.name)[0] if first is not None else ""
    if first is None or second is None or not key.isdigit():
        return None
    paired = _split(first.name)[1] == STARTS_SUFFIX  # format_version 2, packed
    after = tar.next() if paired else second
    if after is None:
        return None
    stride, found = after.offset - first.offset, []
    for i in wanted:
        expected = f"{int(key) + i:0{len(key)}d}"
        head, info = None, _header(tar, first.offset + i * stride)
        if paired and info is not None and _split(info.name) == (expected, STARTS_SUFFIX):
            head, info = info, _header(tar, info.offset_data + -(-info.size // BLOCK) * BLOCK)
        if (
            info is None
            or (paired and head is None)
            or info.size != 4 * seq_len
            or _split(info.name) != (expected, SAMPLE_SUFFIX)
        ):
            return None
        found.append((head, info))
    return found


def _members(
    url: str,
    seq_len: int,
    pick: Container[int],
    stop: int | None,
    progress: list[int],
    doc_starts: bool = False,
) -> Samples:
    """Samples number ``i in pick, i >= progress[0]`` of one shard, reading at most ``stop``.

    Returns the number of samples walked (``stop + 1`` when more follow ``stop``).
    ``progress[0]`` is kept at the samples fully read, so a retry can restart there. A
    few samples (``pick`` a mapping) of a local file are found by offset (``_jump``).
    With ``doc_starts`` each sample comes with its document starts (``decode_starts``).
    """
    from webdataset.gopen import gopen

    stream = gopen(url, "rb")
    seekable = getattr(stream, "seekable", lambda: False)()
    complete = False
    try:
        if seekable and isinstance(pick, Mapping) and stop is not None:
            found = yield from _by_offset(url, stream, sorted(pick), seq_len, progress, doc_starts)
            if found:
                return stop
            stream.seek(0)  # not the regular layout: walk it
        walk = _walk(url, stream, seekable, seq_len, pick, stop, progress, doc_starts)
        count, complete = yield from walk
        return count
    finally:
        try:
            stream.close()
        except OSError:
            if complete:  # e.g. a download that failed after a clean member boundary
                raise


def _by_offset(
    url: str, stream: Any, pick: list[int], seq_len: int, progress: list[int], doc_starts: bool
) -> Generator[Any, None, bool]:
    """The picked samples of a regular local shard, found by offset; False if irregular."""
    with tarfile.open(fileobj=stream, mode="r:*") as tar:
        wanted = [i for i in pick if i >= progress[0]]
        found = _jump(tar, wanted, seq_len)
        for i, (head, info) in zip(wanted, found or (), strict=False):
            ids = decode_member(url, info.name, _payload(tar, info), seq_len)
            if doc_starts:
                named = None if head is None else (head.name, _payload(tar, head))
                yield ids, decode_starts(url, info.name, named, seq_len)
            else:
                yield ids
            progress[0] = i + 1
    return found is not None


def _walk(
    url: str,
    stream: Any,
    seekable: bool,
    seq_len: int,
    pick: Container[int],
    stop: int | None,
    progress: list[int],
    doc_starts: bool,
) -> Generator[Any, None, tuple[int, bool]]:
    """The picked samples of a shard read member by member: ``(samples walked, complete)``."""
    start, count = progress[0], 0
    with tarfile.open(fileobj=stream, mode="r:*" if seekable else "r|*") as tar:
        head = None  # (name, payload) of the doc_starts member of the next sample
        for member in tar:
            if not member.isfile():
                continue
            if count == stop:
                return count + 1, False  # closed early: a pipe's exit status means nothing
            picked = count >= start and count in pick
            if _split(member.name)[1] == STARTS_SUFFIX:  # belongs to sample `count`
                head = (member.name, _payload(tar, member) if picked and doc_starts else b"")
                continue
            if picked:
                ids = decode_member(url, member.name, _payload(tar, member), seq_len)
                yield (ids, decode_starts(url, member.name, head, seq_len)) if doc_starts else ids
            head = None
            count += 1
            progress[0] = max(progress[0], count)
    return count, True


def read_shard(url: str, seq_len: int, doc_starts: bool = False) -> Iterator[Item]:
    """Yield the samples of one shard in file order (with ``doc_starts``: ``(ids, starts)``)."""
    return _members(url, seq_len, EVERY, None, [0], doc_starts)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values, identical across processes and runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ShardFaults:
    """Read errors met by one consumer in one stream: retried, recorded, replayed on resume.

    A bad shard ends where its error came, with a warning (once per shard and process) and
    a record ``{stream, consumer, epoch, shard (its position), url, ended (samples read),
    error}`` that rides on the next batch to the checkpoint. Records given back on resume
    (``known``) end that shard at the same sample in the same epoch.
    """

    def __init__(
        self,
        name: str,
        shards: Sequence[str] = (),
        consumer: int = 0,
        counts: dict[str, int] | None = None,
        known: Iterable[dict[str, Any]] = (),
    ) -> None:
        self.name, self.consumer, self.shards = name, consumer, list(shards)
        self.position = {url: i for i, url in enumerate(self.shards)}
        self.counts = counts or {}  # url -> samples listed in index.json
        mine = [r for r in known if r["stream"] == name and int(r["consumer"]) == consumer]
        self.ended = {(int(r["epoch"]), int(r["shard"])): int(r["ended"]) for r in mine}
        self.bad: dict[str, str] = {str(r["url"]): str(r["error"]) for r in mine}
        self.new: list[dict[str, Any]] = []

    def size(self, url: str, epoch: int) -> int | None:
        """Samples the shard yields in ``epoch``: a recorded fault's end, else its listed count."""
        return self.ended.get((epoch, self.position.get(url, -1)), self.counts.get(url))

    def read(
        self,
        url: str,
        seq_len: int,
        epoch: int,
        pick: Container[int] = EVERY,
        stop: int | None = None,
        doc_starts: bool = False,
    ) -> Samples:
        """Samples ``i in pick`` of ``url`` (up to ``stop``); returns the samples the shard has.

        Never past its listed count. A transient error is retried from the sample where it
        came; a corrupt shard, one still failing after ``READ_ATTEMPTS`` reads, or one with
        fewer samples than listed, is recorded as bad.
        """
        key = (epoch, self.position.get(url, -1))
        limit = self.ended.get(key, self.counts.get(url))
        bound = stop if limit is None else limit if stop is None else min(stop, limit)
        progress, attempt = [0], 1
        while True:
            try:
                count = yield from _members(url, seq_len, pick, bound, progress, doc_starts)
                break
            except CORRUPT_ERRORS as err:
                return self._record(url, epoch, progress[0], f"{type(err).__name__}: {err}")
            except TRANSIENT_ERRORS as err:
                why = f"{type(err).__name__}: {err}"
                if attempt == READ_ATTEMPTS:
                    return self._record(url, epoch, progress[0], f"{why}, {attempt} attempts")
                wait = RETRY_BACKOFF_S * 2 ** (attempt - 1)
                warnings.warn(
                    f"stream {self.name!r}: read error in {url} at sample {progress[0]} "
                    f"({why}); retry {attempt} of {READ_ATTEMPTS - 1} in {wait:g} s",
                    stacklevel=2,
                )
                time.sleep(wait)
                attempt += 1
        if stop is None and key not in self.ended and limit is not None:
            if count < limit:
                return self._record(url, epoch, count, f"{count} of {limit} samples listed")
            if count > limit and url not in self.bad:
                warnings.warn(
                    f"stream {self.name!r}: {url} holds more samples than its "
                    f"index.json lists ({limit}); only those are read",
                    stacklevel=2,
                )
        return count if bound is None else min(count, bound)

    def _record(self, url: str, epoch: int, ended: int, why: str) -> int:
        self.new.append(
            {
                "stream": self.name,
                "consumer": self.consumer,
                "epoch": epoch,
                "shard": self.position.get(url, -1),
                "url": url,
                "ended": ended,
                "error": why,
            }
        )
        if url not in self.bad:
            warnings.warn(
                f"stream {self.name!r}: skipping unreadable shard {url} ({why}) after "
                f"{ended} samples; {len(self.bad) + 1} bad shard(s) so far",
                stacklevel=3,
            )
        self.bad[url] = why
        return ended

    def take_new(self) -> list[dict[str, Any]]:
        """The records made since the last call (they ride on the next batch)."""
        new, self.new = self.new, []
        return new


@dataclass
class _Epoch:
    """One consumer's reads in one epoch: its whole shards, then every C-th remainder sample."""

    mine: list[str]
    rest: list[str]
    epoch: int
    consumer: int
    consumers: int
    seq_len: int
    faults: ShardFaults
    doc_starts: bool = False  # samples are (ids, document starts)

    def inputs(self, start: int = 0) -> Iterator[Item]:
        """The samples before the shuffle, from input number ``start`` on.

        Shards the counts place wholly before ``start`` are not opened.
        """
        f, e, c = self.faults, self.epoch, self.consumers
        for url in self.mine:
            n = f.size(url, e)
            if start and n is not None and n <= start:
                start -= n
                continue
            yield from f.read(
                url, self.seq_len, e, range(start, sys.maxsize), None, self.doc_starts
            )
            start = 0
        seen = 0  # samples of the remainder shards so far; this consumer takes every c-th
        for url in self.rest:
            first, n = (self.consumer - seen) % c, f.size(url, e)
            if start and n is not None and len(range(first, n, c)) <= start:
                start, seen = start - len(range(first, n, c)), seen + n
                continue
            seen += yield from f.read(
                url,
                self.seq_len,
                e,
                range(first + start * c, sys.maxsize, c),
                None,
                self.doc_starts,
            )
            start = 0

    @classmethod
    def plan(
        cls,
        shards: Sequence[str],
        epoch: int,
        consumer: int,
        consumers: int,
        seed: int,
        seq_len: int,
        faults: ShardFaults,
        doc_starts: bool = False,
    ) -> _Epoch:
        """The epoch's order of shards; whole ones dealt out in turn, the rest shared."""
        rng = np.random.default_rng(stable_seed(seed, faults.name, epoch))
        order = [shards[i] for i in rng.permutation(len(shards))]
        whole = len(order) // consumers * consumers
        mine, rest = order[consumer:whole:consumers], order[whole:]
        return cls(mine, rest, epoch, consumer, consumers, seq_len, faults, doc_starts)

    def layout(self) -> tuple[list[tuple[str, int, int, int]], int]:
        """``(url, first input number, first sample, step)`` per shard, and the input count."""
        rows, pos, seen = [], 0, 0
        for url in self.mine:
            rows.append((url, pos, 0, 1))
            pos += self.faults.size(url, self.epoch) or 0
        for url in self.rest:
            n = self.faults.size(url, self.epoch) or 0
            first = (self.consumer - seen) % self.consumers
            rows.append((url, pos, first, self.consumers))
            pos, seen = pos + len(range(first, n, self.consumers)), seen + n
        return rows, pos

    def fetch(self, numbers: Iterable[int]) -> dict[int, Item]:
        """The input samples with these numbers, opening only the shards that hold them."""
        rows, _ = self.layout()
        bases = [row[1] for row in rows]
        wanted: dict[int, dict[int, int]] = {}  # row -> {sample in the shard: input number}
        for i in numbers:
            r = bisect.bisect_right(bases, i) - 1
            wanted.setdefault(r, {})[rows[r][2] + (i - rows[r][1]) * rows[r][3]] = i
        out: dict[int, Item] = {}
        for r, local in wanted.items():
            url = rows[r][0]
            read = self.faults.read(
                url, self.seq_len, self.epoch, local, max(local) + 1, self.doc_starts
            )
            got = list(read)
            if len(got) < len(local):
                raise UserError(
                    f"stream {self.faults.name!r}: cannot rebuild the shuffle buffer at resume: "
                    f"{url} no longer yields the samples it gave before; restore the shard"
                )
            out.update(zip((local[k] for k in sorted(local)), got, strict=True))
        return out


def _shuffled(
    items: Iterator[Item],
    buffer: int,
    rng: np.random.Generator,
    pool: list[Item] | None = None,
) -> Iterator[Item]:
    """Buffer shuffle: each new item takes a random slot and pushes its holder out."""
    pool = [] if pool is None else pool
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        j = int(rng.integers(len(pool)))
        pool[j], item = item, pool[j]
        yield item
    for j in rng.permutation(len(pool)):
        yield pool[j]


def shuffle_state(
    total: int, buffer: int, rng: np.random.Generator, skip: int
) -> tuple[list[int], bool]:
    """Where ``_shuffled`` over ``total`` inputs stands after ``skip`` outputs, on numbers.

    The draws depend only on counts, so they are replayed on numbers, in bulk (numpy gives
    the same values as one draw at a time). Returns the numbers held (slot order) and False,
    or, once inputs ran out, those still to come (output order) and True; ``rng`` is left
    where the real shuffle would have it.
    """
    streamed = max(0, total - buffer)  # outputs made while inputs still arrive
    draws = min(skip, streamed)
    held = np.arange(min(buffer, total))
    if draws:
        slots = rng.integers(buffer, size=draws)
        last = np.full(buffer, -1)
        np.maximum.at(last, slots, np.arange(draws))  # the latest input to land in each slot
        held = np.where(last >= 0, buffer + last, held)
    if skip < streamed:
        return held.tolist(), False
    order = rng.permutation(len(held))
    return held[order[skip - streamed :]].tolist(), True


def consumer_epoch(
    shards: Sequence[str],
    seq_len: int,
    epoch: int,
    consumer: int,
    num_consumers: int,
    seed: int,
    name: str,
    shuffle_buffer: int,
    faults: ShardFaults | None = None,
    start: int = 0,
    doc_starts: bool = False,
) -> Iterator[Item]:
    """One consumer's samples of one epoch in final order, from number ``start`` on (seek)."""
    faults = faults or ShardFaults(name, shards)
    plan = _Epoch.plan(shards, epoch, consumer, num_consumers, seed, seq_len, faults, doc_starts)
    if shuffle_buffer <= 1:
        return plan.inputs(start)
    rng = np.random.default_rng(stable_seed(seed, name, epoch, consumer))
    if not start:
        return _shuffled(plan.inputs(), shuffle_buffer, rng)
    held, draining = shuffle_state(plan.layout()[1], shuffle_buffer, rng, start)
    samples = plan.fetch(held)
    if draining:
        return iter([samples[i] for i in held])
    pool = [samples[i] for i in held]
    return _shuffled(plan.inputs(shuffle_buffer + start), shuffle_buffer, rng, pool)


def _starved(
    faults: ShardFaults, shards: Sequence[str], consumer: int, num_consumers: int
) -> UserError:
    if len(faults.bad) == len(shards):
        url, why = next(iter(faults.bad.items()))
        return UserError(
            f"stream {faults.name!r}: none of its {len(shards)} shard(s) could be "
            f"read (first: {url}: {why}); re-write them with `longred prepare`"
        )
    return UserError(
        f"stream {faults.name!r}: consumer {consumer} of {num_consumers} received no sample "
        f"from {len(shards)} shard(s); write more samples or use fewer workers/ranks"
    )


def seek(
    faults: ShardFaults,
    shards: Sequence[str],
    consumer: int,
    num_consumers: int,
    seed: int,
    skip: int,
) -> tuple[int, int]:
    """``(epoch, output number)`` that ``skip`` samples of a consumer's stream lead to."""
    epoch = 0
    while True:
        total = _Epoch.plan(shards, epoch, consumer, num_consumers, seed, 0, faults).layout()[1]
        if total == 0:
            raise _starved(faults, shards, consumer, num_consumers)
        if skip < total:
            return epoch, skip
        skip, epoch = skip - total, epoch + 1


def consumer_stream(
    shards: Sequence[str],
    seq_len: int,
    consumer: int,
    num_consumers: int,
    seed: int,
    name: str,
    shuffle_buffer: int = 1000,
    skip: int = 0,
    faults: ShardFaults | None = None,
    doc_starts: bool = False,
) -> Iterator[Item]:
    """Endless samples of one consumer, epoch after epoch, after ``skip`` of them.

    A seek when every shard's count is known; else the skipped samples are read and dropped.
    With ``doc_starts`` each sample is ``(ids, document starts)``.
    """
    faults = faults or ShardFaults(name, shards)
    epoch, start = 0, 0
    if skip and all(url in faults.counts for url in shards):  # counts known: seek
        epoch, start = seek(faults, shards, consumer, num_consumers, seed, skip)
        skip = 0
    while True:
        produced = 0
        for sample in consumer_epoch(
            shards,
            seq_len,
            epoch,
            consumer,
            num_consumers,
            seed,
            name,
            shuffle_buffer,
            faults,
            start,
            doc_starts,
        ):
            produced += 1
            if skip:
                skip -= 1
                continue
            yield sample
        if produced == 0 and start == 0:
            raise _starved(faults, shards, consumer, num_consumers)
        epoch, start = epoch + 1, 0
