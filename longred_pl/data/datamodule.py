"""``MixedLengthDataModule``: the long, short and s2l streams, one micro-batch per step.

Each training micro-step ``n`` (counted over the whole run) has a kind given by the
schedule (``schedule.py``) and gets ``batch_size`` samples of that kind's stream. With
``W`` data-loader workers, PyTorch takes batch ``i`` of an iterator from worker
``i % W``; the worker that serves micro-step ``n`` therefore serves the residue class
``n % W`` and reads that class's own share of each stream (``shards.consumer_stream``).
Shares are disjoint across ranks and residue classes, so no sample is read twice within
an epoch of a stream.

Exact resume: each batch carries its micro-step number ``index``; the data module
records the last one the trainer actually used (``on_before_batch_transfer``) and saves
it in the checkpoint (``state_dict``). On resume every share skips exactly the samples
it had served (a seek when ``index.json`` gives the shards' counts, see ``shards.py``),
so the run continues with the samples it would have seen. This does not depend on
Lightning's own loader-state restore (see Lightning issue #20550).

Document masks (``StreamConfig.document_mask``, resolved by ``document_mask``): a stream
whose masks are on reads each sample with its document starts (``longred prepare --pack``
records them) and its batches carry ``document_ids`` [B, L] (LongTensor): the 0-based
index of each token's document within its sample, non-decreasing along each row. The
key is absent when masks are off. The s2l stream never has them.

Bad shards: faults are met inside the loader workers, each rank reading its own shards.
Each batch carries the fault records made while it was assembled (``faults``); the data
module keeps those of the batches the trainer used, gathers every rank's at checkpoint
time (``state_dict``, called on all ranks) and hands them back to the streams on resume.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from longred_pl.data.index import StreamIndex, stream_index
from longred_pl.data.schedule import KINDS, build_schedule, count_before, kind_at
from longred_pl.data.shards import (
    Item,
    ShardFaults,
    StreamConfig,
    consumer_stream,
    read_shard,
)
from longred_pl.errors import UserError
from longred_pl.preemption import ignore_stop_signals

S2L_READING = "the published recipe reads an s2l sample at skipped positions as one text"


def document_mask(name: str, cfg: StreamConfig, index: StreamIndex) -> tuple[bool, str]:
    """Whether stream ``name`` (``long``, ``val_short``, ...) reads document masks, and why.

    Returns ``(on, line)``, the line said at setup (``data.long: document masks on (...)``).
    ``cfg.document_mask`` None follows the shards (``index.json``'s ``document_boundaries``);
    True for shards without boundaries, or for s2l, is a ``UserError``.
    """
    field, setting = f"data.{name}.document_mask", cfg.document_mask
    if name == "s2l":
        if setting:
            raise UserError(
                f"{field}: true is not supported: document masks are not applied to the s2l "
                f"stream ({S2L_READING}); set {field} to false or leave it unset"
            )
        return False, f"data.{name}: document masks off for s2l ({S2L_READING})"
    if setting is False:
        return False, f"data.{name}: document masks off ({field}: false)"
    if index.document_boundaries:
        why = f"{field}: true" if setting else "shards record document boundaries"
        return True, f"data.{name}: document masks on ({why})"
    why = (
        "written with --no-pack: one document per sample"
        if index.unpacked
        else "written before format_version 2, or without an index.json"
    )
    if setting:
        raise UserError(
            f"{field}: true, but the shards of data.{name}.urls record no document "
            f"boundaries ({why}); re-run `longred prepare --pack` for this stream, or set "
            f"{field} to false"
        )
    return False, f"data.{name}: document masks off (shards record no document boundaries: {why})"


def document_ids(starts: Sequence[np.ndarray], seq_len: int) -> torch.Tensor:
    """``[B, seq_len]`` LongTensor: each token's 0-based document index in its sample."""
    out = np.zeros((len(starts), seq_len), dtype=np.int64)
    for row, first in zip(out, starts, strict=True):
        row[first[1:]] = 1  # the first start is 0: document 0
    return torch.from_numpy(np.cumsum(out, axis=1))


def collate(rows: Sequence[Item], masked: bool) -> dict[str, torch.Tensor]:
    """``input_ids`` [B, L] of the samples, and ``document_ids`` when ``masked``."""
    if not masked:
        return {"input_ids": torch.from_numpy(np.stack(rows).astype(np.int64))}
    ids = np.stack([row[0] for row in rows]).astype(np.int64)
    return {
        "input_ids": torch.from_numpy(ids),
        "document_ids": document_ids([row[1] for row in rows], ids.shape[1]),
    }


class MixedLengthStream(IterableDataset):
    """Endless micro-batches ``{"kind", "input_ids", "index", "bad_shards", "faults"}`` for one rank.

    A stream with document masks (``document_mask``) adds ``document_ids``.
    """

    def __init__(
        self,
        streams: Mapping[str, StreamConfig],
        schedule: list[str],
        rank: int,
        world_size: int,
        num_workers: int,
        seed: int,
        shuffle_buffer: int,
        start: int = 0,
        vocab_size: int | None = None,
        faults: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.index = {k: stream_index(c.urls, f"data.{k}.urls") for k, c in streams.items()}
        self.streams = dict(streams)
        self.schedule = schedule
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(1, num_workers)
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.start = start
        self.vocab_size = vocab_size
        self.faults = list(faults)  # fault records from the checkpoint (all ranks)
        self.masked = {k: document_mask(k, c, self.index[k])[0] for k, c in streams.items()}
        replay = [k for k, index in self.index.items() if not index.complete]
        if start and replay:
            warnings.warn(
                f"{', '.join(f'data.{k}.urls' for k in replay)}: sample counts unknown (no "
                f"index.json listing every shard), so resuming at micro-step {start} reads "
                f"and drops every sample already served; shards written by `longred "
                f"prepare` (with their index.json) resume by seeking",
                stacklevel=2,
            )

    def _stream(self, kind: str, residue: int, faults: ShardFaults) -> Iterator[Item]:
        cfg = self.streams[kind]
        served = count_before(self.schedule, kind, self.start, residue, self.num_workers)
        return consumer_stream(
            self.index[kind].shards,
            cfg.seq_len,
            consumer=self.rank * self.num_workers + residue,
            num_consumers=self.world_size * self.num_workers,
            seed=self.seed,
            name=kind,
            shuffle_buffer=self.shuffle_buffer,
            skip=served * cfg.batch_size,
            faults=faults,
            doc_starts=self.masked[kind],
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError("MixedLengthStream built for a different number of workers")
        first = self.start + worker
        residue = first % self.num_workers
        consumer = self.rank * self.num_workers + residue
        faults = {
            k: ShardFaults(k, index.shards, consumer, index.counts, self.faults)
            for k, index in self.index.items()
        }
        iters = {k: self._stream(k, residue, faults[k]) for k in self.streams}
        n = first
        while True:
            kind = kind_at(self.schedule, n)
            rows = [next(iters[kind]) for _ in range(self.streams[kind].batch_size)]
            batch = collate(rows, self.masked[kind])
            if self.vocab_size is not None:
                check_vocab(batch["input_ids"], self.vocab_size, kind)
            yield {
                "kind": kind,
                **batch,
                "index": n,
                "bad_shards": sum(len(f.bad) for f in faults.values()),
                "faults": [r for f in faults.values() for r in f.take_new()],
            }
            n += self.num_workers


def check_vocab(input_ids: torch.Tensor, vocab_size: int, kind: str) -> None:
    """Token ids must index the model's embedding table."""
    top = int(input_ids.max())
    if top >= vocab_size:
        raise UserError(
            f"data.{kind}: token id {top} is >= the model's vocabulary size {vocab_size}; the "
            f"shards were tokenised with another tokenizer: re-run `longred prepare` with the "
            f"teacher's tokenizer"
        )


class FixedStream(IterableDataset):
    """A finite, ordered pass over validation shards: ``{"kind", "input_ids"}`` batches
    (and ``document_ids`` with document masks, see ``document_mask``).

    Every rank runs the same number of batches (under FSDP each forward is a collective,
    so one batch more on one rank hangs the others): sample ``i`` goes to rank
    ``i % world_size``, and a batch is emitted only once every rank holds a full one; the
    last fewer than ``world_size * batch_size`` samples are dropped. Every rank reads the
    whole stream, so all ranks reach the same count without communicating.

    With ``max_batches`` set and the sample count known (``index.json``), the samples read
    are spread evenly over the whole stream (every ``stride``-th one), so a capped
    validation covers every held-out document rather than the first one only.
    """

    def __init__(
        self, kind: str, cfg: StreamConfig, rank: int, world_size: int, max_batches: int | None
    ) -> None:
        self.kind, self.cfg, self.field = kind, cfg, f"data.val_{kind}"
        index = stream_index(cfg.urls, f"{self.field}.urls")
        self.shards = index.shards
        self.masked = document_mask(f"val_{kind}", cfg, index)[0]
        self.rank, self.world_size, self.max_batches = rank, world_size, max_batches
        total = sum(index.counts.values()) if index.complete else None
        wanted = None if max_batches is None else max_batches * cfg.batch_size * world_size
        self.stride = max(1, total // wanted) if total and wanted else 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows: list[Item] = []
        emitted, seen = 0, 0
        step = self.cfg.batch_size * self.world_size  # samples per batch over all ranks
        length, masked = self.cfg.seq_len, self.masked
        samples = (s for url in self.shards for s in read_shard(url, length, masked))
        picked = (s for i, s in enumerate(samples) if i % self.stride == 0)
        for seen, sample in enumerate(picked, start=1):
            if (seen - 1) % self.world_size == self.rank:
                rows.append(sample)
            if seen % step == 0:  # every rank now holds a full batch
                yield {"kind": self.kind, **collate(rows, masked)}
                rows, emitted = [], emitted + 1
                if self.max_batches is not None and emitted >= self.max_batches:
                    return
        if emitted == 0:
            raise UserError(
                f"{self.field}: {seen} held-out sample(s) fill no validation batch of "
                f"{self.cfg.batch_size} on each of {self.world_size} rank(s); lower "
                f"{self.field}.batch_size or add samples"
            )


def fault_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return record["stream"], int(record["consumer"]), int(record["epoch"]), int(record["shard"])


def gather_records(strategy: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's records on every rank: a collective (two ``all_gather`` of JSON bytes).

    Bytes, not pickles: ``strategy.all_gather`` takes tensors on every strategy.
    """
    device = strategy.root_device
    data = torch.frombuffer(bytearray(json.dumps(records).encode()), dtype=torch.uint8)
    sizes = strategy.all_gather(torch.tensor([data.numel()], device=device)).reshape(-1)
    padded = torch.zeros(int(sizes.max()), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data.to(device)
    every = strategy.all_gather(padded).reshape(len(sizes), -1).cpu()
    out: list[dict[str, Any]] = []
    for row, size in zip(every, sizes.tolist(), strict=True):
        out.extend(json.loads(bytes(row[: int(size)].tolist())))
    return out


class MixedLengthDataModule(L.LightningDataModule):
    """Streams the long, short and s2l corpora for LongReD and its baselines.

    Args:
        long: the long stream (``L_long``), samples of the target window.
        short: the short stream (``L_short``), e.g. 1/8 of the original window.
        s2l: the short-to-long stream (``L_s2l``), samples of the original window.
        val_short: held-out short texts for ``val/`` perplexity of student and teacher.
        val_long: held-out long texts for the student's ``val/`` long perplexity.
        schedule: the kind of each micro-step within a period; default the published
            16-step pattern (long at even steps, s2l at 1 and 3, short at the others).
        ratios: instead of ``schedule``, micro-steps per period for each kind, spread evenly.
        num_workers: data-loader worker processes per rank (0 reads in the main process).
        seed: seeds the order of every stream; same seed, same samples.
        shuffle_buffer: samples held for the within-stream shuffle (1 = file order).
        val_batches: at most this many batches per validation stream (every rank runs
            the same number; a remainder under ``ranks x batch_size`` samples is dropped).
    """

    def __init__(
        self,
        long: StreamConfig | None = None,
        short: StreamConfig | None = None,
        s2l: StreamConfig | None = None,
        val_short: StreamConfig | None = None,
        val_long: StreamConfig | None = None,
        schedule: list[str] | None = None,
        ratios: dict[str, int] | None = None,
        num_workers: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        val_batches: int | None = 8,
    ) -> None:
        super().__init__()
        self.streams = {k: c for k, c in (("long", long), ("short", short), ("s2l", s2l)) if c}
        self.val_streams = {
            k: c for k, c in (("short", val_short), ("long", val_long)) if c is not None
        }
        self.schedule = build_schedule(schedule, ratios)
        for kind in sorted(set(self.schedule)):
            if kind not in self.streams:
                raise UserError(
                    f"data.schedule uses the {kind!r} stream but data.{kind} is not set; "
                    f"give data.{kind} (urls, seq_len, batch_size) or drop {kind!r} from the schedule"
                )
        for name, cfg in self._all_streams():
            if cfg.batch_size <= 0:
                raise UserError(f"data.{name}.batch_size must be >= 1, got {cfg.batch_size}")
            if cfg.seq_len <= 1:
                raise UserError(f"data.{name}.seq_len must be >= 2, got {cfg.seq_len}")
        if num_workers < 0:
            raise UserError(f"data.num_workers must be >= 0, got {num_workers}")
        self.num_workers, self.seed = num_workers, seed
        self.shuffle_buffer, self.val_batches = shuffle_buffer, val_batches
        self.consumed = 0  # micro-steps the trainer has used (the resume cursor)
        self.faults: list[dict[str, Any]] = []  # fault records of the batches used, all ranks
        self.vocab_size: int | None = None  # set by check_model; ids are checked against it
        # fail now, not after loading models: URLs that match nothing, shards gone or unlisted
        self.index = {n: stream_index(c.urls, f"data.{n}.urls") for n, c in self._all_streams()}
        masks = {n: document_mask(n, c, self.index[n]) for n, c in self._all_streams()}
        # stream name (long, short, s2l, val_short, val_long) -> batches carry document_ids
        self.document_masks = {n: on for n, (on, _) in masks.items()}
        self.document_mask_lines = [line for _, line in masks.values()]

    def setup(self, stage: str) -> None:
        """Says, one line per stream, whether its batches carry document masks and why."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.is_global_zero:
            for line in self.document_mask_lines:
                print(f"[longred] {line}", file=sys.stderr)

    def _all_streams(self) -> list[tuple[str, StreamConfig]]:
        vals = [("val_" + k, c) for k, c in self.val_streams.items()]
        return [*self.streams.items(), *vals]

    @property
    def bad_shards(self) -> int:
        """Distinct bad shards met by this rank's readers (``train/bad_shards``)."""
        rank, _ = self._rank_world()
        workers = max(1, self.num_workers)
        mine = {(r["stream"], r["shard"]) for r in self.faults if r["consumer"] // workers == rank}
        return len(mine)

    def check_model(
        self, teacher_window: int, target_length: int, vocab_size: int, method: str
    ) -> None:
        """Errors for lengths or vocabularies that do not fit the models (see ``LongReDModule.setup``)."""
        limits = {
            "long": target_length,
            "val_long": target_length,
            "short": teacher_window,
            "s2l": teacher_window,
            "val_short": teacher_window,
        }
        from longred_pl.methods import get_method

        if not get_method(method).needs_teacher:  # the student alone reads every stream
            limits.update(short=target_length, s2l=target_length)
        for name, cfg in self._all_streams():
            if cfg.seq_len > limits[name]:
                window = (
                    "model.target_length"
                    if limits[name] == target_length
                    else "the teacher's window"
                )
                raise UserError(
                    f"data.{name}.seq_len={cfg.seq_len} is above {window} ({limits[name]}); "
                    f"prepare {name} shards of at most {limits[name]} tokens"
                )
            index = self.index[name]
            if index.vocab_size is not None and index.vocab_size > vocab_size:
                raise UserError(
                    f"data.{name}: shards were tokenised with a vocabulary of {index.vocab_size} "
                    f"({index.tokenizer}), larger than the model's {vocab_size}; re-run "
                    f"`longred prepare --tokenizer <teacher dir>` with the teacher's tokenizer"
                )
        self.vocab_size = vocab_size

    def seq_len(self, kind: str) -> int:
        return self.streams[kind].seq_len

    def _rank_world(self) -> tuple[int, int]:
        """Data-parallel rank and size: the ranks of one context-parallel group read alike."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        from longred_pl.parallel.microbatch import layout_of

        layout = layout_of(trainer)
        return layout.dp_rank, layout.dp_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        dataset = MixedLengthStream(
            self.streams,
            self.schedule,
            rank=rank,
            world_size=world,
            num_workers=self.num_workers,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
            start=self.consumed,
            vocab_size=self.vocab_size,
            faults=self.faults,
        )
        return self._loader(dataset, self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        rank, world = self._rank_world()
        return [
            self._loader(FixedStream(kind, cfg, rank, world, self.val_batches), 0)
            for kind, cfg in self.val_streams.items()
        ]

    def test_dataloader(self) -> list[DataLoader]:
        """``longred test`` reads the held-out streams (``val_short`` / ``val_long``)."""
        return self.val_dataloader()

    @staticmethod
    def _loader(dataset: IterableDataset, num_workers: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if num_workers > 0 else None,
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals if num_workers > 0 else None,  # preemption.py
        )

    def _add_faults(self, records: Sequence[dict[str, Any]]) -> None:
        known = {fault_key(r) for r in self.faults}
        for record in records:
            if fault_key(record) not in known:
                known.add(fault_key(record))
                self.faults.append(record)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and "index" in batch:
            self.consumed = int(batch["index"]) + 1
            self._add_faults(batch.get("faults", ()))
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The resume cursor and the fault records of every rank.

        Lightning saves rank 0's copy only, so the records are gathered here; Lightning
        calls ``state_dict`` on every rank when it writes a checkpoint.
        """
        trainer = getattr(self, "trainer", None)
        rank, world = self._rank_world()
        if trainer is not None and world > 1:
            self._add_faults(gather_records(trainer.strategy, self.faults))
        return {
            "consumed": self.consumed,
            "world_size": world,
            "num_workers": self.num_workers,
            "schedule": list(self.schedule),
            "seed": self.seed,
            "faults": sorted(self.faults, key=fault_key),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _, world = self._rank_world()
        for key, now in (
            ("world_size", world),
            ("num_workers", self.num_workers),
            ("seed", self.seed),
        ):
            if state_dict.get(key, now) != now:
                raise UserError(
                    f"cannot resume the data streams exactly: the checkpoint was written with "
                    f"{key}={state_dict[key]} but this run has {key}={now}; resume with the "
                    f"same value (data.{key if key != 'world_size' else 'trainer devices x nodes'})"
                )
        if list(state_dict.get("schedule", self.schedule)) != list(self.schedule):
            raise UserError(
                "cannot resume the data streams exactly: data.schedule differs from the "
                "checkpoint's; resume with the checkpoint's data.schedule"
            )
        self.consumed = int(state_dict["consumed"])
        self.faults = list(state_dict.get("faults", []))


__all__ = ["KINDS", "MixedLengthDataModule", "MixedLengthStream", "StreamConfig"]
