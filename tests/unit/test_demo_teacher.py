"""The demo teacher build on a tiny recipe: reloadable, learns, cached, YAML parses."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from longred_pl.cli import main
from longred_pl.demo import teacher
from longred_pl.demo.teacher import (
    TeacherRecipe,
    build_teacher,
    ensure_teacher,
    learning_curve,
    lr_factor,
    teacher_config,
    train,
)
from longred_pl.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TINY = TeacherRecipe(
    corpus_max_bytes=40_000,
    vocab_size=300,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    window=32,
    batch_size=4,
    steps=4,
    warmup=1,
    eval_rows=8,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not stall when other jobs hold a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(one_thread, tmp_path_factory) -> tuple[Path, bool]:
    rng_before = torch.random.get_rng_state()
    out = build_teacher(tmp_path_factory.mktemp("run") / "teacher", TINY, progress=False)
    return out, torch.equal(rng_before, torch.random.get_rng_state())


def _tiny_model(recipe: TeacherRecipe) -> LlamaForCausalLM:
    ids = SimpleNamespace(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(teacher_config(recipe, ids), attn_implementation="sdpa")


def test_build_writes_a_reloadable_teacher(built):
    out, rng_untouched = built
    assert rng_untouched, "the build must not move the global torch RNG"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM) and (out / "model.safetensors").is_file()
    assert model.config.max_position_embeddings == TINY.window
    assert model.config.num_key_value_heads == 1 and model.config.tie_word_embeddings
    assert model.config.rope_parameters["rope_theta"] == TINY.rope_theta
    assert len(tokenizer) == model.config.vocab_size == TINY.vocab_size
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert TeacherRecipe.from_dict(json.loads((out / "recipe.json").read_text())) == TINY
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokens_seen"] == TINY.steps * TINY.batch_size * TINY.window
    assert metrics["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert math.isclose(
        metrics["val/shakespeare/ppl"], math.exp(metrics["val/shakespeare/loss"]), rel_tol=1e-2
    )
    assert not out.with_name(out.name + ".partial").exists()


def test_cache_reuses_same_recipe_and_rebuilds_a_changed_one(built, monkeypatch, capsys):
    out, _ = built

    def no_training(*args):
        raise RuntimeError("retrained")

    monkeypatch.setattr(teacher, "_train_into", no_training)
    assert ensure_teacher(out, TINY) == out
    assert "reusing teacher" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="retrained"):
        build_teacher(out, dataclasses.replace(TINY, steps=5), progress=False)
    with pytest.raises(RuntimeError, match="retrained"):
        build_teacher(out, TINY, progress=False, force=True)
    assert (out / "metrics.json").is_file()  # a failed rebuild leaves the old teacher


def test_loss_decreases_on_a_repeated_batch():
    recipe = dataclasses.replace(TINY, steps=30, warmup=2, lr=1e-2)
    model = _tiny_model(recipe)
    row_T = torch.randint(
        2, recipe.vocab_size, (recipe.window,), generator=torch.Generator().manual_seed(1)
    )
    stats = train(model, row_T.repeat(recipe.batch_size, 1), recipe, progress=False)
    assert len(stats["losses"]) == 30
    assert stats["losses"][-1] < 0.5 * stats["losses"][0]


def test_learning_curve_measures_held_out_loss_every_n_steps_and_at_the_end():
    recipe = dataclasses.replace(TINY, steps=7, warmup=1, lr=1e-2, eval_rows=2)
    model = _tiny_model(recipe)
    gen = torch.Generator().manual_seed(1)
    rows = torch.randint(2, recipe.vocab_size, (4, recipe.window), generator=gen)
    val = {"a": rows[:2], "b": rows[2:]}
    curve, after_step = learning_curve(model, val, recipe, every=3)
    train(model, rows, recipe, progress=False, after_step=after_step)
    assert model.training  # the hook hands the model back in train mode
    assert [p["step"] for p in curve] == [3, 6, 7]
    assert curve[-1]["tokens"] == 7 * recipe.batch_size * recipe.window
    assert curve[-1]["val/a/loss"] == pytest.approx(teacher.evaluate(model, val["a"], 4), abs=1e-4)
    assert curve[-1]["val/a/loss"] < curve[0]["val/a/loss"]  # trained on these very rows


def test_lr_schedule_warms_up_then_decays_to_min():
    recipe = TeacherRecipe(steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, recipe) == pytest.approx(0.1)
    assert lr_factor(9, recipe) == pytest.approx(1.0)
    assert lr_factor(10, recipe) == pytest.approx(1.0)
    assert lr_factor(100, recipe) == pytest.approx(0.1)
    factors = [lr_factor(s, recipe) for s in range(10, 101)]
    assert factors == sorted(factors, reverse=True)


def test_recipe_validation():
    with pytest.raises(ValueError, match="recipe.steps must be > 0"):
        TeacherRecipe(steps=0)
    with pytest.raises(ValueError, match="known corpora"):
        TeacherRecipe(corpora=("wiki",))
    with pytest.raises(ValueError, match="num_heads"):
        TeacherRecipe(num_heads=3)
    with pytest.raises(ValueError, match="unknown teacher recipe keys: \\['layers'\\]"):
        TeacherRecipe.from_dict({"layers": 3})


def test_shipped_yaml_is_the_default_recipe():
    recipe = TeacherRecipe.from_file(REPO / "configs/teacher/tiny-llama.yaml")
    assert recipe == TeacherRecipe()
    assert recipe.window == 256 and recipe.corpora == ("shakespeare",)


def test_refuses_a_non_teacher_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no teacher"):
        build_teacher(tmp_path, TINY, progress=False)


def test_cli_recipe_file_and_overrides(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        teacher, "build_teacher", lambda out, recipe, **kw: seen.update(recipe=recipe, **kw)
    )
    (tmp_path / "r.json").write_text(json.dumps(TINY.to_dict()))
    main(
        [
            "build-teacher",
            "--out",
            str(tmp_path / "t"),
            "--recipe",
            str(tmp_path / "r.json"),
            "--steps",
            "7",
            "--corpora",
            "shakespeare",
            "python",
            "--no-progress",
        ]
    )
    assert seen["recipe"] == dataclasses.replace(TINY, steps=7, corpora=("shakespeare", "python"))
    assert seen["progress"] is False and seen["force"] is False


def test_cli_refuses_a_teacher_of_another_recipe_without_force(tmp_path, monkeypatch):
    out = tmp_path / "t"
    out.mkdir()
    (out / teacher.RECIPE_FILE).write_text(json.dumps(TINY.to_dict()))  # unfinished / other
    calls = []
    monkeypatch.setattr(teacher, "build_teacher", lambda *a, **kw: calls.append(kw))
    (tmp_path / "r.json").write_text(json.dumps(TINY.to_dict()))
    with pytest.raises(UserError, match=r"--out: .* holds a teacher of another recipe .*--force"):
        main(
            [
                "build-teacher",
                "--out",
                str(out),
                "--recipe",
                str(tmp_path / "r.json"),
                "--steps",
                "9",
                "--no-progress",
            ]
        )
    assert calls == [] and (out / teacher.RECIPE_FILE).exists()
    main(
        [
            "build-teacher",
            "--out",
            str(out),
            "--recipe",
            str(tmp_path / "r.json"),
            "--steps",
            "9",
            "--force",
            "--no-progress",
        ]
    )
    assert calls and calls[0]["force"] is True
