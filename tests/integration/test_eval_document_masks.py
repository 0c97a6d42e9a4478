"""`longred eval` on packed held-out shards: document masks, positions within documents.

Shards written with ``pack=True`` record each sample's document starts; eval then reads each
document of a packed sample on its own (issue 22). The reference is each document piece of
each sample evaluated alone: the same NLLs, the short perplexity their mean, the long
buckets by position within the piece. Read without masks (the old behaviour, or
``--no-document-mask``) the figures differ.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from longred_pl.cli import main as longred
from longred_pl.data.prepare import write_shards
from longred_pl.data.shards import expand_urls, read_shard
from longred_pl.errors import UserError
from longred_pl.eval.probes import bucket_edges, document_token_nll, token_nll

SHORT, LONG, BUCKETS = 16, 96, 4
# 1-token documents, documents longer than a sample (cut across samples), and runs of short ones
SIZES = {
    SHORT: [1, 5, 9, 30, 2, 1, 7, 3, 12, 4, 1, 20, 6, 8, 1, 11, 3, 19],
    LONG: [1, 40, 130, 7, 1, 60, 25, 3, 90, 50, 1, 33, 70],
}


def packed(root, seq_len: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 128, size=n) for n in SIZES[seq_len]]
    write_shards(
        docs,
        root,
        seq_len,
        samples_per_shard=2,
        pack=True,
        vocab_size=128,
        tokenizer_name="random",
        source="tests",
    )
    return str(root)


@pytest.fixture(scope="module")
def eval_shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("packed_eval")
    return {"short": packed(root / "short", SHORT, 1), "long": packed(root / "long", LONG, 2)}


@pytest.fixture(scope="module")
def model(tiny_llama):
    from longred_pl.models import freeze, load_causal_lm, load_config

    return freeze(load_causal_lm(tiny_llama, load_config(tiny_llama), "sdpa", "float32"))


def pieces(urls: str, seq_len: int) -> list[torch.Tensor]:
    """Every document piece of every sample, in file order."""
    found = []
    for url in expand_urls(urls, "test"):
        for ids, starts in read_shard(url, seq_len, doc_starts=True):
            ends = [*starts[1:], seq_len]
            found += [torch.from_numpy(ids[a:b].astype(np.int64)) for a, b in zip(starts, ends)]
    return found


def alone(model, urls: str, seq_len: int) -> list[torch.Tensor]:
    """Each piece's next-token NLLs, the piece read alone (entry j: its position j + 1)."""
    with torch.no_grad():
        return [token_nll(model, p.unsqueeze(0))[0] for p in pieces(urls, seq_len) if len(p) > 1]


def reference_buckets(nlls: list[torch.Tensor], seq_len: int) -> list[tuple[int, float]]:
    """``(tokens, loss)`` per bucket, by position within the document."""
    edges = bucket_edges(BUCKETS, seq_len)
    sums, counts = [0.0] * BUCKETS, [0] * BUCKETS
    for nll in nlls:
        for position, value in enumerate(nll.double().tolist(), start=1):
            j = max(k for k in range(BUCKETS) if edges[k] <= position)
            sums[j], counts[j] = sums[j] + value, counts[j] + 1
    return [(n, s / n if n else math.nan) for n, s in zip(counts, sums)]


def evaluate(tiny_llama, eval_shards, document_mask=None) -> dict:
    from longred_pl.arguments import ModelLoading
    from longred_pl.eval.evaluator import evaluate_model
    from longred_pl.eval.settings import EvalData, Probes

    data = EvalData(
        eval_shards["short"],
        long_data=eval_shards["long"],
        num_short=64,
        num_long=64,
        batch_size=3,
        buckets=BUCKETS,
        order="first",
        document_mask=document_mask,
    )
    probes = Probes(copy_span=2, copy_trials=1, copy_distances=[0])
    return evaluate_model(tiny_llama, data, probes, ModelLoading("cpu"), progress=False)


def test_packed_rows_give_each_document_its_own_nlls(model, eval_shards):
    """One forward of packed rows = each document piece read alone; a model that is not a
    Hugging Face Llama (its documents then run one by one) gives the same."""
    from longred_pl.data.datamodule import document_ids

    read = list(read_shard(expand_urls(eval_shards["long"], "t")[0], LONG, doc_starts=True))
    ids = torch.from_numpy(np.stack([i for i, _ in read]).astype(np.int64))
    docs = document_ids([s for _, s in read], LONG)
    assert (docs[:, -1] >= 2).all()  # three documents or more in each row
    with torch.no_grad():
        nll, kept, position = document_token_nll(model, ids, docs, chunk_size=7)

        class Logits(torch.nn.Module):  # not Llama-like: only input_ids -> logits
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids):
                return self.inner(input_ids=input_ids).logits

        by_one, kept_one, _ = document_token_nll(Logits(model), ids, docs)
        plain = token_nll(model, ids)
    reference = torch.cat([alone_nll(model, p) for p in pieces_of(ids, docs) if len(p) > 1])
    assert torch.equal(kept, kept_one) and int(kept.sum()) == len(reference)
    assert int((~kept).sum()) == int(docs[:, -1].sum())  # one target less per document start
    torch.testing.assert_close(nll[kept], reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_one[kept], reference, rtol=1e-5, atol=1e-5)
    expected_positions = torch.cat([torch.arange(1, len(p)) for p in pieces_of(ids, docs)])
    assert torch.equal(position[kept], expected_positions)
    assert (plain[kept] - reference).abs().max() > 1e-3  # unmasked rows read across documents


def pieces_of(ids: torch.Tensor, docs: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for row, doc in zip(ids, docs):
        _, counts = torch.unique_consecutive(doc, return_counts=True)
        out += list(row.split(counts.tolist()))
    return out


def alone_nll(model, piece: torch.Tensor) -> torch.Tensor:
    return token_nll(model, piece.unsqueeze(0))[0]


def test_eval_perplexities_by_position_within_documents(model, tiny_llama, eval_shards):
    """evaluate_model on packed shards: short perplexity = the mean NLL of the documents read
    alone, long buckets = their NLLs bucketed by position within the document; without
    document masks (the old reading) both differ."""
    result = evaluate(tiny_llama, eval_shards)
    short_alone = torch.cat(alone(model, eval_shards["short"], SHORT)).double()
    long_alone = alone(model, eval_shards["long"], LONG)
    assert result["short"]["document_mask"] and result["long"]["document_mask"]
    assert result["long"]["positions"] == "within documents"
    assert result["short"]["tokens"] == len(short_alone)
    # measured: short loss equal to 4e-8 relative, bucket losses to 1e-8 absolute
    assert result["short"]["loss"] == pytest.approx(float(short_alone.mean()), rel=1e-6)
    buckets = result["long"]["buckets"]
    reference = reference_buckets(long_alone, LONG)
    assert [b["tokens"] for b in buckets] == [n for n, _ in reference]
    assert reference[-1][0] > 0  # a document reaches the last bucket: none is empty
    for row, (_, loss) in zip(buckets, reference):
        assert row["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["long"]["tokens"] == sum(len(n) for n in long_alone)

    old = evaluate(tiny_llama, eval_shards, document_mask=False)
    assert not old["short"]["document_mask"] and old["long"]["positions"] == "within samples"
    # measured: short loss 2.6e-4 relative apart, first bucket 7.5e-4 (a tiny random model
    # reads little from context), the buckets' tokens (115, 120, 120, 120 vs 269, 139, 52, 3)
    assert abs(old["short"]["loss"] / result["short"]["loss"] - 1) > 1e-4
    assert [b["tokens"] for b in old["long"]["buckets"]] != [n for n, _ in reference]
    first = old["long"]["buckets"][0]["loss"]
    assert abs(first / buckets[0]["loss"] - 1) > 1e-4


def test_eval_says_masks_on_and_the_setting_is_checked(
    tiny_llama, eval_shards, tiny_shards, tmp_path, capsys
):
    base = [tiny_llama, "--short-data", eval_shards["short"], "--long-data", eval_shards["long"]]
    base += ["--num-short", "4", "--num-long", "1", "--buckets", "4", "--copy-distances", "0"]
    base += ["--device", "cpu", "--no-progress"]
    longred(["eval", *base, "--out", str(tmp_path / "on")])
    said = [line for line in capsys.readouterr().out.splitlines() if "document masks" in line]
    assert said == [
        "[longred eval] document masks on for --short-data, --long-data (shards record "
        "document boundaries): each document of a packed sample is read on its own (positions "
        "restart at its start, no label crosses a boundary); long perplexity by position "
        "within documents"
    ]
    table = (tmp_path / "on" / "results.md").read_text()
    assert "Long-text perplexity by target position within documents:" in table
    assert "Document masks on (short and long text)" in table
    saved = json.loads((tmp_path / "on" / "results.json").read_text())
    assert saved["models"][0]["long"]["positions"] == "within documents"
    assert saved["args"]["document_mask"] is None

    longred(["eval", *base, "--no-document-mask", "--out", str(tmp_path / "off")])
    assert "document masks" not in capsys.readouterr().out
    saved = json.loads((tmp_path / "off" / "results.json").read_text())
    assert saved["models"][0]["long"]["positions"] == "within samples"
    assert "within documents" not in (tmp_path / "off" / "results.md").read_text()

    unpacked = [tiny_llama, "--short-data", tiny_shards["short"], "--device", "cpu"]
    match = (
        r"^--document-mask: the shards of --short-data .* record no document boundaries "
        r"\(written with --no-pack: one document per sample\); re-write them with `longred "
        r"prepare --pack`, or drop --document-mask \(--no-document-mask: off for both streams\)$"
    )
    with pytest.raises(UserError, match=match):
        longred(["eval", *unpacked, "--document-mask", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()  # refused before a model loads
    result = longred(["eval", *unpacked, "--copy-distances", "0", "--out", str(tmp_path / "u")])
    assert result["models"][0]["short"]["document_mask"] is False  # unset: follows the shards
