"""`longred fit` in-process on a tiny config: checkpoints, export, exact resume."""

import glob
import os

import pytest
import torch
from tests_helpers import fit_config as write_config

from longred_pl.cli import main
from longred_pl.export import export_checkpoint


def test_fit_writes_lean_checkpoints_logs_and_export(tmp_path, tiny_llama, tiny_shards):
    from transformers import AutoModelForCausalLM

    main(["fit", "--config", write_config(tmp_path, tiny_llama, tiny_shards, max_steps=4)])
    ckpts = sorted(glob.glob(str(tmp_path / "ckpt" / "*.ckpt")))
    assert len(ckpts) == 2
    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and not any("teacher" in k for k in keys)
    assert ckpt["MixedLengthDataModule"]["consumed"] == 16
    (metrics,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    header = open(metrics).readline().strip().split(",")
    for name in (
        "train/loss",
        "train/loss_long",
        "train/loss_short",
        "train/loss_s2l",
        "train/tokens_per_sec_long",
        "val/loss_short",
        "val/loss_short_teacher",
    ):
        assert name in header, name
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.max_position_embeddings == 256
    assert student.config.rope_parameters["rope_theta"] == 40000.0
    assert os.path.exists(tmp_path / "student" / "model.safetensors")
    out = export_checkpoint(ckpts[-1], str(tmp_path / "exported"))
    again = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), (_, b) in zip(student.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("workers", [1])
def test_stop_and_resume_matches_uninterrupted(tmp_path, tiny_llama, tiny_shards, workers):
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    main(["fit", "--config", write_config(full_dir, tiny_llama, tiny_shards, max_steps=4)])
    main(["fit", "--config", write_config(part_dir, tiny_llama, tiny_shards, max_steps=2)])
    (half,) = glob.glob(str(part_dir / "ckpt" / "*step=2.ckpt"))
    main(
        [
            "fit",
            "--config",
            write_config(part_dir, tiny_llama, tiny_shards, max_steps=4),
            "--ckpt_path",
            half,
        ]
    )
    full = torch.load(glob.glob(str(full_dir / "ckpt" / "*step=4.ckpt"))[0], weights_only=True)
    resumed = torch.load(glob.glob(str(part_dir / "ckpt" / "*step=4.ckpt"))[0], weights_only=True)
    assert (
        resumed["MixedLengthDataModule"]["consumed"]
        == full["MixedLengthDataModule"]["consumed"]
        == 16
    )
    for key, value in full["state_dict"].items():
        # fp32 on one CPU thread pool: same operations in the same order; allow rounding only
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
