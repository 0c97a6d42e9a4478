"""Reading token shards safely and deterministically.

Shards are webdataset tar files (format in NOTES.md: one ``<key>.input_ids.u32`` member
per sample). They are opened with webdataset's ``gopen`` (local paths, ``file:``,
``pipe:`` commands for object stores) and read as a tar *stream*, member by member.

Nothing here unpickles: the only member suffix decoded is ``input_ids.u32`` (raw
little-endian uint32); any other member is refused with an error that names it. That
is why webdataset's ``.decode()`` is not used (its defaults unpickle ``.pkl``/``.pyd``).

Each reader ("consumer": one data-loader worker of one rank, see ``datamodule.py``)
gets a disjoint, balanced share of a stream: with ``S`` shards and ``C`` consumers, the
first ``C * (S // C)`` shards (in the epoch's order) are dealt out whole, and every
``C``-th sample of the remaining ``S mod C`` shards goes to each consumer (only those few
shards are read by every consumer). The order is a pure
function of ``(seed, stream name, epoch, consumer)``, so a stream can be replayed and
resumed exactly.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import tarfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_SUFFIX = "input_ids.u32"


@dataclass(frozen=True)
class StreamConfig:
    """One stream of pre-tokenised fixed-length samples.

    Attributes:
        urls: shard URLs: a directory of ``*.tar`` files, a glob, a brace pattern
            (``data/long-{00000..00063}.tar``), ``pipe:`` commands, or a list of these.
        seq_len: tokens per sample; every sample in the shards must have this length.
        batch_size: samples per micro-batch on each rank.
    """

    urls: str | list[str]
    seq_len: int
    batch_size: int


def expand_urls(urls: str | Sequence[str], field: str = "urls") -> list[str]:
    """Expand directories, globs and brace patterns into a sorted list of shard URLs."""
    from webdataset.shardlists import expand_urls as wds_expand

    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        if item.startswith("pipe:") or "://" in item:
            out.extend(wds_expand(item))
        elif os.path.isdir(item):
            out.extend(sorted(glob.glob(os.path.join(item, "*.tar"))))
        else:
            for url in wds_expand(item):
                matches = sorted(glob.glob(url)) if glob.has_magic(url) else [url]
                out.extend(m for m in matches if os.path.exists(m))
    if not out:
        raise ValueError(
            f"{field}: {urls!r} matches no shard; point it at a directory of .tar shards "
            f"(written by `longred prepare`), a brace pattern or a pipe: command"
        )
    return out


def decode_member(url: str, name: str, payload: bytes, seq_len: int) -> np.ndarray:
    """Decode one tar member into int32 token ids, refusing anything but ``input_ids.u32``."""
    base = os.path.basename(name)
    suffix = base.split(".", 1)[1] if "." in base else ""
    if suffix != SAMPLE_SUFFIX:
        raise ValueError(
            f"shard {url}: member {name!r} is not a token sample; only '*.{SAMPLE_SUFFIX}' "
            f"members are decoded (no pickles or other formats). Re-write the shard with "
            f"`longred prepare`."
        )
    if len(payload) % 4:
        raise ValueError(f"shard {url}: member {name!r} has {len(payload)} bytes, not uint32s")
    ids = np.frombuffer(payload, dtype="<u4").astype(np.int32)  # int32 halves buffered memory
    if ids.shape[0] != seq_len:
        raise ValueError(
            f"shard {url}: sample {name!r} has {ids.shape[0]} tokens but its stream's "
            f"seq_len is {seq_len}; set the stream's seq_len to the length the shards were "
            f"prepared with, or re-run `longred prepare --seq-len {seq_len}`"
        )
    return ids


def read_shard(url: str, seq_len: int) -> Iterator[np.ndarray]:
    """Yield the samples of one shard in file order."""
    from webdataset.gopen import gopen

    stream = gopen(url, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                yield decode_member(url, member.name, handle.read(), seq_len)
    finally:
        stream.close()


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values, identical across processes and runs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _shuffled(items: Iterator[np.ndarray], buffer: int, rng: np.random.Generator):
    pool: list[np.ndarray] = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        j = int(rng.integers(len(pool)))
        pool[j], item = item, pool[j]
        yield item
    order = rng.permutation(len(pool))
    for j in order:
        yield pool[j]


class ShardFaults:
    """Shards of a stream that could not be read (corrupt or truncated tar files).

    A bad shard is skipped with a warning that names it, once per shard and process; the
    count travels with each batch (``bad_shards``) so the trainer can log it.
    """

    def __init__(self, name: str, expected: dict[str, int] | None = None) -> None:
        self.name = name
        self.expected = expected or {}  # shard file name -> samples, from index.json
        self.bad: dict[str, str] = {}

    def read(self, url: str, seq_len: int) -> Iterator[np.ndarray]:
        """The samples of ``url``; a read error ends the shard early and is recorded.

        A tar stream cut at a member boundary reads as a shorter, valid archive; when the
        shard's sample count is known (``index.json``), a shortfall is a fault too.
        """
        count = 0
        try:
            for sample in read_shard(url, seq_len):
                count += 1
                yield sample
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            self._record(url, f"{type(err).__name__}: {err}")
            return
        want = self.expected.get(os.path.basename(url))
        if want is not None and count < want:
            self._record(url, f"truncated: {count} of {want} samples listed in index.json")

    def _record(self, url: str, why: str) -> None:
        if url not in self.bad:
            warnings.warn(
                f"stream {self.name!r}: skipping unreadable shard {url} ({why}); "
                f"{len(self.bad) + 1} bad shard(s) so far",
                stacklevel=3,
            )
        self.bad[url] = why


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
) -> Iterator[np.ndarray]:
    """The samples one consumer reads in one epoch of a stream, in their final order."""
    read = (faults or ShardFaults(name)).read
    rng = np.random.default_rng(stable_seed(seed, name, epoch))
    order = [shards[i] for i in rng.permutation(len(shards))]
    whole = len(order) // num_consumers * num_consumers
    mine = order[consumer:whole:num_consumers]
    rest = (s for url in order[whole:] for s in read(url, seq_len))
    samples = itertools.chain(
        (s for url in mine for s in read(url, seq_len)),
        (s for i, s in enumerate(rest) if i % num_consumers == consumer),
    )
    if shuffle_buffer <= 1:
        return samples
    local = np.random.default_rng(stable_seed(seed, name, epoch, consumer))
    return _shuffled(samples, shuffle_buffer, local)


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
) -> Iterator[np.ndarray]:
    """Endless samples of one consumer, epoch after epoch, after skipping ``skip`` of them."""
    faults = faults or ShardFaults(name)
    epoch = 0
    while True:
        produced = 0
        for sample in consumer_epoch(
            shards, seq_len, epoch, consumer, num_consumers, seed, name, shuffle_buffer, faults
        ):
            produced += 1
            if skip:
                skip -= 1
                continue
            yield sample
        if produced == 0 and len(faults.bad) == len(shards):
            first = next(iter(faults.bad.items()))
            raise ValueError(
                f"stream {name!r}: none of its {len(shards)} shard(s) could be read "
                f"(first: {first[0]}: {first[1]}); re-write them with `longred prepare`"
            )
        if produced == 0:
            raise ValueError(
                f"stream {name!r}: consumer {consumer} of {num_consumers} received no sample "
                f"from {len(shards)} shard(s); write more samples or use fewer workers/ranks"
            )
        epoch += 1
