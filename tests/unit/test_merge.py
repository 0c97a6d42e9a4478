"""``longred merge``: weight interpolation of a student and its teacher, config and errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import save_tiny_llama
from safetensors.torch import load_file

from longred_pl import cli
from longred_pl.errors import UserError
from longred_pl.merge import interpolate_state_dicts, merge_models

STUDENT_ROPE = {"rope_type": "default", "rope_theta": 40000.0}


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "model.safetensors"))


def _config(path) -> dict:
    with open(os.path.join(path, "config.json")) as handle:
        return json.load(handle)


def _with_rope(path, rope: dict, window: int = 256) -> str:
    """Give the saved model at ``path`` another RoPE config (as ``longred export`` does)."""
    config = _config(path)
    config.update(rope_parameters=rope, max_position_embeddings=window)
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump(config, handle)
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    """A tiny teacher and a student with other weights (seed) and a larger rope theta."""
    root = tmp_path_factory.mktemp("merge")
    teacher = save_tiny_llama(root / "teacher", seed=0)
    student = _with_rope(save_tiny_llama(root / "student", seed=1), STUDENT_ROPE)
    return student, teacher


def test_the_two_models_differ(pair):
    student, teacher = _weights(pair[0]), _weights(pair[1])
    assert all(not torch.equal(student[k], teacher[k]) for k in student if "norm" not in k)


def test_alpha_one_is_the_student_exactly(pair, tmp_path):
    out = merge_models(*pair, str(tmp_path / "out"), alpha=1.0)
    merged, student = _weights(out), _weights(pair[0])
    assert merged.keys() == student.keys()
    assert all(torch.equal(merged[k], student[k]) for k in student)
    assert _config(out)["rope_parameters"] == STUDENT_ROPE
    assert _config(out)["max_position_embeddings"] == 256


def test_alpha_zero_is_the_teacher_weights_under_the_student_rope(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_models(*pair, str(tmp_path / "out"), alpha=0.0)
    merged, teacher = _weights(out), _weights(pair[1])
    assert all(torch.equal(merged[k], teacher[k]) for k in teacher)
    assert _config(out)["rope_parameters"] == STUDENT_ROPE
    model = AutoModelForCausalLM.from_pretrained(out)  # inv_freq is derived from the config
    student = AutoModelForCausalLM.from_pretrained(pair[0])
    original = AutoModelForCausalLM.from_pretrained(pair[1])
    freq = model.model.rotary_emb.inv_freq
    assert torch.equal(freq, student.model.rotary_emb.inv_freq)
    assert not torch.allclose(freq, original.model.rotary_emb.inv_freq)


def test_alpha_quarter_is_the_weighted_sum_of_every_tensor(pair, tmp_path):
    out = merge_models(*pair, str(tmp_path / "out"), alpha=0.25)
    merged, student, teacher = _weights(out), _weights(pair[0]), _weights(pair[1])
    assert merged.keys() == student.keys()
    for key in student:
        expected = 0.25 * student[key] + 0.75 * teacher[key]
        assert merged[key].dtype == student[key].dtype
        torch.testing.assert_close(merged[key], expected, atol=1e-6, rtol=0, msg=key)
    record = json.loads((out / "merge.json").read_text())
    assert record["alpha"] == 0.25
    assert record["student"] == os.path.abspath(pair[0])
    assert record["teacher"] == os.path.abspath(pair[1])


def test_half_merge_loads_and_its_logits_differ_from_both(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    out = merge_models(*pair, str(tmp_path / "out"), alpha=0.5)
    ids = torch.arange(16).unsqueeze(0)
    logits = {}
    for name, path in {"merged": out, "student": pair[0], "teacher": pair[1]}.items():
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            logits[name] = model(ids).logits
    assert logits["merged"].isfinite().all()
    assert not torch.allclose(logits["merged"], logits["student"], atol=1e-4)
    assert not torch.allclose(logits["merged"], logits["teacher"], atol=1e-4)


def test_saved_in_the_student_dtype(pair, tmp_path):
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "bf16_student"
    AutoModelForCausalLM.from_pretrained(pair[0], dtype=torch.bfloat16).save_pretrained(bf16)
    out = merge_models(str(bf16), pair[1], str(tmp_path / "out"), alpha=0.25)
    merged, student, teacher = _weights(out), _weights(bf16), _weights(pair[1])
    for key in student:
        assert merged[key].dtype == torch.bfloat16
        expected = (0.25 * student[key].float() + 0.75 * teacher[key]).to(torch.bfloat16)
        assert torch.equal(merged[key], expected), key  # mixed in float32, rounded once


def test_tokenizer_from_the_student_else_the_teacher(tmp_path):
    student, teacher = tmp_path / "student", tmp_path / "teacher"
    save_tiny_llama(student, seed=1)
    save_tiny_llama(teacher, seed=0)
    (teacher / "tokenizer.json").write_text('{"from": "teacher"}')
    out = merge_models(str(student), str(teacher), str(tmp_path / "a"))
    assert (out / "tokenizer.json").read_text() == '{"from": "teacher"}'
    (student / "tokenizer.json").write_text('{"from": "student"}')
    out = merge_models(str(student), str(teacher), str(tmp_path / "b"))
    assert (out / "tokenizer.json").read_text() == '{"from": "student"}'
    assert json.loads((out / "merge.json").read_text())["tokenizer"] == str(student)


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan")])
def test_alpha_outside_unit_interval_is_refused(pair, tmp_path, alpha):
    with pytest.raises(UserError, match=r"^--alpha: .* outside \[0, 1\]"):
        merge_models(*pair, str(tmp_path / "out"), alpha=alpha)
    assert not (tmp_path / "out").exists()


def test_directory_without_config_is_refused(pair, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^TEACHER: .* has no config.json"):
        merge_models(pair[0], str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(UserError, match=r"^STUDENT: .* is not a directory"):
        merge_models(str(tmp_path / "missing"), pair[1], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_different_hidden_size_is_refused(pair, tmp_path):
    wide = save_tiny_llama(tmp_path / "wide", hidden=64)
    with pytest.raises(UserError, match=r"^hidden_size: .*hidden_size=32 in STUDENT, 64 in TEACH"):
        merge_models(pair[0], wide, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_non_empty_out_is_refused_unless_overwrite(pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    with pytest.raises(UserError, match=r"^OUT: .* not empty; .*--overwrite"):
        merge_models(*pair, str(out))
    assert sorted(os.listdir(out)) == ["old.txt"]
    merge_models(*pair, str(out), alpha=1.0, overwrite=True)
    assert torch.equal(_weights(out)["lm_head.weight"], _weights(pair[0])["lm_head.weight"])
    assert "old.txt" not in os.listdir(out)  # replaced whole, not mixed
    with pytest.raises(UserError, match=r"^OUT: .* holds STUDENT .*write to another directory"):
        merge_models(*pair, pair[0], overwrite=True)


def test_state_dicts_that_differ_are_refused():
    s = {"a": torch.ones(2), "b": torch.ones(3)}
    with pytest.raises(UserError, match=r"keys differ: 'b' is in STUDENT only"):
        interpolate_state_dicts(s, {"a": torch.ones(2)}, 0.5)
    with pytest.raises(UserError, match=r"shapes differ: 'b' is \(3,\) in STUDENT and \(4,\)"):
        interpolate_state_dicts(s, {"a": torch.ones(2), "b": torch.ones(4)}, 0.5)
    ints = {"steps": torch.tensor([1, 2])}
    with pytest.raises(UserError, match=r"non-float tensor 'steps'"):
        interpolate_state_dicts(ints, {"steps": torch.tensor([1, 3])}, 0.5)
    assert torch.equal(interpolate_state_dicts(ints, dict(ints), 0.5)["steps"], ints["steps"])


def test_rope_frequencies_are_the_students():
    s = {"w": torch.full((2,), 4.0), "rotary_emb.inv_freq": torch.tensor([1.0, 0.5])}
    t = {"w": torch.zeros(2), "rotary_emb.inv_freq": torch.tensor([1.0, 0.1])}
    merged = interpolate_state_dicts(s, t, 0.25)
    assert torch.equal(merged["w"], torch.full((2,), 1.0))
    assert torch.equal(merged["rotary_emb.inv_freq"], s["rotary_emb.inv_freq"])
    assert interpolate_state_dicts(s, {"w": torch.zeros(2)}, 0.5).keys() == s.keys()


def test_shell_form(pair, tmp_path):
    out = tmp_path / "out"
    result = cli.main(["merge", pair[0], pair[1], str(out), "--alpha", "0.5"])
    assert result == out
    record = json.loads((out / "merge.json").read_text())
    assert record["alpha"] == 0.5 and record["student"] == os.path.abspath(pair[0])
    with pytest.raises(UserError, match="^OUT: "):
        cli.main(["merge", pair[0], pair[1], str(out), "--alpha=0.5"])
    cli.main(["merge", pair[0], pair[1], str(out), "--alpha=1", "--overwrite"])
    assert json.loads((out / "merge.json").read_text())["alpha"] == 1.0


def test_the_merge_is_ready_for_the_hub_with_a_card_naming_both_parents(tmp_path):
    import yaml

    teacher = save_tiny_llama(tmp_path / "base", seed=0)
    student = _with_rope(save_tiny_llama(tmp_path / "student", seed=1), STUDENT_ROPE)
    config = _config(student)
    config["use_cache"] = False  # as training left it (exports before this fix)
    (tmp_path / "student" / "config.json").write_text(json.dumps(config))
    card = {"base_model": "org/tiny", "license": "apache-2.0", "tags": ["longred", "rope-abf"]}
    (tmp_path / "student" / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n")
    (tmp_path / "student" / "tokenizer.json").write_text('{"from": "student"}')
    out = merge_models(student, teacher, str(tmp_path / "merged"), alpha=0.75)
    assert _config(out)["use_cache"] is True
    tokenizer = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 256  # the student's window, not the teacher's 64
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    assert yaml.safe_load(front) == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "base_model": "org/tiny",  # the student's card names its base model
        "license": "apache-2.0",
        "tags": ["longred", "long-context", "merge"],
    }
    assert "**alpha = 0.75**" in body
    assert "| student (share alpha = 0.75) | `student` | 256 |" in body
    assert "| base model (share 1 - alpha = 0.25) | `base` (org/tiny) | 64 |" in body
    assert "RoPE base frequency (rope_theta) 10000 -> 40000" in body
    assert str(tmp_path) not in text


def test_merge_base_model_flag_overrides_and_is_checked_before_anything_is_written(tmp_path):
    import yaml

    teacher = save_tiny_llama(tmp_path / "base", seed=0)
    student = _with_rope(save_tiny_llama(tmp_path / "student", seed=1), STUDENT_ROPE)
    with pytest.raises(UserError, match="--base-model: 'not an id' is not a Hugging Face Hub id"):
        merge_models(student, teacher, str(tmp_path / "bad"), base_model="not an id")
    assert not (tmp_path / "bad").exists()
    out = merge_models(student, teacher, str(tmp_path / "m"), base_model="org/base-8b")
    front = (out / "README.md").read_text().split("---\n", 2)[1]
    assert yaml.safe_load(front)["base_model"] == "org/base-8b"
