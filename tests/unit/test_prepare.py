"""Tokenizer training and shard writing (NOTES.md shard format, read back with `tarfile`)."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pytest
from transformers import AutoTokenizer

from longred_pl.data.corpora import Document
from longred_pl.data.prepare import (
    SHARD_FORMAT,
    TokenizedDocument,
    prepare_main,
    tokenize_documents,
    write_shards,
)
from longred_pl.data.tokenizer import train_tokenizer

TEXT = (
    "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
    "def add(a, b):\n    return a + b  # bytes like \u00e9 and \u2014 too\n"
)


def _docs() -> list[Document]:
    return [Document(f"doc{i}", TEXT * (i + 1)) for i in range(8)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(_docs(), 300, tmp_path_factory.mktemp("tok"))


def _read_shards(out_dir) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    index = json.loads((out_dir / "index.json").read_text())
    samples = []
    for shard in index["shards"]:
        with tarfile.open(out_dir / shard["name"]) as tar:
            members = tar.getmembers()
            assert len(members) == shard["num_samples"]
            for member in members:
                data = tar.extractfile(member).read()
                samples.append((member.name, np.frombuffer(data, dtype="<u4")))
    return index, samples


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
    with pytest.raises(ValueError, match="vocab_size must be >= 258"):
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
        docs, tmp_path, 16, samples_per_shard=3, pack=True, vocab_size=1000,
        tokenizer_name="tok", source={"corpus": ["x"]},
    )  # fmt: skip
    assert index["format"] == SHARD_FORMAT and index["num_samples"] == 117 // 16
    assert [s["num_samples"] for s in index["shards"]] == [3, 3, 1]
    assert [s["name"] for s in index["shards"]] == [f"shard-0000{i}.tar" for i in range(3)]
    read_index, samples = _read_shards(tmp_path)
    assert read_index == index
    assert index["num_samples"] == len(samples) == sum(s["num_samples"] for s in index["shards"])
    assert [name for name, _ in samples] == [f"{i:09d}.input_ids.u32" for i in range(7)]
    assert all(len(ids) == 16 for _, ids in samples)
    stream = np.concatenate(docs)
    assert np.array_equal(np.concatenate([ids for _, ids in samples]), stream[: 7 * 16])


def test_write_shards_unpacked_never_crosses_documents(tmp_path):
    # document i holds only the token i, so a sample that crosses documents mixes values
    lengths = [5, 40, 16, 33, 2, 64]
    docs = [TokenizedDocument(f"d{i}", np.full(n, i)) for i, n in enumerate(lengths)]
    index = write_shards(docs, tmp_path, 16, pack=False, vocab_size=10, tokenizer_name="t",
                         source="test")  # fmt: skip
    _, samples = _read_shards(tmp_path)
    assert index["num_samples"] == len(samples) == sum(n // 16 for n in lengths)
    assert [int(ids[0]) for _, ids in samples] == [1, 1, 2, 3, 3, 5, 5, 5, 5]
    assert all(len(ids) == 16 and len(set(ids.tolist())) == 1 for _, ids in samples)


def test_write_shards_is_reproducible(tmp_path):
    docs = [np.arange(100) % 7]
    for name in ("a", "b"):
        write_shards(docs, tmp_path / name, 8, pack=True, vocab_size=7, tokenizer_name="t",
                     source="s")  # fmt: skip
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
    with pytest.raises(ValueError, match=r"plays/hamlet: token id 100 is outside .*\[0, 100\)"):
        write_shards(bad, tmp_path / "a", 4, pack=True, **kwargs)
    with pytest.raises(ValueError, match="seq_len must be > 0"):
        write_shards([np.arange(10)], tmp_path / "b", 0, pack=True, **kwargs)
    with pytest.raises(ValueError, match="too short for seq_len=64.*every single document"):
        write_shards([np.arange(40), np.arange(40)], tmp_path / "c", 64, pack=False, **kwargs)
    assert not list((tmp_path / "c").iterdir())
    # the same two documents pack into one sample
    assert write_shards([np.arange(40), np.arange(40)], tmp_path / "c", 64, pack=True,
                        **kwargs)["num_samples"] == 1  # fmt: skip


def test_prepare_main_in_process(tokenizer, tmp_path, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "a.txt").write_text(TEXT * 20)
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": TEXT * 30}) + "\n")
    index = prepare_main([
        "--tokenizer", str(tmp_path / "tok"), "--files", str(tmp_path / "a.txt"),
        str(tmp_path / "b.jsonl"), "--text-field", "body", "--seq-len", "32", "--no-pack",
        "--out", str(tmp_path / "out"), "--samples-per-shard", "8", "--no-progress",
    ])  # fmt: skip
    assert re.search(rf"wrote {index['num_samples']} samples x 32 tokens", capsys.readouterr().out)
    read_index, samples = _read_shards(tmp_path / "out")
    assert read_index["vocab_size"] == 300 and read_index["pack"] is False
    assert len(samples) == index["num_samples"] > 8


def test_prepare_main_flag_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        prepare_main(["--tokenizer", str(tmp_path / "none"), "--corpus", "shakespeare",
                      "--seq-len", "8", "--out", str(tmp_path / "o")])  # fmt: skip
    assert "--tokenizer" in capsys.readouterr().err
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(SystemExit):
        prepare_main(["--tokenizer", str(tmp_path / "tok"), "--seq-len", "8", "--out", "o"])
    assert "no input: pass --corpus" in capsys.readouterr().err
