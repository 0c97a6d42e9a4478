"""FSDP1 (Lightning's ``FSDPStrategy``) on 2 CPU processes with gloo, set as the shipped
FSDP1 trainer configs set it (auto-wrap and activation checkpointing per decoder layer,
``use_orig_params``, sharded checkpoints).

``CPUFSDPStrategy`` is ``FSDPStrategy`` with the CPU allowed (``tests/rehearsal``). Each
thing that failed or was silently wrong under FSDP1 is checked here:

* clipping by norm (``gradient_clip_val``) runs and uses the norm of the whole gradient
  (Lightning's FSDP1 plugin raised at the first step);
* weight decay reaches the matrices only, although FSDP1 hands the optimizer 1-D shards
  (every parameter would have landed in the no-decay group);
* the first checkpoint saves, holds no teacher weight, exports and resumes (FSDP1's root
  state-dict hook expected the teacher's keys);
* ``bf16-mixed`` keeps RoPE ``inv_freq`` in fp32 (Lightning's plugin casts buffers).

The reference is data parallelism simulated in one process (``test_fsdp2_cpu``) with the
same clipping and weight decay, made large (clip 0.05, decay 1.0) so that both show in the
weights: losses, gradient norms and the weights after 4 steps must equal it.
"""

import glob
import json
import os

import pytest
import torch
from test_fsdp2_cpu import losses, run_fit, setup, simulate_data_parallel  # noqa: F401

from longred_pl.export import export_checkpoint, load_checkpoint

LAYER = "transformers.models.llama.modeling_llama.LlamaDecoderLayer"
FSDP1 = {
    "class_path": "cpu_strategies.CPUFSDPStrategy",
    "init_args": {
        "auto_wrap_policy": [LAYER],
        "activation_checkpointing_policy": [LAYER],
        "sharding_strategy": "FULL_SHARD",
        "state_dict_type": "sharded",
        "process_group_backend": "gloo",
    },
    "dict_kwargs": {"use_orig_params": True},
}
CLIP, DECAY = 0.05, 1.0
OPTIMIZER = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": DECAY}}


def test_fsdp1_two_processes_match_simulated_data_parallel_and_resume(setup, tmp_path):  # noqa: F811
    root, teacher = setup
    out = tmp_path / "fsdp1"
    run_fit(
        root,
        teacher,
        out,
        2,
        4,
        strategy=FSDP1,
        model={"optimizer": OPTIMIZER},
        trainer={"gradient_clip_val": CLIP},
    )
    expected, weights, _ = simulate_data_parallel(root, teacher, weight_decay=DECAY, clip=CLIP)
    sharded = losses(out)
    for key, value in expected.items():
        assert sharded[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert all(expected[(s, "train/grad_norm")] > CLIP for s in range(4))  # clipping engaged

    (ckpt,) = glob.glob(str(out / "ckpt" / "*step=4.ckpt"))
    assert os.path.isdir(ckpt)  # sharded
    full = load_checkpoint(ckpt)
    assert full["state_dict"] and not any("teacher" in k for k in full["state_dict"])
    for key, value in weights.items():
        torch.testing.assert_close(full["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export_checkpoint(ckpt, str(tmp_path / "hf")))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[f"student.{name}"], rtol=1e-4, atol=1e-5)

    (half,) = glob.glob(str(out / "ckpt" / "*step=2.ckpt"))
    run_fit(
        root,
        teacher,
        tmp_path / "resumed",
        2,
        4,
        ckpt_path=half,
        strategy=FSDP1,
        model={"optimizer": OPTIMIZER},
        trainer={"gradient_clip_val": CLIP},
    )
    (resumed,) = glob.glob(str(tmp_path / "resumed" / "ckpt" / "*step=4.ckpt"))
    again = load_checkpoint(resumed)["state_dict"]
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_fsdp1_bf16_mixed_keeps_rope_inv_freq_fp32(setup, tmp_path):  # noqa: F811
    root, teacher = setup
    probe = tmp_path / "buffers.json"
    callback = {"class_path": "probes.RopeBufferProbe", "init_args": {"path": str(probe)}}
    run_fit(
        root,
        teacher,
        tmp_path / "bf16",
        2,
        1,
        strategy=FSDP1,
        trainer={"precision": "bf16-mixed", "callbacks": [callback], "enable_checkpointing": False},
    )
    assert json.loads(probe.read_text()) == {
        "student": ["torch.float32"],
        "teacher": ["torch.float32"],
    }
