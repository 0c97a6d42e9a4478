"""FSDP2 (ModelParallelStrategy, fully_shard) on 2 CPU processes with gloo.

Every sample of a stream is the same sequence and the s2l ids are contiguous, so two
ranks with micro-batch B see the same gradients as one process with micro-batch B:
losses and weights must agree with the single-process run up to float rounding.
"""

import csv
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from longred_pl.data.prepare import write_shards
from longred_pl.export import export_checkpoint, load_checkpoint

LENGTHS = {"long": 256, "short": 16, "s2l": 64}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("fsdp2")
    rng = np.random.default_rng(0)
    for name, length in LENGTHS.items():
        one = rng.integers(0, 128, size=length)
        write_shards(
            [one] * 8,
            root / name,
            length,
            samples_per_shard=2,
            pack=False,
            vocab_size=128,
            tokenizer_name="random",
            source="tests",
        )
    return root, tiny_llama


def run_fit(root, teacher, out, devices, max_steps, ckpt_path=None):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
            "max_steps": max_steps,
            "accumulate_grad_batches": 4,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(out),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(out)},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(out / "ckpt"),
                        "every_n_train_steps": 2,
                        "save_top_k": -1,
                    },
                },
                {
                    "class_path": "longred_pl.export.ExportStudent",
                    "init_args": {"dirpath": str(out / "student")},
                },
            ],
        },
        "model": {
            "teacher_path": teacher,
            "target_length": 256,
            "rope_kwargs": {"rope_theta": 40000.0},
            "distill_layers": [1, 2],
            "s2l_positions": "none",
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
        },
        "data": {
            **{
                k: {"urls": str(root / k), "seq_len": n, "batch_size": 2 if k == "short" else 1}
                for k, n in LENGTHS.items()
            },
            "schedule": ["long", "s2l", "long", "short"],
            "num_workers": 0,
            "shuffle_buffer": 1,
        },
    }
    if devices > 1:
        config["trainer"]["strategy"] = {
            "class_path": "lightning.pytorch.strategies.ModelParallelStrategy"
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "longred_pl.cli", "fit", "--config", str(out / "config.yaml")]
    if ckpt_path:
        cmd += ["--ckpt_path", ckpt_path]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(out):
    (path,) = glob.glob(str(out / "**" / "metrics.csv"), recursive=True)
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return {
        (int(r["step"]), k): float(v)
        for r in rows
        for k, v in r.items()
        if k.startswith("train/loss") and v
    }


def test_fsdp2_two_processes_match_single_and_resume(setup, tmp_path):
    root, teacher = setup
    run_fit(root, teacher, tmp_path / "single", 1, 4)
    run_fit(root, teacher, tmp_path / "fsdp2", 2, 4)
    single, sharded = losses(tmp_path / "single"), losses(tmp_path / "fsdp2")
    assert single.keys() == sharded.keys() and len(single) >= 12
    for key, value in single.items():
        assert sharded[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    (dcp,) = glob.glob(str(tmp_path / "fsdp2" / "ckpt" / "*step=4.ckpt"))
    assert os.path.isdir(dcp)  # a sharded (distributed) checkpoint
    full = load_checkpoint(dcp)
    assert not any("teacher" in k for k in full["state_dict"])
    (plain,) = glob.glob(str(tmp_path / "single" / "ckpt" / "*step=4.ckpt"))
    reference = torch.load(plain, weights_only=True)["state_dict"]
    for key, value in reference.items():
        torch.testing.assert_close(full["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export_checkpoint(dcp, str(tmp_path / "hf")))
    assert model.config.max_position_embeddings == 256
    at_fit_end = AutoModelForCausalLM.from_pretrained(
        tmp_path / "fsdp2" / "student"
    )  # ExportStudent, gathered
    for (name, a), (_, b) in zip(model.state_dict().items(), at_fit_end.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)

    (half,) = glob.glob(str(tmp_path / "fsdp2" / "ckpt" / "*step=2.ckpt"))
    run_fit(root, teacher, tmp_path / "resumed", 2, 4, ckpt_path=half)
    (resumed,) = glob.glob(str(tmp_path / "resumed" / "ckpt" / "*step=4.ckpt"))
    again = load_checkpoint(resumed)
    assert again["MixedLengthDataModule"]["consumed"] == 16
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(again["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
