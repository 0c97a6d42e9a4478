"""Context parallelism end to end: a LongReD fit at cp=2 (2 gloo processes) vs 1 process.

At cp=2 with dp=1 both ranks read the same micro-batches, each keeps its head-tail
shard, the ring attention joins them, and the losses are token means over the group: the
losses of every stream (CREAM ids jumping across the shard boundary included) and the
weights after 3 optimizer steps must equal the single-process run's. Validation (after
steps 1 and 3) reads each held-out sequence sharded too (each rank its head-tail half,
labels shifted first): the student's and the teacher's perplexities must equal the
unsharded ones. A resume from the cp=2 sharded checkpoint ends where the uninterrupted
run does, and it exports.
"""

import glob
import os

import numpy as np
import pytest
import torch
import yaml
from test_fsdp2_cpu import losses

from longred_pl.data.prepare import write_shards
from longred_pl.export import export_checkpoint, load_checkpoint

LENGTHS = {"long": 256, "short": 16, "s2l": 64, "val_short": 64, "val_long": 256}
VAL = ("val/loss_short", "val/loss_short_teacher", "val/loss_long")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cp_fit")
    rng = np.random.default_rng(0)
    for name, length in LENGTHS.items():
        docs = [rng.integers(0, 128, size=length) for _ in range(8)]
        write_shards(
            docs,
            root / name,
            length,
            samples_per_shard=2,
            pack=False,
            vocab_size=128,
            tokenizer_name="random",
            source="tests",
        )
    return root


def validation(out) -> dict[str, float]:
    """The last logged value of each ``val/loss_*`` of a run."""
    import csv

    (path,) = glob.glob(str(out / "**" / "metrics.csv"), recursive=True)
    found = {}
    for row in csv.DictReader(open(path)):
        found.update({k: float(row[k]) for k in VAL if row.get(k)})
    return found


def run_fit(root, teacher, out, cp, max_steps, ckpt_path=None, **overrides):
    import subprocess
    import sys

    trainer = {
        "accelerator": "cpu",
        "devices": cp,
        "max_steps": max_steps,
        "accumulate_grad_batches": 4,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(out),
        "val_check_interval": 8,
        "check_val_every_n_epoch": None,
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(out)},
        },
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(out / "ckpt"),
                    "every_n_train_steps": 1,
                    "save_top_k": -1,
                },
            },
        ],
    }
    if cp > 1:
        trainer["strategy"] = {
            "class_path": "longred_pl.parallel.ContextParallelStrategy",
            "init_args": {"context_parallel_size": cp, "process_group_backend": "gloo"},
        }
    model = {
        "teacher_path": teacher,
        "target_length": 256,
        "rope_kwargs": {"rope_theta": 40000.0},
        "distill_layers": [1, 2],
        "s2l_positions": "cream",
        "attn_implementation": "longred_ring" if cp > 1 else "sdpa",
        # SGD, not Adam: Adam's m / sqrt(v) turns float rounding in near-zero gradients into
        # full-size updates, so weights would differ in a few elements for no real reason
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},
    }
    data = {
        **{k: {"urls": str(root / k), "seq_len": n, "batch_size": 2} for k, n in LENGTHS.items()},
        "schedule": ["long", "s2l", "long", "short"],
        "num_workers": 0,
        "shuffle_buffer": 1,
        "val_batches": 2,
    }
    config = {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}
    for key, value in overrides.items():
        section, name = key.split("__")
        config[section][name] = value
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "longred_pl.cli", "fit", "--config", str(out / "config.yaml")]
    cmd += ["--ckpt_path", ckpt_path] if ckpt_path else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=600)


def test_cp2_fit_equals_single_process_resumes_and_exports(shards, tiny_llama, tmp_path):
    single = run_fit(shards, tiny_llama, tmp_path / "single", 1, 3)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = run_fit(shards, tiny_llama, tmp_path / "cp2", 2, 3)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    expected, got = losses(tmp_path / "single"), losses(tmp_path / "cp2")
    assert expected.keys() == got.keys() and len(expected) == 15  # 4 losses + grad norm, 3 steps
    assert expected[(0, "train/loss_s2l")] > 1e-7
    for key, value in expected.items():
        # measured: L_long equal to 2e-7 relative, the 1 - cos terms to 1.1e-5 relative / 3e-7
        # absolute (after 2 SGD steps); at step 0 they are equal to 3e-8: cos is ~1
        # and float32 resolves it to ~6e-8 (3 ulps), the only difference the shards make
        assert got[key] == pytest.approx(value, rel=2e-5, abs=2e-7), key
    expected, got = validation(tmp_path / "single"), validation(tmp_path / "cp2")
    assert set(expected) == set(VAL) and got.keys() == expected.keys()
    for key, value in expected.items():  # sharded validation = unsharded, student and teacher
        assert got[key] == pytest.approx(value, rel=1e-5), key

    (plain,) = glob.glob(str(tmp_path / "single" / "ckpt" / "*step=3.ckpt"))
    (dcp,) = glob.glob(str(tmp_path / "cp2" / "ckpt" / "*step=3.ckpt"))
    reference = torch.load(plain, weights_only=True)["state_dict"]
    full = load_checkpoint(dcp)["state_dict"]
    assert reference.keys() == full.keys()
    from safetensors.torch import load_file

    start = load_file(os.path.join(tiny_llama, "model.safetensors"))
    moved = max(float((reference[k] - start[k[len("student.") :]]).abs().max()) for k in reference)
    assert moved > 1e-2  # the weights did move: the comparison below is not vacuous
    for key, value in reference.items():  # 3 SGD steps; measured max difference 4.8e-6
        torch.testing.assert_close(full[key], value, rtol=1e-4, atol=1e-5, msg=key)

    (step1,) = glob.glob(str(tmp_path / "cp2" / "ckpt" / "*step=1.ckpt"))
    resumed = run_fit(shards, tiny_llama, tmp_path / "resumed", 2, 3, ckpt_path=step1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (again,) = glob.glob(str(tmp_path / "resumed" / "ckpt" / "*step=3.ckpt"))
    for key, value in load_checkpoint(again)["state_dict"].items():
        torch.testing.assert_close(value, full[key], rtol=1e-5, atol=1e-6, msg=key)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export_checkpoint(dcp, str(tmp_path / "hf")))
    assert model.config.max_position_embeddings == 256


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"data__s2l": {"urls": "S2L", "seq_len": 62, "batch_size": 2}},
            r"data.s2l.seq_len=62 does not split into 2 x context_parallel_size = 4 .*60 or 64",
        ),
        ({"model__attn_implementation": "sdpa"}, r"model.attn_implementation='sdpa'.*longred_ring"),
    ],
)
def test_cp_refuses_what_it_cannot_shard(shards, tiny_llama, tmp_path, overrides, match):
    import re

    if "data__s2l" in overrides:
        write_shards(
            [np.arange(62) % 128] * 4,
            tmp_path / "s2l62",
            62,
            samples_per_shard=2,
            pack=False,
            vocab_size=128,
            tokenizer_name="random",
            source="tests",
        )
        overrides["data__s2l"]["urls"] = str(tmp_path / "s2l62")
    proc = run_fit(shards, tiny_llama, tmp_path / "bad", 2, 1, **overrides)
    assert proc.returncode != 0
    assert re.search(match, proc.stderr), proc.stderr[-2000:]
