"""Input readers of `longred prepare`: documents streamed from local files, text or token ids.

One *input* (`Source`) is an embedded corpus (`--corpus NAME`) or one `--files` argument:
a file, a glob (`'data/*.parquet'`, quoted so that the shell leaves it alone, `**`
recursive) or a directory written by `datasets`' `save_to_disk`. Its documents stream
out one at a time, never the whole input at once:

| format | recognised by | one document is | read |
|---|---|---|---|
| `txt` | `.txt` | the whole file | whole file (one document) |
| `jsonl` | `.jsonl` | one non-blank line, field `--text-field` | line by line |
| `parquet` | `.parquet` | one row, column `--text-field` | record batches of `BATCH_ROWS` rows |
| `arrow` | `.arrow` (IPC file or stream) | one row | record batch by record batch |
| saved dataset | directory with `state.json` (a `Dataset`) or `dataset_dict.json` (a `DatasetDict`, split chosen by `--split`) | one row | its `.arrow` files, batch by batch |

`--format` forces one format for every `--files` file (a file without a suffix, a `.md`).
A column (or JSONL field) of strings is text; a column of integer lists is already token
ids (`input_ids`, the paper's input format) and skips the tokenizer. When `--text-field`
is the default `text` and a file has no `text` but an `input_ids` column, that is read.

Bytes that do not decode fail with the file, the line or row, and the byte offset, unless
`--errors replace|ignore` (Python's codec error handlers) says otherwise.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from longred_pl.data.documents import Document
from longred_pl.demo.corpora import CORPORA, load_corpus
from longred_pl.errors import UserError

InputFormat = Literal["auto", "txt", "jsonl", "parquet", "arrow"]
INPUT_FORMATS: tuple[str, ...] = get_args(InputFormat)
SUFFIX_FORMATS: dict[str, str] = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
DecodeErrors = Literal["strict", "replace", "ignore"]
IDS_COLUMN = "input_ids"
BATCH_ROWS = 256
VAL_SPLIT_NAMES: tuple[str, ...] = ("validation", "val", "valid", "dev")
_ACCEPTED = ".txt, .jsonl, .parquet, .arrow or a directory saved with datasets' save_to_disk"


@dataclass(frozen=True)
class TokenizedDocument:
    """Token ids of one document (`input_ids`: 1-D integer array), with its name for errors."""

    name: str
    input_ids: np.ndarray


Item = Document | TokenizedDocument


@dataclass(frozen=True)
class ReadOptions:
    """How the inputs are read.

    Args:
        text_field: JSONL field or table column of the text, or of token ids (a column of
            integer lists: no tokenizer pass). With the default text, a file without one
            but with input_ids reads that.
        encoding: text encoding of .txt/.jsonl files (and of binary columns).
        errors: undecodable bytes: strict (fail, naming file and byte), replace, ignore.
        format: read every --files file as this format (auto: by suffix).
        split: split of the embedded corpora and of saved DatasetDicts (train, val, all).
    """

    text_field: str = "text"
    encoding: str = "utf-8"
    errors: DecodeErrors = "strict"
    format: InputFormat = "auto"
    split: str = "train"


@dataclass(frozen=True)
class InputFile:
    """One file of an input, its resolved format and (parquet/arrow) the column to read."""

    path: Path
    format: str
    column: str | None = None


@dataclass(frozen=True)
class Source:
    """One input of a mix: an embedded corpus or one `--files` argument, resolved."""

    spec: str
    kind: Literal["corpus", "files"]
    files: tuple[InputFile, ...] = ()
    split: str | None = None

    @property
    def label(self) -> str:
        """How the summary names the input."""
        return f"{self.spec} ({self.split})" if self.split else self.spec

    def documents(self, options: ReadOptions) -> Iterator[Item]:
        """The input's documents, in order, streamed."""
        if self.kind == "corpus":
            yield from load_corpus(self.spec, self.split or "train")  # type: ignore[arg-type]
            return
        for file in self.files:
            yield from READERS[file.format](file, options)

    def describe(self, max_files: int = 20) -> dict[str, Any]:
        """Provenance of the input for `index.json` (the first `max_files` file names)."""
        info: dict[str, Any] = {"input": self.spec, "kind": self.kind}
        if self.split:
            info["split"] = self.split
        if self.kind == "files":
            info["formats"] = sorted({f.format for f in self.files})
            columns = sorted({f.column for f in self.files if f.column})
            if columns:
                info["columns"] = columns
            info["num_files"] = len(self.files)
            info["files"] = [str(f.path.resolve()) for f in self.files[:max_files]]
        return info


# --- resolving inputs (cheap: paths, suffixes and schemas only, before any real work) -----


def resolve_corpus(name: str, split: str) -> Source:
    """An embedded corpus as an input (`--corpus NAME`, `--split`)."""
    if name not in CORPORA:
        raise UserError(f"--corpus {name}: unknown corpus; known corpora: {sorted(CORPORA)}")
    return Source(name, "corpus", split=split)


def resolve_files(spec: str, options: ReadOptions) -> Source:
    """One `--files` argument (a file, glob or saved dataset) as an input."""
    if any(char in spec for char in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        if not paths:
            raise UserError(f"--files {spec}: the pattern matches no file; check the path")
    else:
        paths = [Path(spec)]
        if not paths[0].exists():
            raise UserError(f"--files {spec}: no such file or directory")
    files: list[InputFile] = []
    splits: list[str] = []
    for path in paths:
        if path.is_dir():
            found, split = _dataset_files(path, options)
            files += found
            splits += [split] if split and split not in splits else []
        else:
            files.append(_input_file(path, _file_format(path, options.format), options))
    return Source(spec, "files", tuple(files), split=",".join(splits) or None)


def _file_format(path: Path, forced: str) -> str:
    if forced != "auto":
        return forced
    if path.suffix.lower() in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[path.suffix.lower()]
    kind = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
    raise UserError(
        f"{path}: unknown file type ({kind}); accepted: {_ACCEPTED}; "
        "or pass --format txt|jsonl|parquet|arrow to read every --files file as that"
    )


def _input_file(path: Path, fmt: str, options: ReadOptions) -> InputFile:
    if fmt not in ("parquet", "arrow"):
        return InputFile(path, fmt)
    try:
        names = _schema(path, fmt).names
    except Exception as error:  # pyarrow raises several types for a file of another format
        raise UserError(f"{path}: not a readable {fmt} file ({error}); check --format") from None
    return InputFile(path, fmt, pick_column(names, options.text_field, str(path)))


def pick_column(names: list[str], text_field: str, where: str, kind: str = "column") -> str:
    """The column (JSONL: field) to read: `text_field`, else `input_ids` if `text_field` is `text`."""
    if text_field in names:
        return text_field
    if text_field == "text" and IDS_COLUMN in names:
        return IDS_COLUMN
    raise UserError(
        f"{where}: no {kind} {text_field!r} (found {names}); set --text-field to the text "
        f"{kind}, or to {IDS_COLUMN} for token ids"
    )


def _dataset_files(root: Path, options: ReadOptions) -> tuple[list[InputFile], str | None]:
    """The `.arrow` files of a `save_to_disk` directory, and the split they hold."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
        chosen = _choose_splits(root, splits, options.split)
        files = [f for split in chosen for f in _dataset_files(root / split, options)[0]]
        return files, ",".join(chosen)
    if not (root / "state.json").is_file():
        raise UserError(
            f"{root}: a directory, but not a dataset saved with save_to_disk (no state.json "
            f"or dataset_dict.json); pass its files or a glob such as '{root}/*.parquet'"
        )
    state = json.loads((root / "state.json").read_text())
    names = [entry["filename"] for entry in state.get("_data_files", [])]
    files = [_input_file(root / name, "arrow", options) for name in names]
    return files, state.get("_split")


def _choose_splits(root: Path, splits: list[str], split: str) -> list[str]:
    if split == "all":
        return list(splits)
    wanted = VAL_SPLIT_NAMES if split == "val" else (split,)
    for name in wanted:
        if name in splits:
            return [name]
    raise UserError(
        f"{root}: a DatasetDict with splits {splits} and none for --split {split}; "
        f"pass --split all, or point --files at one split's directory ({root}/<split>)"
    )


def _pyarrow() -> Any:
    """pyarrow with its `parquet` and `compute` modules, or the install hint."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "reading .parquet/.arrow files and saved datasets needs pyarrow: "
            "pip install 'longred_pl[data]'"
        ) from error
    return pyarrow


def _schema(path: Path, fmt: str) -> Any:
    pa = _pyarrow()
    if fmt == "parquet":
        return pa.parquet.read_schema(path)
    with pa.OSFile(str(path)) as handle:
        return _arrow_reader(handle).schema


# --- readers -----------------------------------------------------------------------------


def decode(data: bytes, where: str, options: ReadOptions, offset: int = 0) -> str:
    """`data` as text; undecodable bytes name `where` and the byte offset in the file."""
    try:
        return data.decode(options.encoding, options.errors)
    except UnicodeDecodeError as error:
        byte = data[error.start]
        raise UserError(
            f"{where}: not valid {options.encoding} at byte {offset + error.start} "
            f"(0x{byte:02x}); pass --encoding ENCODING if the file has another encoding, "
            "or --errors replace to read bad bytes as U+FFFD"
        ) from None


def _read_txt(file: InputFile, options: ReadOptions) -> Iterator[Item]:
    yield Document(str(file.path), decode(file.path.read_bytes(), str(file.path), options))


def _read_jsonl(file: InputFile, options: ReadOptions) -> Iterator[Item]:
    offset = 0
    with file.path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{file.path}, line {number}"
            line, offset = decode(raw, where, options, offset), offset + len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: invalid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{where}: a JSON {type(record).__name__}, not an object")
            field = pick_column(list(record), options.text_field, where, "field")
            yield _record_item(f"{file.path}:{number}", record[field], where, field)


def _record_item(name: str, value: Any, where: str, field: str) -> Item:
    if isinstance(value, str):
        return Document(name, value)
    if isinstance(value, list) and all(type(v) is int for v in value):
        return TokenizedDocument(name, np.asarray(value, dtype=np.int64))
    raise UserError(f"{where}: field {field!r} is neither a string nor a list of token ids")


def _arrow_reader(handle: Any) -> Any:
    pa = _pyarrow()
    try:
        return pa.ipc.open_file(handle)
    except pa.ArrowInvalid:  # `save_to_disk` writes the IPC stream format
        handle.seek(0)
        return pa.ipc.open_stream(handle)


def _arrow_batches(path: Path, column: str) -> Iterator[Any]:
    pa = _pyarrow()
    # an OSFile, not a memory map: each batch is read when asked for, one at a time
    with pa.OSFile(str(path)) as handle:
        reader = _arrow_reader(handle)
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            for number in range(reader.num_record_batches):
                yield reader.get_batch(number).column(column)
        else:
            for batch in reader:
                yield batch.column(column)


def _parquet_batches(path: Path, column: str) -> Iterator[Any]:
    # pre_buffer=False: pyarrow's default pre-buffers every row group of the column at once
    with _pyarrow().parquet.ParquetFile(path, pre_buffer=False) as parquet:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
            yield batch.column(0)


def _read_table(file: InputFile, options: ReadOptions) -> Iterator[Item]:
    batches = _parquet_batches if file.format == "parquet" else _arrow_batches
    row = 0
    for array in batches(file.path, file.column or options.text_field):
        yield from _array_items(array, file, row, options)
        row += len(array)


def _array_items(array: Any, file: InputFile, row: int, options: ReadOptions) -> Iterator[Item]:
    pa = _pyarrow()
    pc = pa.compute
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        for number, text in enumerate(array.to_pylist(), start=row):
            yield Document(f"{file.path}:{number}", text or "")
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        for number, data in enumerate(array.to_pylist(), start=row):
            yield Document(
                f"{file.path}:{number}", decode(data or b"", f"{file.path}, row {number}", options)
            )
    elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_integer(
        kind.value_type
    ):
        lengths = pc.list_value_length(array).fill_null(0).to_numpy()
        flat = pc.list_flatten(array).to_numpy(zero_copy_only=False).astype(np.int64)
        for number, ids in enumerate(np.split(flat, np.cumsum(lengths)[:-1]), start=row):
            yield TokenizedDocument(f"{file.path}:{number}", ids)
    else:
        raise UserError(
            f"{file.path}: column {file.column!r} has type {kind}; prepare reads strings "
            f"(text) or lists of integers (token ids); set --text-field"
        )


READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_table, "arrow": _read_table}


def read_text_files(
    paths: Sequence[str | Path], text_field: str = "text", encoding: str = "utf-8"
) -> list[Document]:
    """Read user text files: `.txt` is one document per file, `.jsonl` one per non-blank line.

    A list-returning shortcut over `longred_pl.data.sources`, which `longred prepare` uses
    to stream these and the other formats (parquet, arrow, saved datasets).

    Raises:
        UserError: a missing path, an unsupported suffix, undecodable bytes (file and byte
            offset), bad JSON, or a missing/non-string `text_field` (file and line).
    """
    options = ReadOptions(text_field=text_field, encoding=encoding)
    documents: list[Document] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{path}: input file not found")
        if path.suffix not in (".txt", ".jsonl"):
            raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .txt or .jsonl")
        for item in READERS[path.suffix[1:]](InputFile(path, path.suffix[1:]), options):
            if not isinstance(item, Document):
                raise UserError(f"{item.name}: field {text_field!r} holds token ids, not text")
            documents.append(item)
    return documents
