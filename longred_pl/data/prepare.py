"""Tokenise documents and write fixed-length samples as webdataset tar shards.

The shard format is the contract of NOTES.md ("longred-shards-v1"): each sample is one
tar member `<key>.input_ids.u32` holding exactly `seq_len` raw little-endian uint32 token
ids, `<key>` is the zero-padded global sample number, and `index.json` beside the shards
records `format, seq_len, vocab_size, num_samples, tokenizer, shards, source`.

Two ways to cut samples (LONGRED.md, "Three data streams"):
- `pack=True` (short and s2l streams): documents are concatenated (each already ends
  with EOS) and the stream is cut into consecutive `seq_len` windows.
- `pack=False` (long stream): each document is cut on its own, so a sample never spans
  two documents; a document shorter than `seq_len`, and every remainder, is dropped.

`longred prepare` (`prepare_main`) runs both steps from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longred_pl.data.corpora import CORPORA, SPLITS, Document, load_corpus, read_text_files

SHARD_FORMAT = "longred-shards-v1"
SAMPLE_SUFFIX = "input_ids.u32"
KEY_DIGITS = 9


@dataclass(frozen=True)
class TokenizedDocument:
    """Token ids of one document (`input_ids`: 1-D integer array), with its name for errors."""

    name: str
    input_ids: np.ndarray


def tokenize_documents(
    documents: Sequence[Document],
    tokenizer: Any,
    batch_size: int = 64,
    append_eos: bool = True,
    progress: bool = True,
) -> Iterator[TokenizedDocument]:
    """Tokenise documents in batches (fast tokenizers run a batch in parallel).

    Args:
        documents: the documents, in output order.
        tokenizer: a Hugging Face tokenizer; no special tokens are added except EOS.
        batch_size: documents per tokenizer call.
        append_eos: append `tokenizer.eos_token_id` to every document, so packed
            samples show the model where one document ends.
        progress: show a tqdm bar counting documents.
    """
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise ValueError("the tokenizer has no eos_token; pass append_eos=False or set one")
    with tqdm(total=len(documents), desc="tokenize", unit="doc", disable=not progress) as bar:
        for start in range(0, len(documents), batch_size):
            batch = documents[start : start + batch_size]
            encoded = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
            for document, ids in zip(batch, encoded, strict=True):
                if append_eos:
                    ids = [*ids, eos]
                yield TokenizedDocument(document.name, np.asarray(ids, dtype=np.int64))
            bar.update(len(batch))


def _as_tokenized(
    item: TokenizedDocument | Sequence[int] | np.ndarray, number: int
) -> TokenizedDocument:
    if isinstance(item, TokenizedDocument):
        return item
    return TokenizedDocument(f"document #{number}", np.asarray(item, dtype=np.int64))


def _checked(document: TokenizedDocument, vocab_size: int) -> np.ndarray:
    ids = document.input_ids
    if ids.ndim != 1:
        raise ValueError(f"{document.name}: token ids must be 1-D, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids.max()) if ids.max() >= vocab_size else int(ids.min())
        raise ValueError(
            f"{document.name}: token id {bad} is outside the vocabulary [0, {vocab_size}); "
            "was it tokenised with another tokenizer, or is vocab_size wrong?"
        )
    return ids


def cut_samples(
    token_docs: Iterable[TokenizedDocument | Sequence[int] | np.ndarray],
    seq_len: int,
    pack: bool,
    vocab_size: int,
) -> Iterator[np.ndarray]:
    """Yield `seq_len`-long uint32 samples, packed across documents or cut per document."""
    carry = np.zeros(0, dtype=np.int64)
    for number, item in enumerate(token_docs):
        ids = _checked(_as_tokenized(item, number), vocab_size)
        if pack:
            ids = np.concatenate([carry, ids])
        whole = len(ids) // seq_len * seq_len
        for start in range(0, whole, seq_len):
            yield ids[start : start + seq_len].astype(np.uint32)
        if pack:
            carry = ids[whole:]


class _ShardWriter:
    """Opens `shard-NNNNN.tar` files lazily, `samples_per_shard` samples each."""

    def __init__(self, out_dir: Path, samples_per_shard: int) -> None:
        self.out_dir, self.samples_per_shard = out_dir, samples_per_shard
        self.shards: list[dict[str, Any]] = []
        self.num_samples = 0
        self._file: Any = None
        self._tar: Any = None

    def write(self, sample: np.ndarray) -> None:
        from webdataset import TarWriter

        if self._tar is None:
            name = f"shard-{len(self.shards):05d}.tar"
            # written under a temporary name and renamed when complete: a killed prepare
            # never leaves a truncated `*.tar` for a reader to pick up
            self._file = (self.out_dir / (name + ".partial")).open("wb")
            self._tar = TarWriter(self._file, mtime=0.0)  # fixed mtime: reproducible bytes
            self.shards.append({"name": name, "num_samples": 0})
        key = f"{self.num_samples:0{KEY_DIGITS}d}"
        self._tar.write({"__key__": key, SAMPLE_SUFFIX: sample.astype("<u4").tobytes()})
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


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    old = sorted(out_dir.glob("shard-*.tar")) + sorted(out_dir.glob("index.json"))
    if old and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds shards ({old[0].name}, ...); "
            "choose another output directory or pass overwrite=True (--overwrite)"
        )
    for path in old:
        path.unlink()


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
            with EOS).
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
    for flag, value in (("seq_len", seq_len), ("samples_per_shard", samples_per_shard)):
        if value <= 0:
            raise ValueError(f"{flag} must be > 0, got {value}")
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be > 0 or None, got {max_samples}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_out_dir(out_dir, overwrite)
    writer = _ShardWriter(out_dir, samples_per_shard)
    try:
        for sample in cut_samples(token_docs, seq_len, pack, vocab_size):
            writer.write(sample)
            if writer.num_samples == max_samples:
                break
    finally:
        writer.close()
    if writer.num_samples == 0:
        how = "all documents together" if pack else "every single document"
        raise ValueError(
            f"no sample written: the corpus is too short for seq_len={seq_len} "
            f"({how} has fewer tokens); "
            "add text, lower seq_len, or use pack=True (--pack)"
        )
    index = {
        "format": SHARD_FORMAT,
        "seq_len": seq_len,
        "vocab_size": vocab_size,
        "num_samples": writer.num_samples,
        "tokenizer": tokenizer_name,
        "shards": writer.shards,
        "source": source,
        "pack": pack,
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


# --- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longred prepare",
        description="Tokenise text and write fixed-length webdataset shards (longred-shards-v1).",
    )
    parser.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer directory")
    parser.add_argument("--corpus", nargs="+", default=[], choices=sorted(CORPORA),
                        help="embedded corpora to read")  # fmt: skip
    parser.add_argument("--files", nargs="+", default=[], help=".txt / .jsonl input files")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text")
    parser.add_argument("--split", default="train", choices=SPLITS, help="split of --corpus")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens per sample")
    parser.add_argument("--samples-per-shard", type=int, default=1024)
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                        help="concatenate documents (--no-pack: samples from single "
                        "documents, for the long stream)")  # fmt: skip
    parser.add_argument("--out", required=True, help="output shard directory")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def prepare_main(argv: list[str] | None = None) -> dict[str, Any]:
    """`longred prepare`: tokenise corpora/files and write shards; returns the index."""
    from longred_pl.data.tokenizer import load_tokenizer

    parser = _parser()
    args = parser.parse_args(argv)
    tokenizer_dir = Path(args.tokenizer)
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        parser.error(
            f"--tokenizer {tokenizer_dir}: no tokenizer_config.json there; pass a Hugging Face "
            "model or tokenizer directory (`longred build-teacher --out DIR` makes one)"
        )
    if not args.corpus and not args.files:
        parser.error("no input: pass --corpus NAME and/or --files PATH ...")
    if args.seq_len <= 0 or args.samples_per_shard <= 0:
        parser.error("--seq-len and --samples-per-shard must be > 0")
    documents: list[Document] = []
    for name in args.corpus:
        documents += load_corpus(name, args.split)
    documents += read_text_files(args.files, text_field=args.text_field)
    tokenizer = load_tokenizer(tokenizer_dir)
    index = write_shards(
        tokenize_documents(documents, tokenizer, progress=not args.no_progress),
        args.out,
        args.seq_len,
        samples_per_shard=args.samples_per_shard,
        pack=args.pack,
        vocab_size=len(tokenizer),
        tokenizer_name=str(tokenizer_dir.resolve()),
        source={"corpus": args.corpus, "split": args.split, "files": args.files},
        max_samples=args.max_samples,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {index['num_samples']} samples x {args.seq_len} tokens in "
        f"{len(index['shards'])} shard(s) to {args.out} from {len(documents)} documents "
        f"(pack={args.pack}, vocab_size={index['vocab_size']})"
    )
    return index
