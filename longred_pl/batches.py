"""The batches ``LongReDModule`` reads, checked as they arrive (README "Your own DataLoader").

A training micro-batch is a dict from one stream::

    {"kind": "long" | "short" | "s2l", "input_ids": LongTensor [B, L], ...}

and, on an s2l micro-batch of ``model.method: longred``, ``"index"`` (the micro-step's
number, which seeds its skipped position ids) or ``"position_ids"`` (``[B, L]``, your own).
Validation and test batches are ``"short"`` or ``"long"``. ``MixedLengthDataModule`` makes
such batches; a user's own DataLoader must too.

:class:`BatchContract` holds what the module knows of its data:

* :meth:`~BatchContract.check` refuses a batch that breaks the contract with one
  :class:`~longred_pl.errors.UserError` naming the key and the fix, before any callback
  reads it. Keys, types, shapes and lengths are checked on every batch (no host sync); the
  values (token ids inside the vocabulary, an ``attention_mask`` of ones, ``labels`` equal
  to ``input_ids``, ``position_ids`` inside the window) on the first batch of each stream.
* The run-level checks ``checks.check_run`` makes at setup from the data module's settings
  (stream lengths against the windows, the streams against ``model.method``, the
  accumulation against the schedule, the s2l length against the position scheme, lengths
  under context parallelism) run here from the batches themselves when the data does not
  come from ``MixedLengthDataModule``: the first as errors at the batch, the accumulation as
  a warning after the first optimizer steps (their mix of streams is then known). Setup
  says so in one line, with what stays off.
* :meth:`~BatchContract.record` counts micro-batches, samples and tokens per stream; the
  module saves the record in its checkpoints and the model card reads it
  (``eval.model_card``): where the data came from and how many tokens were trained.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from longred_pl import positions
from longred_pl.errors import UserError
from longred_pl.methods import METHODS

KINDS = ("long", "short", "s2l")
EVAL_KINDS = ("short", "long")
SEE = "(README 'Your own DataLoader')"
READ = frozenset({"kind", "input_ids", "index", "position_ids", "document_ids"})
# read by MixedLengthDataModule (resume cursor, bad-shard records), not by the module
DATA_MODULE_KEYS = frozenset({"bad_shards", "faults"})
# Hugging Face keys accepted where they change nothing (checked on the first batches)
CHECKED_KEYS = frozenset({"attention_mask", "labels"})
CHECKPOINT_KEY = "longred_batches"


def _kinds_text(kinds: Any) -> str:
    return " | ".join(repr(k) for k in kinds)


def _shape(value: Any) -> list[int]:
    return [int(n) for n in value.shape]


class BatchContract:
    """The batch contract of one ``LongReDModule``: checks and the record of batches seen."""

    def __init__(self) -> None:
        self.started = False
        self.source = "not set up"
        self.library = False  # batches from MixedLengthDataModule (checked at setup)
        self.streams: dict[str, dict[str, int]] = {}
        self.world_size, self.data_parallel = 1, 1
        self.optimizer_steps = 0
        self._step: Counter[str] = Counter()
        self._first_step: Counter[str] | None = None
        self._mix_checked = False
        self._values_checked: set[tuple[str, str]] = set()
        self._s2l_lengths: set[int] = set()
        self._last_s2l_index: int | None = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ setup
    def start(self, module: Any, trainer: Any, stage: str) -> None:
        """Read the module's settings; at ``fit``, say in one line what is checked where."""
        hp = module.hparams
        self.method = str(hp.method)
        self.objective = module.objective
        self.s2l_skipped = self.objective.terms.get("s2l", ("",))[0] == "L_s2l"
        self.target_length = int(hp.target_length)
        self.teacher_window = int(module.teacher_config.max_position_embeddings)
        self.vocab_size = int(module.teacher_config.vocab_size)
        self.cp_size = int(getattr(module.layout, "cp_size", 1))
        self.scheme_name = str(hp.s2l_positions)
        self.position_kwargs = dict(hp.position_kwargs or {})
        self.needs_teacher = bool(self.objective.needs_teacher)
        datamodule = getattr(trainer, "datamodule", None)
        # the same test as checks.check_run: its run-level checks need the data module's schedule
        self.library = bool(getattr(datamodule, "schedule", None))
        self.source = (
            type(datamodule).__name__
            if self.library
            else "a user DataLoader"
            if datamodule is None
            else f"the data module {type(datamodule).__name__}"
        )
        self.world_size = int(getattr(trainer, "world_size", 1) or 1)
        self.data_parallel = int(getattr(module.layout, "dp_size", 1) or 1)
        self.accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        self.started = True
        if stage == "fit" and not self.library:
            rank_zero_info(
                f"[longred] training data from {self.source}, not MixedLengthDataModule: the "
                f"stream lengths, streams vs model.method and context-parallel lengths are "
                f"checked on every batch, token ids on the first batch of each stream, the mix "
                f"of streams vs trainer.accumulate_grad_batches={self.accumulate} after the "
                f"first optimizer steps (warnings); off: exact data resume and "
                f"train/bad_shards {SEE}"
            )

    def limit(self, kind: str) -> tuple[int, str]:
        """The longest batch of ``kind`` the models can read, and whose window that is."""
        student = (self.target_length, f"model.target_length ({self.target_length})")
        teacher = (self.teacher_window, f"the teacher's window ({self.teacher_window})")
        if kind == "long" or not self.needs_teacher:
            return student
        return teacher  # the teacher reads short and s2l text at contiguous positions

    # ----------------------------------------------------------------- checks
    def check(self, batch: Any, split: str = "train") -> str:
        """The batch's kind; a one-line UserError naming the key and the fix otherwise."""
        kind = self._kind(batch, split)
        input_ids = self._input_ids(batch, kind, split)
        if split == "train" and kind == "s2l" and self.s2l_skipped:
            self._s2l(batch, input_ids)
        if batch.get("document_ids") is not None:
            self._documents(batch["document_ids"], kind, input_ids)
        if (split, kind) not in self._values_checked:
            self._values(batch, kind, split, input_ids)
            self._values_checked.add((split, kind))
        if not self.library:  # the data module's keys are its own business
            self._unread(batch, kind, split)
        return kind

    def _kind(self, batch: Any, split: str) -> str:
        allowed = (
            sorted(self.objective.streams, key=KINDS.index) if split == "train" else EVAL_KINDS
        )
        what = "batch" if split == "train" else f"{split} batch"
        if not isinstance(batch, Mapping):
            raise UserError(
                f"a {what} is a {type(batch).__name__}: LongReDModule reads dict batches "
                f"{{'kind': {_kinds_text(allowed)}, 'input_ids': LongTensor [batch, seq_len]}}; "
                f"yield one dict per micro-batch {SEE}"
            )
        if "kind" not in batch:
            raise UserError(
                f"{what}['kind'] missing (the batch has {sorted(map(str, batch))}): "
                f"LongReDModule reads one stream per micro-batch; add 'kind': "
                f"{_kinds_text(allowed)} to each batch {SEE}"
            )
        kind = batch["kind"]
        if isinstance(kind, list | tuple):
            raise UserError(
                f"{what}['kind'] is a {type(kind).__name__} of {len(kind)} values (a DataLoader's "
                f"default collate_fn keeps one per sample): LongReDModule reads one stream per "
                f"micro-batch; make batch['kind'] one string ({_kinds_text(allowed)}), e.g. "
                f"with a collate_fn or a dataset that yields whole batches (batch_size=None) {SEE}"
            )
        if not isinstance(kind, str) or kind not in KINDS:
            use = (
                "'long' (text at the new window), 'short' (short text, distilled) or 's2l' "
                "(text of the teacher's window at skipped positions)"
                if split == "train"
                else "'short' or 'long'"
            )
            raise UserError(f"{what}['kind']={kind!r} is not a stream: use {use} {SEE}")
        if split != "train" and kind not in EVAL_KINDS:
            raise UserError(
                f"{what}['kind']={kind!r}: {split} batches are 'short' (perplexity of student "
                f"and teacher) or 'long' (the student's at the new window); send s2l text as "
                f"'short' {SEE}"
            )
        if split == "train" and kind not in self.objective.streams:
            readers = [n for n, m in METHODS.items() if kind in m.streams]
            raise UserError(
                f"batch['kind']={kind!r}, but model.method={self.method!r} trains on "
                f"{sorted(self.objective.streams)} only; drop the {kind!r} batches or use a "
                f"model.method that reads them ({', '.join(readers)}) {SEE}"
            )
        return kind

    def _input_ids(self, batch: Mapping[str, Any], kind: str, split: str) -> torch.Tensor:
        ids = batch.get("input_ids")
        fix = "a LongTensor [batch, seq_len] of token ids"
        if ids is None:
            raise UserError(f"batch['input_ids'] missing from a {kind!r} batch: add {fix} {SEE}")
        if not isinstance(ids, torch.Tensor):
            raise UserError(
                f"batch['input_ids'] is a {type(ids).__name__}: expected {fix} "
                f"(torch.tensor(ids, dtype=torch.long)) {SEE}"
            )
        if ids.dtype != torch.long:
            raise UserError(
                f"batch['input_ids'] has dtype {ids.dtype}: expected torch.long (int64); "
                f"convert with .long() {SEE}"
            )
        if ids.dim() != 2:
            hint = "add the batch dimension (.unsqueeze(0))" if ids.dim() == 1 else "stack rows"
            raise UserError(
                f"batch['input_ids'] has shape {_shape(ids)}: expected [batch, seq_len]; {hint} "
                f"{SEE}"
            )
        if ids.shape[0] < 1 or ids.shape[1] < 2:
            raise UserError(
                f"batch['input_ids'] has shape {_shape(ids)}: expected at least 1 sample of at "
                f"least 2 tokens (the loss predicts each next token) {SEE}"
            )
        length = int(ids.shape[1])
        limit, window = self.limit(kind)
        if length > limit:
            raise UserError(
                f"batch['input_ids'] of a {kind!r} {split} batch has {length} tokens, above "
                f"{window}: cut {kind!r} batches to at most {limit} tokens {SEE}"
            )
        if self.cp_size > 1 and split == "train":
            from longred_pl.parallel import check_cp_length

            check_cp_length(length, self.cp_size, field=f"batch['input_ids'].shape[1] ({kind!r})")
        return ids

    def _s2l(self, batch: Mapping[str, Any], input_ids: torch.Tensor) -> None:
        """An s2l micro-batch of ``longred``: its own position ids, or an index to draw them."""
        pos = batch.get("position_ids")
        if pos is not None:
            if not isinstance(pos, torch.Tensor) or pos.dtype.is_floating_point:
                raise UserError(
                    f"batch['position_ids'] of an s2l batch is a "
                    f"{getattr(pos, 'dtype', type(pos).__name__)}: expected a LongTensor "
                    f"[batch, seq_len] {SEE}"
                )
            if pos.shape != input_ids.shape:
                raise UserError(
                    f"batch['position_ids'] of an s2l batch has shape {_shape(pos)}, input_ids "
                    f"{_shape(input_ids)}: give one position per token (.expand_as(input_ids)) "
                    f"{SEE}"
                )
            return
        if "index" not in batch:
            raise UserError(
                "an s2l batch needs batch['index'] (the micro-step's number: with model.seed it "
                "seeds the skipped position ids, so a resumed run draws the same ones) or "
                "batch['position_ids'] ([batch, seq_len], your own); add 'index': n, counting "
                f"micro-batches {SEE}"
            )
        index = batch["index"]
        if isinstance(index, torch.Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            what = (
                f"a tensor of shape {_shape(index)}"
                if isinstance(index, torch.Tensor)
                else repr(index)
            )
            raise UserError(
                f"batch['index'] of an s2l batch is {what}: expected one int per micro-batch (the "
                f"micro-step's number; a default collate_fn keeps one per sample) {SEE}"
            )
        if index == self._last_s2l_index:
            self._warn(
                f"s2l batches repeat batch['index']={index}: they get the same skipped position "
                f"ids; send each micro-batch's own number {SEE}"
            )
        self._last_s2l_index = int(index)
        length = int(input_ids.shape[1])
        if length not in self._s2l_lengths:  # a dry run, once per length (as setup does)
            try:
                positions.get_position_scheme(self.scheme_name)(
                    2,
                    length,
                    self.target_length,
                    torch.Generator().manual_seed(0),
                    **self.position_kwargs,
                )
            except (UserError, TypeError) as err:
                raise UserError(
                    f"s2l batches of {length} tokens (batch['input_ids'].shape[1]) do not fit "
                    f"model.s2l_positions={self.scheme_name!r} with model.target_length="
                    f"{self.target_length}: {err}"
                ) from err
            self._s2l_lengths.add(length)

    def _documents(self, documents: Any, kind: str, input_ids: torch.Tensor) -> None:
        """``document_ids``: a LongTensor like input_ids, on long and short batches only."""
        if kind == "s2l":
            raise UserError(
                "batch['document_ids'] on an s2l batch: document masks are not applied to the "
                "s2l stream (it reads a sample at skipped positions as one text); drop the key "
                f"from s2l batches {SEE}"
            )
        if not isinstance(documents, torch.Tensor) or documents.dtype != torch.long:
            raise UserError(
                f"batch['document_ids'] of a {kind!r} batch must be a LongTensor (each token's "
                f"document index within its row), got {type(documents).__name__} "
                f"{getattr(documents, 'dtype', '')}; convert with .long() {SEE}"
            )
        if documents.shape != input_ids.shape:
            raise UserError(
                f"batch['document_ids'] of a {kind!r} batch has shape {_shape(documents)}, "
                f"input_ids {_shape(input_ids)}: give one document index per token {SEE}"
            )

    def _values(
        self, batch: Mapping[str, Any], kind: str, split: str, input_ids: torch.Tensor
    ) -> None:
        """Checks that read the values (a host sync): on the first batch of each stream."""
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise UserError(
                f"batch['input_ids'] of a {kind!r} batch holds token id {bad}, outside the "
                f"model's vocabulary [0, {self.vocab_size}): tokenise with the teacher's "
                f"tokenizer and pack rows without padding ids {SEE}"
            )
        mask = batch.get("attention_mask")
        if mask is not None and not bool(torch.as_tensor(mask).bool().all()):
            raise UserError(
                f"batch['attention_mask'] of a {kind!r} batch has zeros (padding): LongReDModule "
                f"reads every token of input_ids; pack the text into full rows and drop "
                f"attention_mask {SEE}"
            )
        labels = batch.get("labels")
        if labels is not None and not (
            isinstance(labels, torch.Tensor)
            and labels.shape == input_ids.shape
            and torch.equal(labels.to(input_ids.device), input_ids)
        ):
            raise UserError(
                f"batch['labels'] of a {kind!r} batch differ from input_ids (e.g. -100 on "
                f"masked tokens): LongReDModule computes its own labels, every next token of "
                f"input_ids; drop 'labels' {SEE}"
            )
        documents = batch.get("document_ids")
        if documents is not None and bool((documents[:, 1:] < documents[:, :-1]).any()):
            raise UserError(
                f"batch['document_ids'] of a {kind!r} batch decrease along a row: they number "
                f"each row's documents 0, 1, 2... in order (a packed row) {SEE}"
            )
        pos = batch.get("position_ids")
        reads_pos = split == "train" and kind == "s2l" and self.s2l_skipped
        if reads_pos and pos is not None:
            low, high = int(pos.min()), int(pos.max())
            if low < 0 or high >= self.target_length:
                raise UserError(
                    f"batch['position_ids'] of an s2l batch span [{low}, {high}]: they must lie "
                    f"in [0, model.target_length={self.target_length}) {SEE}"
                )

    def _unread(self, batch: Mapping[str, Any], kind: str, split: str) -> None:
        """Warn once about keys the module does not read (they would change nothing)."""
        unread = sorted(str(k) for k in set(batch) - READ - DATA_MODULE_KEYS - CHECKED_KEYS)
        if unread:
            self._warn(
                f"batch keys {unread} are not read by LongReDModule (it reads 'kind', "
                f"'input_ids', 'document_ids' of packed rows and, on s2l batches, 'index' or "
                f"'position_ids') {SEE}"
            )
        reads_pos = split == "train" and kind == "s2l" and self.s2l_skipped
        if batch.get("position_ids") is not None and not reads_pos:
            self._warn(
                f"batch['position_ids'] of {kind!r} {split} batches are not read: "
                f"LongReDModule reads them at contiguous positions 0..L-1 (to separate documents "
                f"packed in a row, send 'document_ids') {SEE}"
            )

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            rank_zero_warn(message)

    # ------------------------------------------------------------------ record
    def add(self, kind: str, input_ids: torch.Tensor) -> None:
        """One trained micro-batch (this rank's count)."""
        s = self.streams.setdefault(
            kind, {"micro_batches": 0, "samples": 0, "tokens": 0, "min_len": 0, "max_len": 0}
        )
        batch, length = int(input_ids.shape[0]), int(input_ids.shape[1])
        s["min_len"] = min(s["min_len"] or length, length)
        s["max_len"] = max(s["max_len"], length)
        s["micro_batches"] += 1
        s["samples"] += batch
        s["tokens"] += batch * length
        self._step[kind] += 1

    def step_done(self, global_step: int) -> None:
        """End of an optimizer step: compare its mix of streams with the method and step 1.

        Only without ``MixedLengthDataModule`` (with it, ``checks.check_accumulation`` holds).
        """
        step, self._step = self._step, Counter()
        self.optimizer_steps += 1
        if self.library or self._mix_checked or not step:
            return
        mix = {k: step[k] for k in KINDS if step[k]}
        if self._first_step is None:
            self._first_step = step
            missing = sorted(self.objective.streams - set(step), key=KINDS.index)
            if missing:
                self._warn(
                    f"the first optimizer step (trainer.accumulate_grad_batches="
                    f"{self.accumulate}) read the streams {mix}, none of {missing} that "
                    f"model.method={self.method!r} also trains on: make each optimizer step "
                    f"read every stream (trainer.accumulate_grad_batches = one whole period "
                    f"of your DataLoader's kinds; 16 in the published schedule) {SEE}"
                )
            return
        if step != self._first_step:
            first = {k: self._first_step[k] for k in KINDS if self._first_step[k]}
            self._warn(
                f"optimizer step {global_step + 1} read the streams {mix} but the first one "
                f"{first}: steps train on different mixes (the loss weights assume one mix); "
                f"set trainer.accumulate_grad_batches to a whole period of your DataLoader's "
                f"kinds {SEE}"
            )
            self._mix_checked = True

    def record(self) -> dict[str, Any]:
        """What the checkpoint keeps and the model card reads (plain types)."""
        return {
            "source": self.source,
            "library": self.library,
            "streams": {k: dict(self.streams[k]) for k in KINDS if k in self.streams},
            "world_size": self.world_size,
            "data_parallel": self.data_parallel,
            "optimizer_steps": self.optimizer_steps,
        }

    def restore(self, record: Mapping[str, Any] | None) -> None:
        """Counts from a checkpoint: a resumed run keeps counting (the source stays this run's)."""
        if not record:
            return
        self.streams = {k: dict(v) for k, v in (record.get("streams") or {}).items()}
        self.optimizer_steps = int(record.get("optimizer_steps", 0))


def tokens_of(record: Mapping[str, Any]) -> dict[str, int]:
    """Tokens trained per stream over all data-parallel ranks, and ``total``."""
    scale = int(record.get("data_parallel") or 1)
    streams = record.get("streams") or {}
    tokens = {k: int(streams[k]["tokens"]) * scale for k in KINDS if k in streams}
    return {**tokens, "total": sum(tokens.values())}
