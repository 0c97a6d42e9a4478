"""Tokenise documents and write fixed-length samples as webdataset tar shards.

The shard format is the contract of NOTES.md ("longred-shards-v1", `format_version` 2):
each sample is a tar member `<key>.input_ids.u32` holding exactly `seq_len` raw
little-endian uint32 token ids, `<key>` is the zero-padded global sample number, and
`index.json` beside the shards records `format, format_version, seq_len, vocab_size,
num_samples, tokenizer, shards, source, pack` and `document_boundaries`.
`prepare_shards` fills `source` with the provenance: the inputs as given and as resolved
(files, splits, columns), the filters, the weights, why the mix stopped, and each input's
counts.

Two ways to cut samples (docs/method.md, "Three data streams"):
- `pack=True` (short and s2l streams): documents are concatenated (each already ends
  with EOS) and the stream is cut into consecutive `seq_len` windows.
- `pack=False` (long stream): each document is cut on its own, so a sample never spans
  two documents; a document shorter than `seq_len`, and every remainder, is dropped.

Document boundaries (format_version 2): with `pack=True` each sample also has a member
`<key>.doc_starts.u32`, written just before its `<key>.input_ids.u32` (webdataset's sorted
member order): raw little-endian uint32 offsets in the sample of the first token of each
document piece it holds, strictly increasing, the first always 0 (a document cut by the
previous sample's end continues as this sample's first piece; one that ended exactly
there leaves a new one starting at 0). A document is its tokens as read plus the EOS that
ends it (`tokenize_documents` appends it; token-id columns are used as given): the EOS is
the last token of its document, and the next document starts right after it. Documents
truncated by `--max-doc-tokens` stay one document; the leftovers of several inputs packed
together keep their own starts. `index.json` then says `"document_boundaries": true`.
Unpacked samples hold one document each and have no such member (`false`). Shards
written before version 2 have neither key in `index.json` nor any `doc_starts` member:
they still read, as shards without boundaries.

`prepare_shards` (`longred prepare`) streams its inputs (`sources.py`) through the
tokenizer (`tokenizer.py`), the filters and the weighted mix (`mixing.py`) into the
shard writer; nothing is read ahead of need, so a corpus larger than memory works.
"""

from __future__ import annotations

import encodings
import inspect
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longred_pl.arguments import Output
from longred_pl.data.documents import SPLITS
from longred_pl.data.mixing import (
    DROP_REASONS,
    DocFilter,
    InputStats,
    Mix,
    Packer,
    Sample,
    check_ids,
    empty_input,
    empty_input_error,
    empty_input_warning,
    filter_documents,
    input_samples,
    nothing_written_error,
)
from longred_pl.data.sources import (
    ReadOptions,
    Source,
    TokenizedDocument,
    resolve_corpus,
    resolve_files,
)
from longred_pl.data.tokenizer import eos_id, tokenize_documents, tokenize_items
from longred_pl.errors import UserError

__all__ = [
    "SHARD_FORMAT",
    "TokenizedDocument",
    "cut_samples",
    "prepare_shards",
    "tokenize_documents",
    "write_shards",
]

SHARD_FORMAT = "longred-shards-v1"  # the family's name; its version is FORMAT_VERSION
FORMAT_VERSION = 2  # 2: packed samples record their document starts (absent: 1)
SAMPLE_SUFFIX = "input_ids.u32"
STARTS_SUFFIX = "doc_starts.u32"
KEY_DIGITS = 9


def _as_tokenized(
    item: TokenizedDocument | Sequence[int] | np.ndarray, number: int
) -> TokenizedDocument:
    if isinstance(item, TokenizedDocument):
        return item
    return TokenizedDocument(f"document #{number}", np.asarray(item, dtype=np.int64))


def cut_samples(
    token_docs: Iterable[TokenizedDocument | Sequence[int] | np.ndarray],
    seq_len: int,
    pack: bool,
    vocab_size: int,
) -> Iterator[np.ndarray]:
    """Yield `seq_len`-long uint32 samples, packed across documents or cut per document."""
    carry = np.zeros(0, dtype=np.int64)
    for number, item in enumerate(token_docs):
        ids = check_ids(_as_tokenized(item, number), vocab_size)
        if pack:
            ids = np.concatenate([carry, ids])
        whole = len(ids) // seq_len * seq_len
        for start in range(0, whole, seq_len):
            yield ids[start : start + seq_len].astype(np.uint32)
        if pack:
            carry = ids[whole:]


# --- writing -----------------------------------------------------------------------------


class _ShardWriter:
    """Opens `shard-NNNNN.tar` files lazily, `samples_per_shard` samples each."""

    def __init__(self, out_dir: Path, samples_per_shard: int) -> None:
        self.out_dir, self.samples_per_shard = out_dir, samples_per_shard
        self.shards: list[dict[str, Any]] = []
        self.num_samples = 0
        self._file: Any = None
        self._tar: Any = None

    def write(self, sample: Sample) -> None:
        from webdataset import TarWriter

        if self._tar is None:
            name = f"shard-{len(self.shards):05d}.tar"
            # written under a temporary name and renamed when complete: a killed prepare
            # never leaves a truncated `*.tar` for a reader to pick up
            self._file = (self.out_dir / (name + ".partial")).open("wb")
            # a fixed integer mtime: reproducible bytes, and no pax header per member (a float
            # mtime adds one: 1 KiB and a second header to parse for every member)
            self._tar = TarWriter(self._file, mtime=0)
            self.shards.append({"name": name, "num_samples": 0})
        key = f"{self.num_samples:0{KEY_DIGITS}d}"
        members = {"__key__": key, SAMPLE_SUFFIX: sample.input_ids.astype("<u4").tobytes()}
        if sample.doc_starts is not None:  # written first: TarWriter sorts the suffixes
            members[STARTS_SUFFIX] = sample.doc_starts.astype("<u4").tobytes()
        self._tar.write(members)
        self.shards[-1]["num_samples"] += 1
        self.num_samples += 1
        if self.shards[-1]["num_samples"] == self.samples_per_shard:
            self.close()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            final = self.out_dir / self.shards[-1]["name"]
            os.replace(final.with_name(final.name + ".partial"), final)
            self._tar = self._file = None


def _check_out_dir(out_dir: Path, overwrite: bool, remove: bool = True) -> None:
    old = sorted(out_dir.glob("shard-*.tar")) + sorted(out_dir.glob("index.json"))
    if old and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds shards ({old[0].name}, ...); "
            "choose another output directory or pass overwrite=True (--overwrite)"
        )
    for path in old if remove else ():
        path.unlink()


def _write(
    mix: Mix, out_dir: Path, samples_per_shard: int, max_samples: int | None, progress: bool
) -> _ShardWriter:
    """Write the mix's samples to shards, up to `max_samples`."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out_dir, samples_per_shard)
    bar = tqdm(total=max_samples, desc="prepare", unit="sample", disable=not progress)
    try:
        for sample in mix:
            writer.write(sample)
            bar.update()
            if writer.num_samples == max_samples:
                mix.stopped = f"--max-samples {max_samples} reached (the rest was not read)"
                break
    finally:
        bar.close()
        writer.close()
    return writer


def _index(
    writer: _ShardWriter,
    seq_len: int,
    vocab_size: int,
    tokenizer_name: str,
    source: Any,
    pack: bool,
) -> dict[str, Any]:
    return {
        "format": SHARD_FORMAT,
        "format_version": FORMAT_VERSION,
        "seq_len": seq_len,
        "vocab_size": vocab_size,
        "num_samples": writer.num_samples,
        "tokenizer": tokenizer_name,
        "shards": writer.shards,
        "source": source,
        "pack": pack,
        "document_boundaries": pack,  # packed samples carry `<key>.doc_starts.u32`
    }


def _positive(**values: int | None) -> None:
    for flag, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"{flag} (--{flag.replace('_', '-')}) must be > 0, got {value}")


def write_shards(
    token_docs: Iterable[TokenizedDocument | Sequence[int] | np.ndarray],
    out_dir: str | Path,
    seq_len: int,
    *,
    samples_per_shard: int = 1024,
    pack: bool,
    vocab_size: int,
    tokenizer_name: str,
    source: str | Mapping[str, Any],
    max_samples: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Cut documents into `seq_len`-token samples and write shards plus `index.json`.

    Args:
        token_docs: tokenised documents (`TokenizedDocument` or 1-D id sequences); with
            `pack=True` they are concatenated as given (`tokenize_documents` ends each
            with EOS), and each item is one document of the recorded boundaries.
        out_dir: output directory, created if needed.
        seq_len: tokens per sample.
        samples_per_shard: samples per tar file.
        pack: concatenate documents before cutting (see the module docstring).
        vocab_size: ids must lie in `[0, vocab_size)`; recorded in the index.
        tokenizer_name: recorded in the index (a path or hub name).
        source: JSON-serialisable description of the input, recorded in the index.
        max_samples: stop after this many samples.
        overwrite: replace existing shards in `out_dir` instead of failing.

    Returns:
        The index, as written to `out_dir/index.json`.
    """
    _positive(seq_len=seq_len, samples_per_shard=samples_per_shard, max_samples=max_samples)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    stats = InputStats("input")
    docs = (_as_tokenized(item, number) for number, item in enumerate(token_docs))
    kept = filter_documents(docs, stats, DocFilter(), seq_len, pack, vocab_size)
    streams = [input_samples(kept, stats, seq_len, pack, None)]
    writer = _write(Mix(streams, None, None), out_dir, samples_per_shard, max_samples, False)
    if writer.num_samples == 0:
        raise nothing_written_error([stats], seq_len)
    index = _index(writer, seq_len, vocab_size, tokenizer_name, source, pack)
    (out_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


# --- longred prepare ---------------------------------------------------------------------


def _check_settings(
    tokenizer: str,
    seq_len: int,
    samples_per_shard: int,
    max_samples: int | None,
    pack: bool,
    min_doc_tokens: int,
    max_doc_tokens: int | None,
    encoding: str,
    split: str,
    out: str,
    overwrite: bool,
) -> None:
    """Every flag check that needs no data, so a bad flag fails before any work."""
    _positive(
        seq_len=seq_len,
        samples_per_shard=samples_per_shard,
        max_samples=max_samples,
        max_doc_tokens=max_doc_tokens,
    )
    if min_doc_tokens < 0:
        raise UserError(f"--min-doc-tokens must be >= 0, got {min_doc_tokens}")
    if max_doc_tokens is not None and min_doc_tokens > max_doc_tokens:
        raise UserError(f"--min-doc-tokens {min_doc_tokens} > --max-doc-tokens {max_doc_tokens}")
    if not pack and max_doc_tokens is not None and max_doc_tokens < seq_len:
        raise UserError(
            f"--max-doc-tokens {max_doc_tokens} < --seq-len {seq_len} with --no-pack: no "
            "document could give a sample; raise --max-doc-tokens to at least --seq-len"
        )
    if split not in SPLITS:
        raise UserError(f"--split must be one of {list(SPLITS)}, got {split!r}")
    # the standard library's codecs only: some packages register a search function that
    # accepts any name (future_typing's), so codecs.lookup cannot tell a typo
    if encodings.search_function(encoding.lower()) is None:
        raise UserError(f"--encoding {encoding}: unknown codec; e.g. utf-8, latin-1, cp1252")
    if not (Path(tokenizer) / "tokenizer_config.json").is_file():
        raise UserError(
            f"--tokenizer {tokenizer}: no tokenizer_config.json there; pass a Hugging Face "
            "model or tokenizer directory (`longred build-teacher --out DIR` makes one)"
        )
    from longred_pl.outputs import check_output

    check_output(out, overwrite, "--out")  # the one rule of the commands that write


def _resolve_inputs(
    corpus: Sequence[str],
    files: Sequence[str],
    weights: Sequence[float] | None,
    options: ReadOptions,
) -> list[Source]:
    """The inputs in weight order (--corpus names, then --files arguments), resolved."""
    specs = [*corpus, *files]
    if not specs:
        raise UserError("no input: pass --corpus NAME and/or --files PATH ...")
    if weights is not None and len(weights) != len(specs):
        raise UserError(
            f"--weights has {len(weights)} value(s) for {len(specs)} input(s) ({' '.join(specs)}"
            ": the --corpus names, then the --files arguments); give one weight per input"
        )
    if weights is not None and not all(math.isfinite(w) and w > 0 for w in weights):
        raise UserError(f"--weights must all be finite and > 0, got {list(weights)}")
    sources = [resolve_corpus(name, options.split) for name in corpus]
    return sources + [resolve_files(spec, options) for spec in files]


def _shard_sizes(shards: list[dict[str, Any]]) -> str:
    sizes = [s["num_samples"] for s in shards]
    if len(sizes) > 3 and len(set(sizes[:-1])) == 1:
        return f"{len(sizes) - 1} x {sizes[0]} + {sizes[-1]} samples"
    return ", ".join(map(str, sizes)) + " samples"


def _summary(
    index: dict[str, Any], out: str, stats: list[InputStats], mix: Mix, truncating: bool
) -> str:
    read, used = sum(s.read for s in stats), sum(s.used for s in stats)
    lines = [
        f"wrote {index['num_samples']} samples x {index['seq_len']} tokens in "
        f"{len(index['shards'])} shard(s) ({_shard_sizes(index['shards'])}) to {out}, from "
        f"{used} documents used of {read} read (pack={index['pack']}, "
        f"vocab_size={index['vocab_size']})"
    ]
    for number, s in enumerate(stats, start=1):
        drops = ", ".join(f"{n} {DROP_REASONS[r]}" for r, n in s.dropped.items()) or "none"
        line = (
            f"  input {number} {s.label}: documents read {s.read}, kept {s.kept}, used {s.used}; "
            f"tokens read {s.tokens_read:,}, kept {s.tokens_kept:,}, in samples "
            f"{s.tokens_used:,} -> {s.samples} samples; dropped: {drops}"
        )
        if truncating:
            line += f"; truncated to --max-doc-tokens: {s.truncated} ({s.tokens_cut:,} tokens cut)"
        lines.append(line)
    if mix.pooled:
        lines.append(f"  leftovers of several inputs packed together -> {mix.pooled} samples")
    lines.append(f"  stopped: {mix.stopped}")
    return "\n".join(lines)


def _provenance(
    sources: list[Source],
    stats: list[InputStats],
    weights: Sequence[float] | None,
    mix: Mix,
    settings: dict[str, Any],
) -> dict[str, Any]:
    inputs = []
    for number, (source, counts) in enumerate(zip(sources, stats, strict=True)):
        entry = source.describe()
        entry["weight"] = float(weights[number]) if weights else 1.0
        entry["stats"] = {k: v for k, v in asdict(counts).items() if k != "label"}
        inputs.append(entry)
    rule = "weights, stop at the first input's end" if weights else "equal, every input to its end"
    return {
        **settings,
        "inputs": inputs,
        "mix": {"rule": rule, "stopped": mix.stopped, "samples_packed_across_inputs": mix.pooled},
    }


def _settings_record(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags as `index.json` records them (`corpus`, `split`, `files` as before)."""
    corpus, files, split = flags["corpus"], flags["files"], flags["split"]
    text_field, format, encoding = flags["text_field"], flags["format"], flags["encoding"]
    errors, max_samples = flags["errors"], flags["max_samples"]
    min_doc_tokens, max_doc_tokens = flags["min_doc_tokens"], flags["max_doc_tokens"]
    return {
        "corpus": list(corpus),
        "split": split,
        "files": list(files),
        "filters": {
            "min_doc_tokens": min_doc_tokens,
            "max_doc_tokens": max_doc_tokens,
            "max_doc_tokens_action": "truncate",
            "max_samples": max_samples,
        },
        "read": {
            "text_field": text_field,
            "format": format,
            "encoding": encoding,
            "errors": errors,
        },
    }


def _input_stream(
    source: Source,
    stats: InputStats,
    options: ReadOptions,
    tokenizer: Any,
    rule: DocFilter,
    seq_len: int,
    pack: bool,
    leftovers: Packer | None,
) -> Iterator[np.ndarray]:
    """One input's samples: read, tokenise, filter, pack; lazy, nothing read before the mix asks."""
    docs = tokenize_items(source.documents(options), tokenizer, rule.eos)
    kept = filter_documents(docs, stats, rule, seq_len, pack, len(tokenizer))
    return input_samples(kept, stats, seq_len, pack, leftovers)


def prepare_shards(
    tokenizer: str,
    seq_len: int,
    output: Output,
    corpus: Sequence[str] = (),
    files: Sequence[str] = (),
    read: ReadOptions = ReadOptions(),
    pack: bool = True,
    min_doc_tokens: int = 0,
    max_doc_tokens: int | None = None,
    weights: Sequence[float] | None = None,
    samples_per_shard: int = 1024,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Tokenise corpora and files into fixed-length webdataset shards (longred-shards-v1, v2).

    Args:
        tokenizer: Hugging Face tokenizer (or model) directory; its vocabulary bounds the ids.
        seq_len: tokens per sample.
        output: the shard directory (out), filled only when the run succeeds (a failed run
            leaves no folder it created, and an existing one as it was; overwrite replaces
            a non-empty one whole once this run succeeds).
        corpus: embedded corpora to read (shakespeare, python, bible); each is one input.
        files: inputs, each one input of the mix: a .txt/.jsonl/.parquet/.arrow file, a
            quoted glob of them, or a directory written by datasets' save_to_disk.
        read: how the inputs are read (:class:`~longred_pl.data.sources.ReadOptions`).
        pack: concatenate the documents of an input (short, s2l streams; each sample then
            records where its documents start, for document masks); --no-pack cuts each
            document on its own (long stream).
        min_doc_tokens: drop documents of fewer tokens (EOS included); for the long stream.
        max_doc_tokens: truncate longer documents to this many tokens (ending with EOS).
        weights: share of the samples of each input (the --corpus names, then the --files
            arguments); the mix stops when the first input runs out, and an input that
            gives no sample is refused by name. Default: equal shares, every input read
            to its end (one that gives nothing is named in a warning).
        samples_per_shard: samples per tar file.
        max_samples: stop after this many samples, taken from the inputs by their weights.

    Returns the index, as written to `out/index.json`.
    """
    from longred_pl.data.tokenizer import load_tokenizer

    flags = {**locals(), **asdict(read), **asdict(output)}
    out, progress = output.out, output.progress
    _check_settings(**{k: flags[k] for k in inspect.signature(_check_settings).parameters})
    sources = _resolve_inputs(corpus, files, weights, read)
    loaded = load_tokenizer(tokenizer)
    rule = DocFilter(min_doc_tokens, max_doc_tokens, eos_id(loaded))
    stats, mix = _mix(sources, read, loaded, rule, seq_len, pack, weights)
    from longred_pl.outputs import check_output

    inputs = {f"input {f.path}": str(f.path) for source in sources for f in source.files}
    check_output(out, output.overwrite, "--out", inputs)  # an input inside --out goes with it
    settings = _settings_record(flags)
    written = _Written(out, tokenizer, len(loaded), seq_len, pack, samples_per_shard, max_samples)
    index, empty = _write_staged(written, mix, stats, sources, weights, settings, progress)
    for number in empty:
        print(empty_input_warning(number, stats[number - 1], seq_len), file=sys.stderr)
    print(_summary(index, out, stats, mix, max_doc_tokens is not None))
    return index


@dataclass(frozen=True)
class _Written:
    """Where and how ``prepare_shards`` writes."""

    out: str
    tokenizer: str
    vocab_size: int
    seq_len: int
    pack: bool
    samples_per_shard: int
    max_samples: int | None


def _mix(
    sources: list, options: Any, loaded: Any, rule: Any, seq_len: int, pack: bool, weights: Any
) -> tuple[list[InputStats], Mix]:
    """Each input's token stream and statistics, and the weighted mix over them."""
    stats = [InputStats(source.label) for source in sources]
    leftovers = Packer(seq_len) if pack and len(sources) > 1 else None
    streams = [
        _input_stream(source, counts, options, loaded, rule, seq_len, pack, leftovers)
        for source, counts in zip(sources, stats, strict=True)
    ]
    return stats, Mix(streams, weights, leftovers, [source.label for source in sources])


def _write_staged(
    w: _Written, mix: Mix, stats: list, sources: list, weights: Any, settings: Any, progress: bool
) -> tuple[dict[str, Any], list[int]]:
    """Shards and ``index.json``, written aside and moved into ``out`` only when complete
    (a failed run leaves nothing; ``--overwrite`` keeps the earlier prepare until then).

    Returns the index and the numbers of the inputs that gave nothing (warned of later).
    """
    from longred_pl.outputs import staged_output

    with staged_output(Path(w.out)) as stage:
        writer = _write(mix, stage, w.samples_per_shard, w.max_samples, progress)
        empty = [n for n, s in enumerate(stats, 1) if empty_input(s, weights is not None)]
        if weights is not None and empty:
            raise empty_input_error(empty[0], stats[empty[0] - 1], w.seq_len)
        if writer.num_samples == 0:
            raise nothing_written_error(stats, w.seq_len)
        provenance = _provenance(sources, stats, weights, mix, settings)
        tokenizer_name = str(Path(w.tokenizer).resolve())
        index = _index(writer, w.seq_len, w.vocab_size, tokenizer_name, provenance, w.pack)
        (stage / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index, empty
