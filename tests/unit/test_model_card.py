"""Model card pieces: tokens trained, stream settings, run config lookup, baseline wording."""

from __future__ import annotations

import os
import time

import yaml

from longred_pl.data.shards import StreamConfig
from longred_pl.eval.model_card import find_run_config, render_card, streams_from, tokens_trained

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
    assert "| RoPE | default rope_theta=10000 | linear factor=4 rope_theta=10000 |" in body
    assert "Method: `long_cpt` (baseline" in body and "Distilled" not in body
    assert "Unknown: the checkpoint holds no stream settings" in body
    assert "Tokens trained: unknown" in body
