"""Input readers of `longred prepare` (sources.py): formats, columns, globs, saved datasets,
streaming by record batches, and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest

from longred_pl.data.sources import ReadOptions, TokenizedDocument, resolve_files
from longred_pl.demo.corpora import Document
from longred_pl.errors import UserError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _read(spec, **options):
    read = ReadOptions(**options)
    return list(resolve_files(str(spec), read).documents(read))


def _write_arrow(path, table, stream: bool, max_chunksize: int) -> None:
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, opener(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=max_chunksize):
            writer.write_batch(batch)


def test_parquet_text_column_in_row_order(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.table({"body": ["one", None, "three", "four", "five"], "id": [1, 2, 3, 4, 5]})
    pq.write_table(table, path, row_group_size=2)
    docs = _read(path, text_field="body")
    assert docs == [
        Document(f"{path}:{n}", t) for n, t in enumerate(["one", "", "three", "four", "five"])
    ]
    with pytest.raises(
        UserError, match=r"t\.parquet: no column 'text' \(found \['body', 'id'\]\).*--text-field"
    ):
        _read(path)


def test_token_id_columns_skip_the_tokenizer(tmp_path):
    ids = pa.array([[5, 6, 7], None, [], [1]], type=pa.list_(pa.int32()))
    pq.write_table(
        pa.table({"input_ids": ids, "meta": ["a", "b", "c", "d"]}), tmp_path / "i.parquet"
    )
    docs = _read(tmp_path / "i.parquet")  # default text_field "text" falls back to input_ids
    assert all(isinstance(d, TokenizedDocument) for d in docs)
    assert [d.input_ids.tolist() for d in docs] == [[5, 6, 7], [], [], [1]]
    assert [d.input_ids.tolist() for d in _read(tmp_path / "i.parquet", text_field="input_ids")][
        0
    ] == [5, 6, 7]
    large = pa.array([[9, 8]], type=pa.large_list(pa.int64()))
    pq.write_table(pa.table({"tokens": large}), tmp_path / "l.parquet")
    assert _read(tmp_path / "l.parquet", text_field="tokens")[0].input_ids.tolist() == [9, 8]
    pq.write_table(pa.table({"text": [1.5]}), tmp_path / "f.parquet")
    with pytest.raises(UserError, match=r"f\.parquet: column 'text' has type double"):
        _read(tmp_path / "f.parquet")


@pytest.mark.parametrize("stream", [True, False], ids=["ipc-stream", "ipc-file"])
def test_arrow_files_both_ipc_formats(tmp_path, stream):
    texts = [f"document {n}" for n in range(7)]
    _write_arrow(tmp_path / "d.arrow", pa.table({"text": texts}), stream, max_chunksize=3)
    docs = _read(tmp_path / "d.arrow")
    assert [d.text for d in docs] == texts
    assert [d.name for d in docs][-1] == f"{tmp_path / 'd.arrow'}:6"  # rows numbered across batches


def test_saved_datasets_and_their_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(tmp_path / "plain")
    assert [d.text for d in _read(tmp_path / "plain")] == ["a", "b"]
    splits = {"train": ["t1", "t2"], "validation": ["v1"]}
    datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"text": texts}) for name, texts in splits.items()}
    ).save_to_disk(tmp_path / "dict")
    assert [d.text for d in _read(tmp_path / "dict")] == ["t1", "t2"]
    assert [d.text for d in _read(tmp_path / "dict", split="val")] == ["v1"]
    assert [d.text for d in _read(tmp_path / "dict", split="all")] == ["t1", "t2", "v1"]
    source = resolve_files(str(tmp_path / "dict"), ReadOptions(split="val"))
    assert source.split == "validation" and source.describe()["columns"] == ["text"]
    ids = datasets.Dataset.from_dict({"input_ids": [[3, 4, 5]]})
    datasets.DatasetDict({"test": ids}).save_to_disk(tmp_path / "ids")
    with pytest.raises(
        UserError, match=r"splits \['test'\] and none for --split train.*ids/<split>"
    ):
        _read(tmp_path / "ids")
    assert _read(tmp_path / "ids" / "test")[0].input_ids.tolist() == [3, 4, 5]
    (tmp_path / "other").mkdir()
    with pytest.raises(
        UserError, match=r"other: a directory, but not a dataset saved with save_to_disk"
    ):
        _read(tmp_path / "other")


def test_globs_expand_sorted_and_must_match(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    assert [d.text for d in _read(tmp_path / "*.txt")] == ["a.txt", "b.txt"]
    assert [d.text for d in _read(tmp_path / "**" / "*.txt")] == ["a.txt", "b.txt", "sub/c.txt"]
    with pytest.raises(UserError, match=r"\*\.parquet: the pattern matches no file"):
        _read(tmp_path / "*.parquet")
    with pytest.raises(UserError, match=r"missing\.txt: no such file or directory"):
        _read(tmp_path / "missing.txt")


def test_unknown_suffix_is_a_one_line_error_and_format_forces_one(tmp_path):
    (tmp_path / "notes").write_text("plain words\n")
    with pytest.raises(UserError) as error:
        _read(tmp_path / "notes")
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        f"{tmp_path / 'notes'}: unknown file type (no suffix)"
    )
    assert "accepted: .txt, .jsonl, .parquet, .arrow" in message and "--format" in message
    assert _read(tmp_path / "notes", format="txt") == [
        Document(str(tmp_path / "notes"), "plain words\n")
    ]
    with pytest.raises(UserError, match=r"notes: not a readable parquet file .*--format"):
        _read(tmp_path / "notes", format="parquet")


def test_invalid_bytes_name_the_file_and_offset(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe fine")
    with pytest.raises(
        UserError,
        match=r"bad\.txt: not valid utf-8 at byte 3 \(0xff\); .*--encoding.*--errors replace",
    ):
        _read(tmp_path / "bad.txt")
    assert _read(tmp_path / "bad.txt", errors="replace")[0].text == "ok \ufffd\ufffd fine"
    assert _read(tmp_path / "bad.txt", encoding="latin-1")[0].text == "ok \xff\xfe fine"
    pq.write_table(
        pa.table({"text": pa.array([b"fine", b"\xffno"], pa.binary())}), tmp_path / "b.parquet"
    )
    with pytest.raises(UserError, match=r"b\.parquet, row 1: not valid utf-8 at byte 0"):
        _read(tmp_path / "b.parquet")


def _peak_arrow_bytes(documents) -> tuple[int, int]:
    """Documents consumed one by one; returns (count, peak bytes held by pyarrow's pool)."""
    count, peak = 0, pa.total_allocated_bytes()
    for _ in documents:
        count += 1
        peak = max(peak, pa.total_allocated_bytes())
    return count, peak


def _big_table(rows: int = 4096, width: int = 2048):
    rng = np.random.default_rng(0)
    letters = rng.integers(97, 123, size=(rows, width), dtype=np.uint8)
    return pa.table({"text": [row.tobytes().decode() for row in letters]})  # 8 MiB of text


def test_parquet_streams_by_record_batches(tmp_path):
    pq.write_table(_big_table(), tmp_path / "big.parquet", row_group_size=256, compression="none")
    read = ReadOptions()
    count, peak = _peak_arrow_bytes(
        resolve_files(str(tmp_path / "big.parquet"), read).documents(read)
    )
    assert count == 4096
    assert peak < 2 * 2**20, f"peak {peak} bytes: the 8 MiB file was not streamed"


def test_arrow_streams_batch_by_batch(tmp_path):
    _write_arrow(tmp_path / "big.arrow", _big_table(), stream=True, max_chunksize=256)
    read = ReadOptions()
    count, peak = _peak_arrow_bytes(
        resolve_files(str(tmp_path / "big.arrow"), read).documents(read)
    )
    assert count == 4096
    assert peak < 2 * 2**20, f"peak {peak} bytes: the 8 MiB file was not streamed"
