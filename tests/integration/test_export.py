"""`longred export` on a tiny run: weights, tokenizer (or a warning), model card, bad checkpoints."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tests_helpers import fit_config

from longred_pl.cli import main
from longred_pl.cli import main as longred
from longred_pl.errors import UserError


def export_main(argv):
    return longred(["export", *argv])


def eval_main(argv):
    return longred(["eval", *argv])


# 2 optimizer steps x 4 micro-steps of [long, s2l, long, short] (tests_helpers.fit_config):
# long 4 x 1 x 256, s2l 2 x 2 x 64, short 2 x 4 x 16 tokens
TOKENS = {"long": 4 * 1 * 256, "s2l": 2 * 2 * 64, "short": 2 * 4 * 16}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_shards) -> dict[str, Path]:
    """A 2-step LongReD fit whose teacher is a copy of the tiny Llama (no tokenizer)."""
    from conftest import save_tiny_llama

    root = tmp_path_factory.mktemp("run")
    teacher = save_tiny_llama(tmp_path_factory.mktemp("teacher"))  # not in the run's folder
    main(["fit", "--config", fit_config(root, teacher, tiny_shards, max_steps=2)])
    (ckpt,) = glob.glob(str(root / "ckpt" / "*step=2.ckpt"))
    return {"root": root, "teacher": Path(teacher), "ckpt": Path(ckpt)}


def save_word_tokenizer(path: Path, size: int) -> str:
    """A word-level tokenizer of ``size`` tokens (byte-level BPE needs more than 128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(path)
    return str(path)


def card(out: Path) -> tuple[dict, str]:
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def json_of(path: Path) -> dict:
    return json.loads(path.read_text())


def moved_teacher(run, tmp_path, name="teacher") -> tuple[Path, Path]:
    """A copy of the run's teacher and a copy of its checkpoint that names it."""
    teacher = tmp_path / name
    shutil.copytree(run["teacher"], teacher)
    ckpt = torch.load(run["ckpt"], weights_only=True)
    ckpt["hyper_parameters"]["teacher_path"] = str(teacher)
    torch.save(ckpt, tmp_path / "moved.ckpt")
    return teacher, tmp_path / "moved.ckpt"


def test_export_writes_the_student_and_a_model_card(run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = export_main([str(run["ckpt"]), str(tmp_path / "hf"), "--base-model", "org/tiny"])
    student = AutoModelForCausalLM.from_pretrained(out)
    ckpt = torch.load(run["ckpt"], weights_only=True)
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][f"student.{name}"], msg=name)
    front, body = card(out)
    assert front["library_name"] == "transformers" and front["base_model"] == "org/tiny"
    assert front["tags"] == ["longred", "long-context", "rope-abf"]
    assert "| context window (tokens) | 64 | 256 |" in body
    assert "| RoPE scaling | none (default) | none (default) |" in body
    assert "| RoPE base frequency (rope_theta) | 10000 | 40000 |" in body
    assert "- RoPE: base frequency (rope_theta) 10000 -> 40000 (abf); context window 64" in body
    assert "`L = L_long + 5 * L_short + 10 * L_s2l`" in body
    assert "Distilled hidden states (`L_short`): [1, 2] (0 = embeddings, 2 = final" in body
    assert "Stream settings from `lightning_logs/version_0/config.yaml`" in body  # in the run
    assert "| long | `long` | 256 | 1 | 24 | random | tests |" in body  # index.json
    assert "2 optimizer steps, 8 micro-steps, 1 rank(s); checkpoint `ckpt/epoch=0-step=2" in body
    total = sum(TOKENS.values())
    assert f"Tokens trained: {total:,} (long 1,024, short 128, s2l 256)." in body
    assert "- Optimizer: `AdamW` (lr 0.001, betas (0.9, 0.999), eps 1e-08, weight_decay" in body
    assert "- Learning-rate schedule: constant (no `lr_scheduler`)." in body
    assert "- Trainer: max_steps 2, accumulate_grad_batches 4." in body
    # validation every 8 micro-steps = after optimizer step 2, logged by the CSVLogger
    assert "Held-out validation after optimizer step 2 (from `lightning_logs/version_0/" in body
    assert "| short-text retention (base ppl / this ppl; 1 = no loss) (`val/ppl_ret" in body
    assert "Not evaluated yet" in body
    assert f"[longred] exported to {out}" in capsys.readouterr().out
    text = (out / "README.md").read_text()
    assert str(tmp_path.parents[1]) not in text  # no absolute local path (pytest's base temp)


def test_the_export_is_ready_for_inference(run, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    words = save_word_tokenizer(tmp_path / "words", 100)
    assert json_of(Path(words) / "tokenizer_config.json")["model_max_length"] > 1e20
    assert json_of(run["teacher"] / "config.json")["use_cache"] is True
    out = export_main([str(run["ckpt"]), str(tmp_path / "hf"), "--tokenizer", words])
    assert json_of(out / "config.json")["use_cache"] is True  # training turns it off
    assert AutoTokenizer.from_pretrained(out).model_max_length == 256  # the new window
    generation = json_of(out / "generation_config.json")
    assert generation == json_of(run["teacher"] / "generation_config.json")  # the teacher's
    assert GenerationConfig.from_pretrained(out).eos_token_id == 2
    body = card(out)[1]
    assert "`model_max_length` = 256 (this model's context window)" in body
    assert "`generation_config.json` copied from `" in body
    # a teacher without generation_config.json: derived from config.json's token ids
    teacher, ckpt = moved_teacher(run, tmp_path)
    (teacher / "generation_config.json").unlink()
    out = export_main([str(ckpt), str(tmp_path / "derived")])
    assert json_of(out / "generation_config.json")["eos_token_id"] == 2
    assert (
        "derived from `config.json` (bos_token_id 1, eos_token_id 2, pad_token_id None)"
        in (card(out)[1])
    )
    # a generation max_length of the old window becomes the new window
    (teacher / "generation_config.json").write_text(
        json.dumps({"max_length": 64, "eos_token_id": 2})
    )
    out = export_main([str(ckpt), str(tmp_path / "long")])
    assert json_of(out / "generation_config.json")["max_length"] == 256


def test_the_card_takes_base_model_and_license_from_the_teacher(run, tmp_path, capsys):
    teacher, ckpt = moved_teacher(run, tmp_path)
    config = json_of(teacher / "config.json")
    (teacher / "config.json").write_text(json.dumps({**config, "_name_or_path": "org/tiny-base"}))
    front_matter = {"license": "other", "license_name": "tiny-license", "license_link": "LICENSE"}
    (teacher / "README.md").write_text("---\n" + yaml.safe_dump(front_matter) + "---\n# tiny\n")
    (teacher / "LICENSE").write_text("the tiny license\n")
    out = export_main([str(ckpt), str(tmp_path / "hf")])
    front, body = card(out)
    assert front["base_model"] == "org/tiny-base" and front["license_name"] == "tiny-license"
    assert front["license"] == "other" and front["license_link"] == "LICENSE"
    assert (out / "LICENSE").read_text() == "the tiny license\n"  # the link resolves
    assert "[org/tiny-base](https://huggingface.co/org/tiny-base) (64 tokens)" in body
    assert "`tiny-license`, the base model's" in body
    printed = capsys.readouterr().out
    assert "model card: base_model org/tiny-base (from teacher: `_name_or_path` in its" in printed
    out = export_main([str(ckpt), str(tmp_path / "given"), "--base-model", "me/other"])
    assert card(out)[0]["base_model"] == "me/other"  # --base-model overrides
    with pytest.raises(UserError, match=r"^--base-model: '/models/tiny' is not a Hugging Face"):
        export_main([str(ckpt), str(tmp_path / "bad"), "--base-model", "/models/tiny"])
    assert not (tmp_path / "bad").exists()
    front, body = card(export_main([str(run["ckpt"]), str(tmp_path / "unknown")]))
    assert "base_model" not in front and "license" not in front  # nothing known: nothing said
    assert f"`{run['teacher'].name}` (64 tokens; a local directory, its Hub id not known)" in body


def test_a_teacher_without_tokenizer_is_said_on_one_line(run, tmp_path, capsys):
    out = export_main([str(run["ckpt"]), str(tmp_path / "hf")])
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1
    assert f"no tokenizer in '{run['teacher']}'" in err[0] and "--tokenizer DIR" in err[0]
    assert not (out / "tokenizer.json").exists()
    assert "**None in this directory**" in card(out)[1]


def test_the_tokenizer_comes_from_the_teacher_or_the_flag(run, tmp_path, capsys):
    from transformers import AutoTokenizer

    words = save_word_tokenizer(tmp_path / "words", 100)
    out = export_main([str(run["ckpt"]), str(tmp_path / "a"), "--tokenizer", words])
    assert len(AutoTokenizer.from_pretrained(out)) == 100
    assert "Copied from `words`: tokenizer.json" in card(out)[1]
    with pytest.raises(UserError, match="--tokenizer: .* has no tokenizer"):
        export_main([str(run["ckpt"]), str(tmp_path / "b"), "--tokenizer", str(run["root"])])
    big = save_word_tokenizer(tmp_path / "big", 300)
    with pytest.raises(UserError, match="300 tokens, more than the model's vocab_size 128"):
        export_main([str(run["ckpt"]), str(tmp_path / "c"), "--tokenizer", big])
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    teacher, ckpt = moved_teacher(run, tmp_path, "teacher_with_tokenizer")
    shutil.copy(Path(words) / "tokenizer.json", teacher)  # what a real run's teacher holds
    capsys.readouterr()
    out = export_main([str(ckpt), str(tmp_path / "d")])
    assert (out / "tokenizer.json").read_bytes() == (teacher / "tokenizer.json").read_bytes()
    assert "warning" not in capsys.readouterr().err


def test_unreadable_checkpoints_are_named_with_the_fix(run, tmp_path):
    ckpts = tmp_path / "ckpt"
    ckpts.mkdir()
    data = run["ckpt"].read_bytes()
    (ckpts / "last.ckpt").write_bytes(data)
    (ckpts / "step=4.ckpt").write_bytes(data[: len(data) // 2])
    (ckpts / "empty.ckpt").write_bytes(b"")
    for name in ("step=4.ckpt", "empty.ckpt"):
        path = ckpts / name
        with pytest.raises(UserError) as caught:
            export_main([str(path), str(tmp_path / "out")])
        message = str(caught.value)
        assert str(path) in message and "truncated" in message and "\n" not in message
        assert f"use another checkpoint of the run, e.g. {ckpts / 'last.ckpt'}" in message
    torch.save({"epoch": 1}, ckpts / "other.ckpt")
    with pytest.raises(UserError, match="not a LongReDModule checkpoint"):
        export_main([str(ckpts / "other.ckpt"), str(tmp_path / "out")])
    with pytest.raises(UserError, match="does not exist"):
        export_main([str(ckpts / "missing.ckpt"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_the_evaluation_table_goes_into_the_card(run, tiny_shards, tmp_path, capsys):
    out = export_main([str(run["ckpt"]), str(tmp_path / "hf")])
    eval_main(
        [
            str(out),
            "--teacher",
            str(run["teacher"]),
            "--short-data",
            tiny_shards["short"],
            "--short-seq-len",
            "16",
            "--num-short",
            "4",
            "--copy-trials",
            "1",
            "--copy-distances",
            "0",
            "--out",
            str(out / "eval"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    results = out / "eval" / "results.json"
    export_main([str(run["ckpt"]), str(out)])  # found beside: it scored this directory
    assert f"model card: evaluation from {results}" in capsys.readouterr().out
    body = card(out)[1]
    assert "From `eval/results.json`:" in body and "| model | window | RoPE | short ppl |" in body
    assert "| hf (this model) | 256 | theta=40000 |" in body  # rows named by model
    assert f"| {run['teacher'].name} (base model) | 64 |" in body and "(teacher)" not in body
    assert str(tmp_path) not in (out / "README.md").read_text()
    other = export_main([str(run["ckpt"]), str(tmp_path / "other")])
    assert "Not evaluated yet" in card(other)[1]  # that results.json scored another directory
    export_main([str(run["ckpt"]), str(other), "--eval-results", str(results)])
    assert "From `../hf/eval/results.json`:" in card(other)[1]  # relative to this export
    with pytest.raises(UserError, match="--eval-results: .* is not a results.json"):
        export_main([str(run["ckpt"]), str(other), "--eval-results", str(out / "config.json")])


def test_export_at_the_end_of_fit_writes_the_card_too(run):
    front, body = card(run["root"] / "student")
    assert front["tags"][0] == "longred"
    assert "Stream settings from `the run's data module`" in body
    assert f"Tokens trained: {sum(TOKENS.values()):,}" in body
    assert "- Optimizer: `AdamW` (lr 0.001," in body
    assert "Held-out validation after optimizer step 2 (from `lightning_logs/version_0/" in body
    assert json_of(run["root"] / "student" / "config.json")["use_cache"] is True
    assert str(run["root"]) not in (run["root"] / "student" / "README.md").read_text()


def test_another_checkpoint_into_a_used_export_is_refused_or_replaced_whole(run, tmp_path):
    out = export_main([str(run["ckpt"]), str(tmp_path / "hf")])
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")  # scored these weights
    export_main([str(run["ckpt"]), str(out)])  # the same checkpoint: updated in place
    assert (out / "eval" / "results.json").exists()
    other = tmp_path / "other.ckpt"
    shutil.copy(run["ckpt"], other)
    with pytest.raises(
        UserError, match=r"OUT: '.*hf' is not empty; pass a new directory, or --overwrite"
    ):
        export_main([str(other), str(out)])
    assert (out / "eval" / "results.json").exists()  # refused: nothing lost
    export_main([str(other), str(out), "--overwrite"])
    assert not (out / "eval").exists()  # replaced whole: no evaluation of other weights left
    assert str(other) in (out / "export.json").read_text()
