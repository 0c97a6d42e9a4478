"""Model card pieces: tokens trained, stream settings, run config lookup, baseline wording."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from longred_pl.data.shards import StreamConfig
from longred_pl.errors import UserError
from longred_pl.eval.model_card import (
    base_model_of,
    check_base_model,
    eval_markdown,
    find_run_config,
    hub_id_of,
    license_of,
    optimization_from_config,
    render_card,
    render_merge_card,
    rope_change,
    shown,
    streams_from,
    tokens_trained,
    validation_from_csv,
)

STREAMS = {
    "long": {"urls": "/d/long", "seq_len": 1024, "batch_size": 1},
    "short": {"urls": "/d/short", "seq_len": 128, "batch_size": 8},
    "s2l": {"urls": "/d/s2l", "seq_len": 256, "batch_size": 4},
}


def test_tokens_trained_counts_each_kind_over_whole_and_partial_periods():
    # 6 micro-steps of [long, s2l, long, short]: long, s2l, long, short, long, s2l
    tokens = tokens_trained(STREAMS, ["long", "s2l", "long", "short"], 6, world=2)
    assert tokens == {
        "long": 3 * 1 * 1024 * 2,
        "short": 1 * 8 * 128 * 2,
        "s2l": 2 * 4 * 256 * 2,
        "total": 2 * (3 * 1024 + 8 * 128 + 2 * 4 * 256),
    }
    assert tokens_trained({}, ["long"], 6, world=1) is None  # settings unknown: say so


def test_stream_settings_from_the_checkpoint_or_the_run_config(tmp_path):
    ckpt = {"datamodule_hyper_parameters": {"long": StreamConfig("/d/long", 1024, 1)}}
    assert streams_from(ckpt, None) == {"long": STREAMS["long"]}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {**STREAMS, "val_short": None}}))
    assert streams_from({}, str(config)) == STREAMS
    assert streams_from({}, None) == {}


def test_the_run_config_is_the_newest_one_of_this_teacher(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    old, new, other = (tmp_path / "run" / "logs" / f"version_{i}" / "config.yaml" for i in range(3))
    for i, (path, teacher) in enumerate(((old, "/t"), (new, "/t"), (other, "/elsewhere"))):
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump({"model": {"teacher_path": teacher}}))
        os.utime(path, (time.time() + i, time.time() + i))
    assert find_run_config(str(ckpt), "/t") == str(new)
    assert find_run_config(str(ckpt), "/nowhere") is None


def test_a_baseline_card_names_its_method_and_unknown_data():
    facts = {
        "name": "cpt",
        "teacher_path": "/t",
        "n_layers": 4,
        "method": "long_cpt",
        "teacher": {"window": 256, "rope": {"rope_type": "default", "rope_theta": 1e4}},
        "student": {
            "window": 1024,
            "rope": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4},
        },
        "rope_method": "pi",
        "rope_kwargs": {},
        "short_weight": None,
        "s2l_weight": None,
        "distill_layers": None,
        "s2l_positions": None,
        "position_kwargs": {},
        "data": {},
        "streams_from": None,
        "steps": 10,
        "micro_steps": 160,
        "world_size": 1,
        "tokens": None,
        "tokenizer": None,
        "evaluation": [],
    }
    text = render_card(facts)
    _, front, body = text.split("---\n", 2)
    assert yaml.safe_load(front) == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["longred", "long-context", "rope-pi", "long-cpt"],
    }
    assert "| RoPE scaling | none (default) | linear position interpolation (linear) |" in body
    assert "| RoPE scaling factor (factor) | - | 4 |" in body
    assert "| RoPE base frequency (rope_theta) | 10000 | 10000 |" in body
    assert "- RoPE: scaling none (default) -> linear position interpolation (linear); " in body
    assert "default rope_theta" not in body  # the type no longer reads as a setting
    assert "Method: `long_cpt` (baseline" in body and "Distilled" not in body
    assert "Unknown: the checkpoint holds no stream settings" in body
    assert "Tokens trained: unknown" in body


def test_the_rope_change_in_words():
    default = {"rope_type": "default", "rope_theta": 10000.0}
    abf = {"rope_type": "default", "rope_theta": 80000.0}
    assert rope_change(default, abf, "abf") == "base frequency (rope_theta) 10000 -> 80000 (abf)"
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0}
    assert rope_change(default, yarn) == (
        "scaling none (default) -> YaRN (yarn); YaRN beta_fast (beta_fast) 32; "
        "scaling factor (factor) 4"
    )
    assert rope_change(default, default, "none") == "unchanged (none)"


def test_local_paths_are_shown_relative_to_the_run_or_by_name(tmp_path):
    run = tmp_path / "run"
    assert (
        shown(str(run / "logs" / "version_0" / "config.yaml"), run) == "logs/version_0/config.yaml"
    )
    assert shown(str(tmp_path / "elsewhere" / "teacher"), run) == "teacher"
    assert shown(str(tmp_path / "data" / "long"), None) == "long"
    assert shown("artifacts/data/long", run) == "artifacts/data/long"  # relative: as given
    assert shown("s3://bucket/long/{0..9}.tar", run) == "s3://bucket/long/{0..9}.tar"
    assert shown([str(tmp_path / "a"), "b"]) == "a, b"


def _model_dir(path, config=None, card=None, tokenizer=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    if card is not None:
        (path / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n# card\n")
    if tokenizer is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return path


def test_the_base_models_hub_id_from_the_teacher_where_it_can_be_known(tmp_path):
    cache = tmp_path / "hub" / "models--meta-llama--Meta-Llama-3-8B" / "snapshots" / "abc123"
    assert hub_id_of(_model_dir(cache))[0] == "meta-llama/Meta-Llama-3-8B"
    named = _model_dir(tmp_path / "a", {"_name_or_path": "org/base-7b"})
    assert hub_id_of(named) == ("org/base-7b", "`_name_or_path` in its config.json")
    tok = _model_dir(tmp_path / "b", tokenizer={"name_or_path": "org/tok-base"})
    assert hub_id_of(tok)[0] == "org/tok-base"
    ours = _model_dir(tmp_path / "c", card={"base_model": "org/x", "tags": ["longred", "merge"]})
    assert hub_id_of(ours)[0] == "org/x"  # a longred_pl export or merge of org/x
    # another card's base_model is that model's parent, not the model; local paths are no ids
    other = _model_dir(
        tmp_path / "d", {"_name_or_path": "/home/me/ckpt"}, card={"base_model": "p/q"}
    )
    assert hub_id_of(other) == (None, None)
    trainer = _model_dir(tmp_path / "e", {"_name_or_path": "output/checkpoint-500"})
    assert hub_id_of(trainer) == (None, None)
    assert base_model_of("me/given", named) == ("me/given", "--base-model")
    assert base_model_of(None, other, ours)[0] == "org/x"  # the next directory's


def test_base_model_flag_must_be_a_hub_id(tmp_path, monkeypatch):
    assert check_base_model("org/name") == "org/name" and check_base_model(None) is None
    assert check_base_model("gpt2") == "gpt2"  # a legacy id without owner
    for bad in ("/models/llama", "a/b/c", "../x", "org/"):
        with pytest.raises(UserError, match=r"^--base-model: .* not a Hugging Face Hub id") as e:
            check_base_model(bad)
        assert "\n" not in str(e.value)
    (tmp_path / "artifacts" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^--base-model: 'artifacts/teacher' is a local path;"):
        check_base_model("artifacts/teacher")


def test_the_teachers_license_from_its_card_or_config(tmp_path):
    card = {"license": "other", "license_name": "llama3", "license_link": "LICENSE"}
    teacher = _model_dir(tmp_path / "t", card=card)
    assert license_of(teacher) == {**card, "from": "t", "path": str(teacher)}
    config = _model_dir(tmp_path / "c", {"license": "apache-2.0"})
    assert license_of(config)["license"] == "apache-2.0"
    assert license_of(_model_dir(tmp_path / "none"), None) is None


def test_validation_is_the_last_one_logged_before_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "epoch,step,train/loss,val/loss_short,val/ppl_short,val/ppl_retention\n"
        "0,0,2.5,,,\n"
        "0,1,,4.0,54.6,0.98\n"  # logged at step 1: after optimizer step 2
        "0,2,2.4,,,\n"
        "0,3,,3.9,49.4,0.99\n"  # after step 4: later weights than a step-2 checkpoint
    )
    assert validation_from_csv(path, steps=2) == {
        "metrics": {"val/loss_short": 4.0, "val/ppl_short": 54.6, "val/ppl_retention": 0.98},
        "step": 2,
        "from": str(path),
    }
    assert validation_from_csv(path, steps=None)["step"] == 4
    assert validation_from_csv(path, steps=1) is None
    assert validation_from_csv(tmp_path / "missing.csv", 2) is None


def test_optimizer_and_schedule_from_the_run_config():
    config = {
        "trainer": {"max_steps": 160, "accumulate_grad_batches": 16, "gradient_clip_val": 1.0},
        "model": {
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4}},
            "lr_scheduler": {
                "class_path": "torch.optim.lr_scheduler.LinearLR",
                "init_args": {"start_factor": 0.01, "total_iters": 20},
            },
        },
    }
    o = optimization_from_config(config)
    assert o["optimizer"] == {"class": "torch.optim.AdamW", "args": {"lr": 3e-4}}
    assert o["scheduler"]["class"] == "torch.optim.lr_scheduler.LinearLR"
    assert o["trainer"] == config["trainer"]
    default = optimization_from_config({"model": {"optimizer": None}})
    assert default["optimizer"]["args"]["lr"] == 2e-5 and default["optimizer"]["default"]
    assert optimization_from_config({}) is None


def test_evaluation_rows_are_named_by_model(tmp_path):
    from longred_pl.eval.report import results_markdown

    row = {
        "window": 256,
        "rope": "default theta=10000",
        "short": {"ppl": 50.3, "loss": 3.9},
        "long": None,
        "copy": {"accuracy": {}, "chance": 0.01, "span": 2, "trials": 1},
        "passkey": None,
    }
    rows = [
        {**row, "name": "teacher", "is_teacher": True, "model": str(tmp_path / "teacher")},
        {**row, "name": "student", "is_teacher": False, "model": str(tmp_path / "student")},
        {**row, "name": "/abs/other/student", "model": "/abs/other/student"},
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"models": rows}))
    assert "| teacher | 256 |" in results_markdown(
        rows
    )  # what the command prints (not "teacher (teacher)")
    names = {
        str(tmp_path / "teacher"): "org/base (base model)",
        str(tmp_path / "student"): "student-256 (this model)",
    }
    table = eval_markdown(str(path), names)
    assert "| org/base (base model) | 256 |" in table
    assert "| student-256 (this model) | 256 |" in table
    assert "| student | 256 |" in table  # another model's full path, shortened
    assert "(teacher)" not in table and "/abs" not in table


def test_a_merge_card_names_both_parents_and_alpha():
    facts = {
        "name": "merged",
        "student": {"path": "/home/me/runs/student", "window": 1024, "rope": {"rope_theta": 8e4}},
        "teacher": {"path": "/home/me/models/teacher", "window": 256, "rope": {"rope_theta": 1e4}},
        "alpha": 0.75,
        "dtype": "bfloat16",
        "base_model": "org/base",
        "license": {"license": "apache-2.0", "from": "teacher"},
        "license_files": ["LICENSE"],
        "tokenizer": {"source": "/home/me/runs/student", "files": ["tokenizer.json"]},
        "generation": "copied from `student`",
    }
    text = render_merge_card(facts)
    _, front, body = text.split("---\n", 2)
    assert yaml.safe_load(front) == {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "base_model": "org/base",
        "license": "apache-2.0",
        "tags": ["longred", "long-context", "merge"],
    }
    assert "**alpha = 0.75**" in body and "bfloat16" in body
    assert "| student (share alpha = 0.75) | `student` | 1024 |" in body
    assert "| base model (share 1 - alpha = 0.25) | `teacher` (org/base) | 256 |" in body
    assert "RoPE base frequency (rope_theta) 10000 -> 80000" in body
    assert "/home/me" not in text


def test_optimizer_from_a_live_trainer_without_a_config_file():
    from types import SimpleNamespace

    import torch

    from longred_pl.eval.model_card import optimization_from_trainer, validation_from_metrics

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5)
    trainer = SimpleNamespace(
        optimizers=[opt],
        lr_scheduler_configs=[SimpleNamespace(scheduler=sched)],
        max_steps=10,
        accumulate_grad_batches=4,
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
        precision="32-true",
    )
    o = optimization_from_trainer(trainer)
    assert o["optimizer"]["class"] == "torch.optim.adamw.AdamW"
    assert o["optimizer"]["args"]["lr"] == 1e-3 and o["optimizer"]["args"]["betas"] == [0.9, 0.999]
    assert o["scheduler"]["class"].endswith("LinearLR")
    assert o["trainer"] == {"max_steps": 10, "accumulate_grad_batches": 4, "precision": "32-true"}
    metrics = {"val/ppl_short": torch.tensor(54.58), "train/loss": torch.tensor(2.0)}
    assert validation_from_metrics(metrics)["metrics"] == {"val/ppl_short": pytest.approx(54.58)}
    assert validation_from_metrics({"train/loss": 1.0}) is None
