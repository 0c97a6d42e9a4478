"""lm-eval bridge, offline: local task files (tests/data/lm_eval_tasks) on a tiny saved Llama.

The multiple-choice accuracy is recomputed here from the model's own log-probabilities,
so the test fails if the bridge scored another model, another task or another metric.
Skipped where lm-eval (the `eval` extra) is not installed.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval", reason="needs lm-eval: pip install 'longred_pl[eval]'")

from longred_pl.cli import main as longred  # noqa: E402
from longred_pl.errors import UserError  # noqa: E402
from longred_pl.eval.lm_eval_bridge import score_with_lm_eval  # noqa: E402


def lm_eval_main(argv):
    return longred(["lm-eval", *argv])


TASKS_DIR = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tasks"
CHOICE, TEXT = "longred_tiny_choice", "longred_tiny_text"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / name).read_text().splitlines() if line]


def save_tiny_lm(path: Path, seed: int) -> str:
    """A tiny random Llama plus a byte-level BPE tokenizer trained on the task text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longred_pl.data.tokenizer import train_tokenizer
    from longred_pl.demo.corpora import Document

    texts = [r["text"] for r in _rows("tiny_text.jsonl")]
    texts += [r["context"] + c for r in _rows("tiny_choice.jsonl") for c in r["choices"]]
    tokenizer = train_tokenizer([Document(str(i), t) for i, t in enumerate(texts)], 320, path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    return save_tiny_lm(tmp_path_factory.mktemp("lm_eval_model"), seed=0)


@torch.no_grad()
def expected_choice_scores(model_dir: str) -> tuple[float, float]:
    """acc and acc_norm of the choice task, from our own forward passes.

    lm-eval's recipe: encode ``context + choice`` whole, the continuation is what follows
    the context's tokens; acc picks the highest summed log-prob, acc_norm divides it by
    the choice's length in bytes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    hits = hits_norm = 0
    rows = _rows("tiny_choice.jsonl")
    for row in rows:
        scores = []
        for choice in row["choices"]:
            context_ids = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
            whole = tokenizer(row["context"] + choice, add_special_tokens=False)["input_ids"]
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            scores.append(
                sum(float(logp[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))
            )
        norm = [s / len(c.encode()) for s, c in zip(scores, row["choices"], strict=True)]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == row["label"])
        hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == row["label"])
    return hits / len(rows), hits_norm / len(rows)


@torch.no_grad()
def expected_byte_perplexity(model_dir: str) -> float:
    """``exp(-sum log p / sum bytes)`` of the text task: every token scored after a BOS prefix
    (the texts fit the 64-token window, so lm-eval's rolling windows are the whole text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    total_logp = total_bytes = 0.0
    for row in _rows("tiny_text.jsonl"):
        ids = [tokenizer.bos_token_id] + tokenizer(row["text"], add_special_tokens=False)[
            "input_ids"
        ]
        assert len(ids) <= 64
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        total_logp += sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids)))
        total_bytes += len(row["text"].encode())
    return math.exp(-total_logp / total_bytes)


def test_scores_local_tasks_like_our_own_forward_pass(tiny_lm, tmp_path):
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    log = tmp_path / "lm_eval.log"
    result = score_with_lm_eval(
        tiny_lm,
        [CHOICE, TEXT],
        include_path=str(TASKS_DIR),
        batch_size=2,
        bootstrap_iters=0,
        log=str(log),
    )
    assert "Setting random seed to 0" in log.read_text()  # lm-eval's lines, in the log
    # lm-eval seeds the global generators; the caller's states come back
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all()
    assert result["model"] == str(Path(tiny_lm).resolve())
    assert result["n_samples"][CHOICE]["effective"] == 6
    assert result["n_samples"][TEXT]["effective"] == 4
    acc, acc_norm = expected_choice_scores(tiny_lm)
    assert result["tasks"][CHOICE]["acc"] == pytest.approx(acc)
    assert result["tasks"][CHOICE]["acc_norm"] == pytest.approx(acc_norm)
    assert result["tasks"][CHOICE]["acc_stderr"] is None  # bootstrap_iters=0
    text = result["tasks"][TEXT]
    assert text["byte_perplexity"] == pytest.approx(expected_byte_perplexity(tiny_lm), rel=1e-4)
    assert text["word_perplexity"] > text["byte_perplexity"] > 1.0
    assert text["bits_per_byte"] == pytest.approx(math.log2(text["byte_perplexity"]))


def test_limit_and_mean_stderr(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no log given: a new file there
    result = score_with_lm_eval(tiny_lm, [CHOICE], include_path=str(TASKS_DIR), limit=3)
    (log,) = tmp_path.glob("longred_lm_eval_*.log")
    assert "Setting random seed to 0" in log.read_text()
    assert result["n_samples"][CHOICE] == {"original": 6, "effective": 3}
    assert result["tasks"][CHOICE]["acc_stderr"] is not None
    assert result["settings"]["limit"] == 3


def test_cli_writes_a_table_of_two_models(tmp_path, tiny_lm, capfd):
    other = save_tiny_lm(tmp_path / "other", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "lm_eval.log").write_text("an old run's log\n")
    (out / "old.txt").write_text("an old result")
    capfd.readouterr()  # saving the model above wrote a progress bar
    results = lm_eval_main(
        [
            tiny_lm,
            other,
            "--tasks",
            CHOICE,
            "--include-path",
            str(TASKS_DIR),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--bootstrap-iters",
            "0",
            "--no-progress",
            "--overwrite",
        ]
    )
    # lm-eval's own lines (seeds, contexts, progress bars) are in OUT/lm_eval.log, said once
    console = capfd.readouterr()
    log = out / "lm_eval.log"
    said = f"[longred lm-eval] lm-eval's log lines and progress bars go to {log} (tail -f it)"
    assert console.out.count(said) == 1 and console.err == ""
    assert "Setting random seed" not in console.out and "INFO" not in console.out
    text = log.read_text()
    assert "INFO [lm_eval.evaluator] Setting random seed to 0" in text
    assert text.count("Setting random seed") == 2  # one per model, this run's only
    assert "an old run's log" not in text and not (out / "old.txt").exists()
    saved = json.loads((out / "lm_eval.json").read_text())
    assert [m["name"] for m in saved["models"]] == [Path(tiny_lm).name, "other"]
    assert saved["models"][0]["tasks"] == results["models"][0]["tasks"]
    table = (out / "lm_eval.md").read_text().splitlines()
    assert table[0] == f"| model | {CHOICE} acc | {CHOICE} acc_norm |"
    assert len(table) == 4 and table[3].startswith("| other | ")


def test_bad_inputs_fail_before_any_model_loads(tmp_path, tiny_lm):
    with pytest.raises(UserError, match="longred_tiny_choice"):  # the close match is named
        lm_eval_main(
            [
                tiny_lm,
                "--tasks",
                "longred_tiny_choise",
                "--include-path",
                str(TASKS_DIR),
                "--out",
                str(tmp_path),
            ]
        )
    bare = tmp_path / "bare"
    save_tiny_lm(tmp_path / "with_tokenizer", seed=0)
    bare.mkdir()
    (bare / "config.json").write_text((tmp_path / "with_tokenizer" / "config.json").read_text())
    with pytest.raises(UserError, match="no tokenizer"):
        score_with_lm_eval(str(bare), [CHOICE], include_path=str(TASKS_DIR))
