"""`longred eval` and `longred select-layers` in-process on a tiny saved Llama and tiny shards."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
import yaml

from longred_pl.cli import main as longred
from longred_pl.errors import UserError
from longred_pl.eval.probes import PASSKEY_ANSWER_TOKENS


def eval_main(argv):
    return longred(["eval", *argv])


def select_layers_main(argv):
    return longred(["select-layers", *argv])


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_student(tiny_llama, tmp_path_factory) -> str:
    """The tiny teacher's weights with an ABF RoPE for a 4x window, saved as an HF directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from longred_pl.rope import extend_rope

    config = extend_rope(AutoConfig.from_pretrained(tiny_llama), "abf", 256, rope_theta=1e6)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, config=config)
    path = tmp_path_factory.mktemp("student")
    model.save_pretrained(path)
    return str(path)


def test_eval_writes_results_tables_and_plots(tiny_llama, tiny_student, tiny_shards, tmp_path):
    out = tmp_path / "eval"
    results = eval_main(
        [
            tiny_student,
            "--teacher",
            tiny_llama,
            "--short-data",
            tiny_shards["short"],
            "--short-seq-len",
            "16",
            "--long-data",
            tiny_shards["long"],
            "--long-seq-len",
            "256",
            "--num-short",
            "8",
            "--num-long",
            "2",
            "--buckets",
            "4",
            "--copy-span",
            "8",
            "--copy-trials",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["teacher"] == tiny_llama
    teacher, student = saved["models"]
    assert teacher["is_teacher"] and not student["is_teacher"]
    assert teacher["short_retention"] == pytest.approx(1.0)
    assert student["short_retention"] == pytest.approx(
        teacher["short"]["ppl"] / student["short"]["ppl"], rel=1e-5
    )
    assert student["short"]["tokens"] == 8 * 15
    assert [b["start"] for b in student["long"]["buckets"]] == [0, 64, 128, 192]
    assert sum(b["tokens"] for b in student["long"]["buckets"]) == 2 * 255
    # copy distances reach each model's own window: 64 - 2 * 8 - 1 (BOS) and 256 - 17.
    assert max(map(int, teacher["copy"]["accuracy"])) == 47
    assert max(map(int, student["copy"]["accuracy"])) == 239
    assert all(0.0 <= a <= 1.0 for a in student["copy"]["accuracy"].values())
    assert teacher["passkey"] is None

    table = (out / "results.md").read_text()
    assert "| model | window |" in table and "(teacher)" in table
    assert "| 192-256 |" in table and "| 239 | - |" in table
    # chance is printed as 1/vocab, not rounded to 0.0000, and results at chance are marked
    assert "chance = 1/vocab = 0.0078" in table and "one-sided exact binomial test" in table
    assert "| 0 | 0.000 ~ | 0.000 ~ |" in table  # a random model copies nothing
    for name in ("ppl_by_position.png", "copy_accuracy.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert len(results["plots"]) == 2


def test_eval_errors_name_the_flag(tiny_llama, tiny_shards, tmp_path):
    base = ["--short-data", tiny_shards["short"], "--short-seq-len", "16", "--out", str(tmp_path)]
    with pytest.raises(UserError, match="--long-seq-len needs --long-data"):
        eval_main([tiny_llama, *base, "--long-seq-len", "64"])
    with pytest.raises(UserError, match=r"--short-seq-len 17: .* hold 16-token samples"):
        eval_main([tiny_llama, *base[:2], "--short-seq-len", "17", *base[4:]])
    with pytest.raises(UserError, match="MODEL_DIR"):
        eval_main([str(tmp_path / "missing"), *base])
    with pytest.raises(UserError, match="--short-data"):
        eval_main([tiny_llama, *base[:1], str(tmp_path), *base[2:]])
    assert not (tmp_path / "results.json").exists()


def test_eval_reads_lengths_from_the_index_and_the_samples_validation_reads(
    tiny_llama, tiny_shards, tmp_path, monkeypatch
):
    """Without --short-seq-len / --long-seq-len the lengths come from index.json; --order
    spread reads every k-th sample, the ones a capped validation reads."""
    import longred_pl.eval.evaluator as evaluator
    from longred_pl.data.datamodule import FixedStream
    from longred_pl.data.index import stream_index
    from longred_pl.data.shards import StreamConfig

    seen: list[torch.Tensor] = []
    short_perplexity = evaluator._short_perplexity

    def spy(model, batches, seq_len, progress):
        batches = list(batches)
        seen.extend(batches)
        return short_perplexity(model, iter(batches), seq_len, progress)

    monkeypatch.setattr(evaluator, "_short_perplexity", spy)
    args = ["--short-data", tiny_shards["short"], "--long-data", tiny_shards["long"]]
    args += ["--num-short", "4", "--batch-size", "2", "--copy-distances", "0", "--no-progress"]
    results = eval_main([tiny_llama, *args, "--device", "cpu", "--out", str(tmp_path / "e")])
    row = results["models"][0]
    assert row["short"]["seq_len"] == 16 and row["long"]["seq_len"] == 256
    total = stream_index(tiny_shards["short"], "short").total
    assert total is not None and total >= 8  # so that spread differs from first
    cfg = StreamConfig(urls=tiny_shards["short"], seq_len=16, batch_size=2)
    validation = [b["input_ids"] for b in FixedStream("short", cfg, 0, 1, max_batches=2)]
    assert torch.equal(torch.cat(seen), torch.cat(validation))
    first = next(iter(evaluator.read_batches(tiny_shards["short"], 16, 4, 4, order="first")))
    assert not torch.equal(torch.cat(seen), first)


def test_select_layers_writes_a_distill_layers_snippet(tiny_llama, tiny_shards, tmp_path):
    out = tmp_path / "select"
    result = select_layers_main(
        [
            "--teacher",
            tiny_llama,
            "--rope-method",
            "abf",
            "--target-length",
            "256",
            "--rope-kwargs",
            '{"rope_theta": 1e6}',
            "--data",
            tiny_shards["short"],
            "--seq-len",
            "16",
            "--num-samples",
            "4",
            "--batch-size",
            "2",
            "--k",
            "1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    layers = yaml.safe_load((out / "distill_layers.yaml").read_text())["model"]["distill_layers"]
    n_layers = 2
    assert layers == result["distill_layers"]
    assert all(0 <= i <= n_layers for i in layers) and n_layers in layers
    assert len(layers) == 2
    drift = json.loads((out / "drift.json").read_text())
    assert len(drift["cosine"]) == n_layers + 1 and drift["num_tokens"] == 4 * 16
    assert drift["drift"][n_layers] > 0
    assert (out / "drift.png").read_bytes()[:8] == PNG
    assert "| index | cosine |" in (out / "drift.md").read_text()


def test_select_layers_errors_name_the_flag(tiny_llama, tiny_shards, tmp_path):
    base = ["--teacher", tiny_llama, "--data", tiny_shards["short"], "--out", str(tmp_path)]
    with pytest.raises(UserError, match=r"--rope-kwargs has unknown key\(s\) \['theta'\]"):
        select_layers_main(
            [*base, "--seq-len", "16", "--target-length", "256", "--rope-kwargs", '{"theta": 1}']
        )
    with pytest.raises(UserError, match="--target-length is required"):
        select_layers_main([*base, "--seq-len", "16"])
    with pytest.raises(UserError, match=r"--seq-len must be in \[2, 64\]"):
        select_layers_main([*base, "--seq-len", "128", "--target-length", "256"])


def test_evaluate_model_runs_passkey_with_the_model_directory_tokenizer(tmp_path, tiny_shards):
    from conftest import save_tiny_llama

    from longred_pl.arguments import ModelLoading
    from longred_pl.data.tokenizer import train_tokenizer
    from longred_pl.demo.corpora import Document
    from longred_pl.eval.evaluator import evaluate_model
    from longred_pl.eval.settings import EvalData, Probes

    model_dir = save_tiny_llama(tmp_path / "lm", vocab_size=300, window=512)
    text = "The pass key is 12345. Remember it. The grass is green. The sky is blue."
    train_tokenizer([Document("a", text)], 300, model_dir)
    probes = Probes(4, 1, [0], passkey=True, passkey_lengths=[320], passkey_depths=[0.5])
    cpu = ModelLoading(device="cpu")
    data = EvalData(tiny_shards["short"], 16, num_short=4)
    result = evaluate_model(model_dir, data, probes, cpu, progress=False)
    assert result["passkey"] == {"320": {"0.5": 0.0}}  # a random model never finds the key
    assert result["copy"]["accuracy"].keys() == {"0"}
    no_tokenizer = save_tiny_llama(tmp_path / "lm2")
    with pytest.raises(ValueError, match="--passkey needs a tokenizer"):
        evaluate_model(no_tokenizer, data, Probes(passkey=True), cpu, progress=False)


def test_eval_passkey_heatmap_at_the_full_window_and_ruler(
    tmp_path, tiny_shards, capfd, monkeypatch
):
    pytest.importorskip("lm_eval", reason="RULER needs lm-eval: pip install 'longred_pl[eval]'")
    pytest.importorskip(
        "wonderwords", reason="RULER needs wonderwords: pip install 'lm-eval[ruler]'"
    )
    from test_ruler import save_ruler_lm

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # lm-eval's log goes there

    student = save_ruler_lm(tmp_path / "student", window=1024)
    teacher = save_ruler_lm(tmp_path / "teacher", window=256)
    out = tmp_path / "eval"
    results = eval_main(
        [
            student,
            "--teacher",
            teacher,
            "--short-data",
            tiny_shards["short"],
            "--short-seq-len",
            "16",
            "--num-short",
            "4",
            "--copy-span",
            "4",
            "--copy-trials",
            "1",
            "--copy-distances",
            "0",
            "--passkey",
            "--passkey-depths",
            "0,1",
            "--ruler-lengths",
            "300",
            "--ruler-tasks",
            "niah_single_1,ruler_vt",  # variable tracking needs ~1000 tokens: skipped at 300
            "--ruler-limit",
            "1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    teacher_row, student_row = results["models"]
    # default lengths come from the largest window and end at it, less the answer's tokens
    full = str(1024 - PASSKEY_ANSWER_TOKENS)
    assert (
        list(student_row["passkey"])
        == list(teacher_row["passkey"])
        == [
            "128",
            "256",
            "512",
            full,
        ]
    )
    assert set(student_row["passkey"][full]) == {"0.0", "1.0"}
    for row in (teacher_row, student_row):
        assert row["ruler"]["tasks"] == {
            "niah_single_1": {"300": row["ruler"]["tasks"]["niah_single_1"]["300"]},
            "ruler_vt": {},
        }
        assert 0.0 <= row["ruler"]["tasks"]["niah_single_1"]["300"] <= 1.0
        assert list(row["ruler"]["skipped"]) == ["ruler_vt"]
        assert row["ruler"]["skipped"]["ruler_vt"]["300"].startswith("its smallest prompt")
    console = capfd.readouterr().out
    assert console.count("[longred ruler] ruler_vt at 300 tokens skipped: its smallest") == 2
    assert f"lm-eval's log lines and progress bars go to {tmp_path}/longred_lm_eval_" in console
    assert "Custom kwargs" not in console and "No aggregation" not in console
    table = (out / "results.md").read_text()
    assert "| teacher | ruler_vt | - |" in table
    assert f"| depth | 128 | 256 | 512 (> window) | {full} (> window) |" in table
    assert "| teacher | niah_single_1 | " in table and "RULER % (mean)" in table
    for name in ("copy_accuracy.png", "passkey_heatmap.png", "ruler.png"):
        assert (out / name).read_bytes()[:8] == PNG
