"""The document-mask study's pure pieces: short documents, packing with boundaries, the call."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.document_masks import report
from experiments.document_masks.documents import pack_documents, short_documents, split_text
from longred_pl.data.documents import Document

PLAY = (
    "A Play\n\nACT I\n\nSCENE I. A room.\n\nHAMLET\nTo be, or not to be.\n\n"
    "OPHELIA\nGood my lord,\nHow does your honour for this many a day?\nI humbly thank you.\n\n"
    "Exit\n"
)


def test_split_text_groups_blocks_and_cuts_long_ones_at_lines():
    pieces = split_text(PLAY, 40)
    assert pieces == [
        "A Play\n\nACT I\n\nSCENE I. A room.",
        "HAMLET\nTo be, or not to be.",
        "OPHELIA\nGood my lord,",  # OPHELIA's block (84 chars) comes as runs of lines
        "How does your honour for this many a day?",  # one line over 40 stays whole
        "I humbly thank you.\n\nExit",
    ]
    assert all(len(p) <= 40 for p in pieces if "\n" in p)
    assert split_text(PLAY, 10_000) == [PLAY.strip("\n")]
    with pytest.raises(ValueError, match="max_chars"):
        split_text(PLAY, 0)


def test_short_documents_are_named_shuffled_and_lose_nothing():
    plays = [Document(f"play{i}", PLAY) for i in range(4)]
    docs = short_documents(plays, 40, seed=0)
    names = [d.name for d in docs]
    in_order = [f"play{i}#{n}" for i in range(4) for n in range(5)]
    assert sorted(names) == sorted(in_order) and names != in_order
    assert names == [d.name for d in short_documents(plays, 40, seed=0)]  # reproducible
    assert names != [d.name for d in short_documents(plays, 40, seed=1)]
    assert all(d.text.endswith("\n") for d in docs)


def test_pack_documents_records_each_document_start(tmp_path):
    from longred_pl.data.shards import expand_urls, read_shard

    lengths = [5, 3, 9, 4, 7]  # starts 0 5 8 17 21 in a 28-token stream: 3 samples of 8
    docs = [np.full(n, i + 1, dtype=np.int64) for i, n in enumerate(lengths)]
    out = tmp_path / "long"
    stats = pack_documents(docs, out, 8, 16, tokenizer_name="toy", source="test")
    read = [s for url in expand_urls(str(out)) for s in read_shard(url, 8, doc_starts=True)]
    assert [list(starts) for _, starts in read] == [[0, 5], [0], [0, 1, 5]]
    assert np.concatenate([ids for ids, _ in read]).tolist() == np.concatenate(docs)[:24].tolist()
    assert stats["num_samples"] == 3 and stats["document_boundaries"] is True
    assert stats["documents"] == 5 and stats["documents_per_sample"] == 2.0
    assert stats["document_tokens"] == {"mean": 5.6, "median": 5, "p90": 7, "max": 9}


def fake_results(masked: list[float], unmasked: list[float]) -> dict:
    """Runs whose every figure is the given long loss (short loss 0: retention 1)."""

    def ev(loss: float) -> dict:
        bucket = {"start": 0, "end": 1024, "ppl": np.exp(loss), "loss": loss, "tokens": 1}
        long = {"ppl": np.exp(loss), "loss": loss, "buckets": [bucket]}
        return {"short": {"shakespeare": {"ppl": 1.0, "loss": 0.0}}, "long": {"shakespeare": long}}

    runs = {}
    for arm, losses in (("masked", masked), ("unmasked", unmasked)):
        runs |= {
            f"{arm}/seed{s}": {"method": arm, "seed": s, "eval": ev(x)}
            for s, x in enumerate(losses)
        }
    return {"runs": runs, "teacher": {"eval": ev(0.0)}, "untrained": {"eval": ev(0.0)}}


def test_paired_differences_call_noise_and_clear_changes():
    clear = report.paired(fake_results([1.0, 1.1, 1.2], [2.0, 2.1, 2.25]), "long_ppl")
    assert clear["call"] == "lower with masks" and clear["n"] == 3 and clear["mean"] < 0
    noisy = report.paired(fake_results([1.0, 2.0, 1.0], [1.5, 1.5, 1.5]), "long_ppl")
    assert noisy["call"] == "within noise"
    assert report.paired(fake_results([1.0], [2.0]), "long_ppl")["call"] == "one seed only"
    assert "within noise" in report.verdict(fake_results([1.0, 2.0, 1.0], [1.5, 1.5, 1.5]))
