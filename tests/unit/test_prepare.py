"""Tokenizer training and shard writing (NOTES.md shard format, read back with `tarfile`)."""

from __future__ import annotations

import itertools
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from longred_pl import cli
from longred_pl.data.mixing import DocFilter, InputStats, Mix, Packer, filter_documents
from longred_pl.data.prepare import (
    SHARD_FORMAT,
    TokenizedDocument,
    prepare_shards,
    tokenize_documents,
    write_shards,
)
from longred_pl.data.tokenizer import train_tokenizer
from longred_pl.demo.corpora import Document
from longred_pl.errors import UserError

TEXT = (
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "def add(a, b):\n    return a + b  # bytes like \u00e9 and \u2014 too\n"
)


def _docs() -> list[Document]:
    return [Document(f"doc{i}", TEXT * (i + 1)) for i in range(8)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(_docs(), 300, tmp_path_factory.mktemp("tok"))


def _read_shards(out_dir, suffix="input_ids.u32") -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """The index and the ``suffix`` members (name, uint32s) in file order, read with tarfile."""
    index = json.loads((out_dir / "index.json").read_text())
    per_sample = 2 if index.get("document_boundaries") else 1
    samples = []
    for shard in index["shards"]:
        with tarfile.open(out_dir / shard["name"]) as tar:
            members = tar.getmembers()
            assert len(members) == per_sample * shard["num_samples"]
            for member in members:
                if member.name.endswith(suffix):
                    data = tar.extractfile(member).read()
                    samples.append((member.name, np.frombuffer(data, dtype="<u4")))
    return index, samples


def _starts(out_dir) -> list[list[int]]:
    return [s.tolist() for _, s in _read_shards(out_dir, "doc_starts.u32")[1]]


def _expected_starts(lengths, seq_len) -> list[list[int]]:
    """Each window's document starts, from the documents' token counts (packed as given)."""
    firsts = np.cumsum([0, *lengths])[:-1]
    windows = sum(lengths) // seq_len
    return [
        [0, *(int(f) - w * seq_len for f in firsts if w * seq_len < f < (w + 1) * seq_len)]
        for w in range(windows)
    ]


def test_tokenizer_round_trips_and_reloads(tokenizer, tmp_path):
    assert len(tokenizer) == 300
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<|bos|>", "<|eos|>"]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) < 0.6 * len(TEXT.encode())  # 42 merges were learnt
    assert tokenizer.decode(ids) == TEXT
    unseen = "Zebra \u4e2d\u6587 \t\n!"  # byte-level: never unknown
    assert tokenizer.decode(tokenizer(unseen, add_special_tokens=False)["input_ids"]) == unseen
    again = train_tokenizer(_docs(), 300, tmp_path)  # deterministic
    assert again.get_vocab() == tokenizer.get_vocab()
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded(TEXT, add_special_tokens=False)["input_ids"] == ids
    with pytest.raises(UserError, match="vocab_size must be >= 258"):
        train_tokenizer(_docs(), 100, tmp_path)


def test_tokenize_documents_appends_eos(tokenizer):
    out = list(tokenize_documents(_docs()[:3], tokenizer, batch_size=2, progress=False))
    assert [d.name for d in out] == ["doc0", "doc1", "doc2"]
    single = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert out[0].input_ids.tolist() == [*single, tokenizer.eos_token_id]
    assert all(d.input_ids[-1] == tokenizer.eos_token_id for d in out)


def test_write_shards_packed(tmp_path):
    docs = [np.arange(start, start + n) for start, n in ((0, 50), (100, 7), (200, 60))]
    index = write_shards(
        docs,
        tmp_path,
        16,
        samples_per_shard=3,
        pack=True,
        vocab_size=1000,
        tokenizer_name="tok",
        source={"corpus": ["x"]},
    )
    assert index["format"] == SHARD_FORMAT and index["num_samples"] == 117 // 16
    assert index["format_version"] == 2 and index["document_boundaries"] is True
    assert [s["num_samples"] for s in index["shards"]] == [3, 3, 1]
    assert [s["name"] for s in index["shards"]] == [f"shard-0000{i}.tar" for i in range(3)]
    read_index, samples = _read_shards(tmp_path)
    assert read_index == index
    assert index["num_samples"] == len(samples) == sum(s["num_samples"] for s in index["shards"])
    assert [name for name, _ in samples] == [f"{i:09d}.input_ids.u32" for i in range(7)]
    assert all(len(ids) == 16 for _, ids in samples)
    stream = np.concatenate(docs)
    assert np.array_equal(np.concatenate([ids for _, ids in samples]), stream[: 7 * 16])
    # documents of 50, 7, 60 tokens start at 0, 50, 57: in windows 3 (48..64) and 3 again
    assert _starts(tmp_path) == [[0], [0], [0], [0, 2, 9], [0], [0], [0]]


def test_packed_samples_record_where_their_documents_start(tmp_path):
    """A document cut at a sample's end continues as the next one's first piece (start 0);
    one that ends exactly there leaves the next document starting at 0; one-token ones
    and ones longer than two samples count once each."""
    lengths = [5, 11, 16, 3, 40, 1, 1, 9, 20, 7]
    docs = [np.full(n, i) for i, n in enumerate(lengths)]  # document i holds the token i
    write_shards(docs, tmp_path, 16, samples_per_shard=4, pack=True, vocab_size=10, **KW)
    _, samples = _read_shards(tmp_path)
    starts = _starts(tmp_path)
    assert starts == _expected_starts(lengths, 16)
    assert starts[:3] == [[0, 5], [0], [0, 3]]  # 5 + 11 fill window 0; 16 fills window 1
    for (_, ids), first in zip(samples, starts, strict=True):
        pieces = np.split(ids, first[1:])
        assert all(len(set(p.tolist())) == 1 for p in pieces)  # one document per piece
        assert all(a[0] != b[0] for a, b in itertools.pairwise(pieces))  # a new one at each


def test_unpacked_shards_record_no_boundaries(tmp_path):
    index = write_shards([np.arange(40)], tmp_path, 16, pack=False, vocab_size=40, **KW)
    assert index["format_version"] == 2 and index["document_boundaries"] is False
    assert _starts(tmp_path) == [] and len(_read_shards(tmp_path)[1]) == 2


KW = {"tokenizer_name": "t", "source": "test"}


def test_write_shards_unpacked_never_crosses_documents(tmp_path):
    # document i holds only the token i, so a sample that crosses documents mixes values
    lengths = [5, 40, 16, 33, 2, 64]
    docs = [TokenizedDocument(f"d{i}", np.full(n, i)) for i, n in enumerate(lengths)]
    index = write_shards(
        docs, tmp_path, 16, pack=False, vocab_size=10, tokenizer_name="t", source="test"
    )
    _, samples = _read_shards(tmp_path)
    assert index["num_samples"] == len(samples) == sum(n // 16 for n in lengths)
    assert [int(ids[0]) for _, ids in samples] == [1, 1, 2, 3, 3, 5, 5, 5, 5]
    assert all(len(ids) == 16 and len(set(ids.tolist())) == 1 for _, ids in samples)


def test_write_shards_is_reproducible(tmp_path):
    docs = [np.arange(100) % 7]
    for name in ("a", "b"):
        write_shards(
            docs, tmp_path / name, 8, pack=True, vocab_size=7, tokenizer_name="t", source="s"
        )
    assert (tmp_path / "a/shard-00000.tar").read_bytes() == (
        tmp_path / "b/shard-00000.tar"
    ).read_bytes()


def test_write_shards_max_samples_and_existing_output(tmp_path):
    docs = [np.arange(1000) % 50]
    kwargs = {"pack": True, "vocab_size": 50, "tokenizer_name": "t", "source": "s"}
    assert write_shards(docs, tmp_path, 10, max_samples=4, **kwargs)["num_samples"] == 4
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_shards(docs, tmp_path, 10, **kwargs)
    index = write_shards(docs, tmp_path, 10, samples_per_shard=200, overwrite=True, **kwargs)
    assert index["num_samples"] == 100 and sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "shard-00000.tar"
    ]


def test_write_shards_errors(tmp_path):
    kwargs = {"vocab_size": 100, "tokenizer_name": "t", "source": "s"}
    bad = [
        TokenizedDocument("good", np.arange(10)),
        TokenizedDocument("plays/hamlet", np.array([5, 100])),
    ]
    with pytest.raises(UserError, match=r"plays/hamlet: token id 100 is outside .*\[0, 100\)"):
        write_shards(bad, tmp_path / "a", 4, pack=True, **kwargs)
    with pytest.raises(UserError, match=r"seq_len \(--seq-len\) must be > 0"):
        write_shards([np.arange(10)], tmp_path / "b", 0, pack=True, **kwargs)
    with pytest.raises(
        UserError, match=r"2 read, 2 shorter than --seq-len \(--no-pack\)\); .*has 40 tokens"
    ):
        write_shards([np.arange(40), np.arange(40)], tmp_path / "c", 64, pack=False, **kwargs)
    assert not list((tmp_path / "c").iterdir())
    # the same two documents pack into one sample
    assert (
        write_shards([np.arange(40), np.arange(40)], tmp_path / "c", 64, pack=True, **kwargs)[
            "num_samples"
        ]
        == 1
    )


def test_prepare_main_in_process(tokenizer, tmp_path, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "a.txt").write_text(TEXT * 20)
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": TEXT * 30}) + "\n")
    index = prepare_main(
        [
            "--tokenizer",
            str(tmp_path / "tok"),
            "--files",
            str(tmp_path / "a.txt"),
            str(tmp_path / "b.jsonl"),
            "--text-field",
            "body",
            "--seq-len",
            "32",
            "--no-pack",
            "--out",
            str(tmp_path / "out"),
            "--samples-per-shard",
            "8",
            "--no-progress",
        ]
    )
    assert re.search(rf"wrote {index['num_samples']} samples x 32 tokens", capsys.readouterr().out)
    read_index, samples = _read_shards(tmp_path / "out")
    assert read_index["vocab_size"] == 300 and read_index["pack"] is False
    assert len(samples) == index["num_samples"] > 8


def prepare_main(argv):
    """``longred prepare ARGV`` in-process (raises UserError)."""
    return cli.main(["prepare", *argv])


def shell(argv, monkeypatch):
    """``longred prepare ARGV`` as the shell runs it: returns the exit status."""
    monkeypatch.setattr(sys, "argv", ["longred", "prepare", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.console()
    return exit_info.value.code


def test_prepare_main_flag_errors(tmp_path, capsys, monkeypatch):
    argv = [
        "--tokenizer",
        str(tmp_path / "none"),
        "--corpus",
        "shakespeare",
        "--seq-len",
        "8",
        "--out",
        str(tmp_path / "o"),
    ]
    assert shell(argv, monkeypatch) == 2
    assert "--tokenizer" in capsys.readouterr().err
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text("{}")
    assert (
        shell(["--tokenizer", str(tmp_path / "tok"), "--seq-len", "8", "--out", "o"], monkeypatch)
        == 2
    )
    assert "no input: pass --corpus" in capsys.readouterr().err


# --- filters, mix, summary (issues 10 and 13) --------------------------------------------


def _stream(n: int, value: int, length: int = 4):
    return iter([np.full(length, value, dtype=np.uint32) for _ in range(n)])


def test_filters_drop_by_reason_and_truncate_keeping_eos():
    eos = 1
    lengths = [0, 3, 6, 9, 20]
    docs = [TokenizedDocument(f"d{n}", np.array([7] * (n - 1) + [eos] * (n > 0))) for n in lengths]
    stats = InputStats("x")
    rule = DocFilter(min_doc_tokens=4, max_doc_tokens=8, eos=eos)
    kept = list(filter_documents(docs, stats, rule, seq_len=7, pack=False, vocab_size=10))
    # 0: empty; 3: < min; 6: < seq_len without packing; 9 and 20: truncated to 8, EOS last
    assert [k.tolist() for k in kept] == [[7] * 7 + [eos]] * 2
    assert stats.dropped == {"empty": 1, "min_doc_tokens": 1, "shorter_than_seq_len": 1}
    assert (stats.read, stats.kept, stats.truncated, stats.tokens_cut) == (5, 2, 2, 1 + 12)
    assert stats.tokens_read == sum(lengths) and stats.tokens_kept == 16 and stats.longest == 20
    packed = list(
        filter_documents(docs, InputStats("y"), rule, seq_len=7, pack=True, vocab_size=10)
    )
    assert [len(k) for k in packed] == [6, 8, 8]  # packing keeps the 6-token document


def test_mix_holds_the_weights_in_every_prefix_and_stops_at_the_first_end():
    mix = Mix([_stream(30, 0), _stream(100, 1)], [3.0, 1.0], None, ["a", "b"])
    out = [int(sample[0]) for sample in mix]
    assert len(out) == 40 and out.count(0) == 30  # a ran out at 30: b gave its 10, no more
    for n in range(1, len(out) + 1):
        assert abs(out[:n].count(0) - 0.75 * n) <= 1, f"prefix {n} off the 3:1 shares"
    assert mix.stopped.startswith("input 1 a ran out")
    unweighted = Mix([_stream(5, 0), _stream(2, 1)], None, None)
    assert [int(s[0]) for s in unweighted] == [0, 1, 0, 1, 0, 0, 0]  # every input to its end
    assert unweighted.stopped == "all inputs read"


def test_packer_counts_a_document_once_and_its_tokens_exactly():
    a, b = InputStats("a"), InputStats("b")
    packer = Packer(4)
    packer.add(np.arange(10), a)
    packer.add(np.arange(3), b)
    out = [packer.take(), packer.take(), packer.take(), packer.take()]
    assert [o is None for o in out] == [False, False, False, True]
    assert np.concatenate([o.input_ids for o in out[:3]]).tolist() == [*range(10), 0, 1]
    assert [o.doc_starts.tolist() for o in out[:3]] == [[0], [0], [0, 2]]
    assert (a.used, a.tokens_used, b.used, b.tokens_used, packer.size) == (1, 10, 1, 2, 1)


@pytest.fixture(scope="module")
def tok_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok_dir")
    tokenizer.save_pretrained(path)
    return str(path)


def _ids_jsonl(path, docs) -> str:
    path.write_text("".join(json.dumps({"input_ids": list(map(int, d))}) + "\n" for d in docs))
    return str(path)


def _prepare(tok_dir, out, seq_len, **kwargs):
    """``prepare_shards`` with its argument groups filled from flat keywords, as the CLI does."""
    from dataclasses import fields

    from longred_pl.arguments import Output
    from longred_pl.data.sources import ReadOptions

    output = {k: kwargs.pop(k) for k in ("overwrite", "progress") if k in kwargs}
    read = {f.name: kwargs.pop(f.name) for f in fields(ReadOptions) if f.name in kwargs}
    output.setdefault("progress", False)
    return prepare_shards(
        tok_dir, seq_len, Output(str(out), **output), read=ReadOptions(**read), **kwargs
    )


def test_prepare_pack_boundaries_match_the_documents(tokenizer, tok_dir, tmp_path):
    """`longred prepare --pack`: a document is its tokens and the EOS after them; each
    whole piece between two starts decodes to its document's text."""
    texts = [TEXT[i : i + 6 * (i % 7 + 1)] for i in range(24)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    index = _prepare(tok_dir, tmp_path / "out", files=[str(path)], seq_len=32)
    assert index["format_version"] == 2 and index["document_boundaries"] is True
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    starts = _starts(tmp_path / "out")
    assert starts == _expected_starts(counts, 32) and len(starts) == sum(counts) // 32
    firsts = np.cumsum([0, *counts])[:-1].tolist()
    _, samples = _read_shards(tmp_path / "out")
    whole = 0
    for w, ((_, ids), first) in enumerate(zip(samples, starts, strict=True)):
        for begin, end in zip(first, first[1:], strict=False):  # pieces that end in the sample
            k = firsts.index(w * 32 + begin) if w * 32 + begin in firsts else None
            if k is None:
                continue  # the rest of a document cut by the previous sample
            piece = ids[begin:end].tolist()
            assert len(piece) == counts[k] and piece[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(piece[:-1]) == texts[k]
            whole += 1
    assert whole >= 8, whole


def test_pooled_leftovers_keep_their_document_starts(tok_dir, tmp_path):
    """Two inputs' leftovers packed together: every change of document is a start."""
    value = itertools.count(2)
    files = [
        _ids_jsonl(tmp_path / f"{n}.jsonl", [[next(value)] * k for k in lengths])
        for n, lengths in enumerate([[7, 30, 3, 12], [5, 1, 19, 9, 4]])
    ]
    _prepare(tok_dir, tmp_path / "out", files=files, seq_len=16)
    _, samples = _read_shards(tmp_path / "out")
    assert len(samples) == 90 // 16
    for (_, ids), first in zip(samples, _starts(tmp_path / "out"), strict=True):
        changes = [0, *(i for i in range(1, 16) if ids[i] != ids[i - 1])]
        assert first == changes  # every document holds one value of its own


def test_max_samples_cut_is_fair_and_counts_documents_used(tok_dir, tmp_path, capsys):
    # input 1: 40 documents (4 empty) of 30 ids; input 2: 3 documents of 100 ids. Before the
    # fix, --max-samples took input 1's documents first and input 2 gave nothing.
    first = [[] if n % 10 == 0 else [5] * 30 for n in range(40)]
    files = [
        _ids_jsonl(tmp_path / "a.jsonl", first),
        _ids_jsonl(tmp_path / "b.jsonl", [[6] * 100] * 3),
    ]
    index = _prepare(tok_dir, tmp_path / "out", files=files, seq_len=32, max_samples=10)
    inputs = index["source"]["inputs"]
    assert [i["stats"]["samples"] for i in inputs] == [5, 5]
    _, samples = _read_shards(tmp_path / "out")
    assert [int(ids[0]) for _, ids in samples] == [5, 6] * 5  # interleaved, ids used as given
    a, b = (i["stats"] for i in inputs)
    # 160 ids of a: 6 documents (the 6th in part), after the empty 1st one; 160 of b: 2
    assert (a["read"], a["used"], a["dropped"], a["tokens_used"]) == (7, 6, {"empty": 1}, 160)
    assert (b["read"], b["used"], b["tokens_used"]) == (2, 2, 160)
    out = capsys.readouterr().out
    assert "wrote 10 samples x 32 tokens" in out and "from 8 documents used of 9 read" in out
    assert "stopped: --max-samples 10 reached" in out


def test_weights_and_filters_are_recorded(tok_dir, tmp_path):
    files = [_ids_jsonl(tmp_path / f"{n}.jsonl", [[n + 2] * 64] * 20) for n in range(2)]
    index = _prepare(
        tok_dir,
        tmp_path / "o",
        files=files,
        seq_len=16,
        weights=[1, 3],
        min_doc_tokens=10,
        max_doc_tokens=32,
        pack=False,
    )
    counts = [i["stats"]["samples"] for i in index["source"]["inputs"]]
    assert counts == [13, 40]  # input 2 ran out first (40 samples); 13 = 40 / 3 rounded down
    source = index["source"]
    assert [i["weight"] for i in source["inputs"]] == [1.0, 3.0]
    assert source["filters"]["max_doc_tokens_action"] == "truncate"
    assert source["mix"]["stopped"].startswith(f"input 2 {files[1]} ran out")
    assert source["inputs"][0]["files"] == [str(Path(files[0]).resolve())]


def test_leftovers_of_many_small_inputs_pack_together(tok_dir, tmp_path, capsys):
    files = [_ids_jsonl(tmp_path / f"{n}.jsonl", [[n + 2] * 10]) for n in range(7)]
    index = _prepare(tok_dir, tmp_path / "o", files=files, seq_len=16)
    assert index["num_samples"] == 70 // 16
    assert index["source"]["mix"]["samples_packed_across_inputs"] == 4
    assert "leftovers of several inputs packed together -> 4 samples" in capsys.readouterr().out


def test_pre_tokenised_ids_are_checked_against_the_vocabulary(tok_dir, tmp_path):
    path = _ids_jsonl(tmp_path / "ids.jsonl", [[1, 2], [299, 300]])
    with pytest.raises(
        UserError, match=r"ids\.jsonl:2: token id 300 is outside the vocabulary \[0, 300\)"
    ):
        _prepare(tok_dir, tmp_path / "o", files=[path], seq_len=2)


@pytest.mark.parametrize(
    ("content", "flags", "match"),
    [
        ("", {}, r"/empty\.txt: 1 read, 1 empty\); check the inputs"),
        ("\n\n", {"name": "blank.jsonl"}, r"/blank\.jsonl: no documents\); check the inputs"),
        (
            TEXT,
            {"min_doc_tokens": 10_000},
            r"1 shorter than --min-doc-tokens\); lower --min-doc-tokens",
        ),
        (
            TEXT,
            {"pack": False},
            r"1 shorter than --seq-len \(--no-pack\)\); lower --seq-len .* or use --pack",
        ),
        (TEXT, {}, r"the 1 kept document\(s\) hold \d+ tokens in all, fewer than --seq-len 4096"),
    ],
    ids=["empty-file", "no-documents", "min-doc-tokens", "no-pack", "too-few-tokens"],
)
def test_empty_results_name_the_input_and_the_filter(tok_dir, tmp_path, content, flags, match):
    path = tmp_path / flags.pop("name", "empty.txt")
    path.write_text(content)
    with pytest.raises(UserError, match=match) as error:
        _prepare(tok_dir, tmp_path / "o", files=[str(path)], seq_len=4096, **flags)
    assert "\n" not in str(error.value)
    if flags.get("pack", True):
        assert "--pack" not in str(error.value)  # the old advice, wrong for a packed input
    assert not (tmp_path / "o" / "index.json").exists()


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"weights": [1.0]}, r"--weights has 1 value\(s\) for 2 input\(s\)"),
        ({"weights": [1.0, 0.0]}, r"--weights must all be finite and > 0"),
        ({"min_doc_tokens": 9, "max_doc_tokens": 8}, r"--min-doc-tokens 9 > --max-doc-tokens 8"),
        ({"pack": False, "max_doc_tokens": 8}, r"--max-doc-tokens 8 < --seq-len 16 with --no-pack"),
        ({"encoding": "no-such-codec"}, r"--encoding no-such-codec: unknown codec"),
        ({"max_samples": 0}, r"max_samples \(--max-samples\) must be > 0"),
    ],
)
def test_flag_errors_come_before_any_work(tok_dir, tmp_path, flags, match):
    files = [str(tmp_path / name) for name in ("a.txt", "b.txt")]
    with pytest.raises(UserError, match=match):  # the inputs are not even there: no work done
        _prepare(tok_dir, tmp_path / "o", files=files, seq_len=16, **flags)


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        (
            "notes",
            b"words",
            r"notes: unknown file type \(no suffix\); accepted: \.txt, .* --format",
        ),
        (
            "bad.txt",
            b"ok \xff",
            r"bad\.txt: not valid utf-8 at byte 3 \(0xff\); .*--errors replace",
        ),
    ],
)
def test_prepare_main_bad_files_fail_on_one_line(
    tok_dir, tmp_path, capsys, monkeypatch, name, data, match
):
    (tmp_path / name).write_bytes(data)
    argv = [
        "--tokenizer",
        tok_dir,
        "--files",
        str(tmp_path / name),
        "--seq-len",
        "4",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    code = shell(argv, monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search("longred: error: .*" + match, err)
    fixed = prepare_main(
        [*argv, "--format", "txt"] if name == "notes" else [*argv, "--errors", "replace"]
    )
    assert fixed["num_samples"] >= 1


# --- empty inputs and failed runs (issue 23) ---------------------------------------------


@pytest.mark.parametrize("empty_name", ["empty.txt", "empty.jsonl"])
@pytest.mark.parametrize("empty_first", [True, False], ids=["empty-first", "empty-second"])
def test_weights_refuse_an_empty_input_by_name(tok_dir, tmp_path, empty_name, empty_first):
    # Before: empty first blamed the other file ("full.jsonl: no documents"); empty second
    # wrote 1 sample of the full input, "so the shares stay exact", and exited 0.
    full = _ids_jsonl(tmp_path / "full.jsonl", [[5] * 100] * 4)
    (tmp_path / empty_name).write_text("")
    files = [str(tmp_path / empty_name), full][:: 1 if empty_first else -1]
    number = 1 if empty_first else 2
    with pytest.raises(UserError) as error:
        _prepare(tok_dir, tmp_path / "o", files=files, seq_len=16, weights=[1, 1])
    message = str(error.value)
    assert "\n" not in message
    assert re.match(
        rf"--weights: input {number} \S*/{re.escape(empty_name)} gave no sample", message
    )
    assert "full.jsonl" not in message
    assert "drop the input and its --weights value" in message
    assert not (tmp_path / "o").exists()  # the failed run left no folder behind


def test_weights_refuse_an_input_too_short_for_one_sample(tok_dir, tmp_path):
    files = [
        _ids_jsonl(tmp_path / "a.jsonl", [[5] * 100]),
        _ids_jsonl(tmp_path / "b.jsonl", [[6] * 5]),
    ]
    with pytest.raises(
        UserError,
        match=r"input 2 \S*b\.jsonl gave no sample \(its 1 kept document\(s\) hold 5 tokens, "
        r"fewer than --seq-len 16\), .*add text or lower --seq-len",
    ):
        _prepare(tok_dir, tmp_path / "o", files=files, seq_len=16, weights=[1, 1])


def test_without_weights_an_empty_input_is_named_in_a_warning(tok_dir, tmp_path, capsys):
    full = _ids_jsonl(tmp_path / "full.jsonl", [[5] * 100] * 4)
    (tmp_path / "empty.jsonl").write_text("\n")
    index = _prepare(
        tok_dir, tmp_path / "o", files=[str(tmp_path / "empty.jsonl"), full], seq_len=16
    )
    assert index["num_samples"] == 25
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(
        r"warning: input 1 \S*/empty\.jsonl gave nothing to the shards \(it holds no document\)",
        err,
    )
    assert "full.jsonl" not in err


def test_a_failed_prepare_leaves_nothing_behind(tok_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="no sample written"):
        _prepare(tok_dir, tmp_path / "new" / "out", files=[str(empty)], seq_len=16)
    assert not (tmp_path / "new").exists()  # nor the parent it created
    (tmp_path / "kept").mkdir()
    with pytest.raises(UserError, match="no sample written"):
        _prepare(tok_dir, tmp_path / "kept", files=[str(empty)], seq_len=16)
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
    # --overwrite replaces an earlier prepare only when the new one succeeds
    full = _ids_jsonl(tmp_path / "full.jsonl", [[5] * 100])
    first = _prepare(tok_dir, tmp_path / "out", files=[full], seq_len=16)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with pytest.raises(UserError, match="no sample written"):
        _prepare(tok_dir, tmp_path / "out", files=[str(empty)], seq_len=16, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert _read_shards(tmp_path / "out")[0] == first
    second = _prepare(tok_dir, tmp_path / "out", files=[full], seq_len=32, overwrite=True)
    assert _read_shards(tmp_path / "out")[0] == second and second["seq_len"] == 32
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.json", "shard-00000.tar"]
