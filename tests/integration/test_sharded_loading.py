"""Loading that scales: each rank builds the models without weights and reads its own rows.

On 2 gloo processes (``load_worker.py``), for an FSDP2 mesh and a context-parallel one,
for the families whose logits the library handles (Llama untied and tied, Qwen2 with
q/k/v biases, Gemma 2 with tied embeddings and a logit soft cap, Cohere with a logit
scale), with a vocabulary of 97 (uneven shards) and one model saved as several
safetensors files: the gathered student and teacher equal ``from_pretrained``'s exactly,
parameters and buffers (RoPE ``inv_freq``), and the load-time logit check passes on the
sharded models. A single process uses the same path (``test_golden_losses``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from longred_pl.errors import UserError

VOCAB = 97  # odd: the two ranks hold 49 and 48 rows of every embedding and head


def _save(path, kind: str, **save) -> str:
    import torch
    import transformers as tf

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**common)),
        "llama_tied": lambda: tf.LlamaForCausalLM(
            tf.LlamaConfig(**common, tie_word_embeddings=True)
        ),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**common)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(
            tf.Gemma2Config(**common, head_dim=8, final_logit_softcapping=30.0)
        ),
        "cohere": lambda: tf.CohereForCausalLM(tf.CohereConfig(**common, logit_scale=0.37)),
    }[kind]()
    model.save_pretrained(path, **save)
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("loading")
    dirs = [
        _save(root / kind, kind) for kind in ("llama", "llama_tied", "qwen2", "gemma2", "cohere")
    ]
    dirs.append(_save(root / "llama_files", "llama", max_shard_size="20KB"))
    assert len([f for f in os.listdir(dirs[-1]) if f.endswith(".safetensors")]) > 1
    worker = os.path.join(os.path.dirname(__file__), "load_worker.py")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, worker, str(root), *dirs], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((root / "loading.json").read_text())


def test_sharded_models_equal_from_pretrained_exactly(results):
    assert len(results) == 12  # 6 models x 2 meshes
    for key, models in results.items():
        for name, found in models.items():
            assert found["sharded_parameters"] > 0, (key, name)
            assert found["max_abs"] == 0.0, (key, name, found)


def test_missing_tensor_is_refused_by_name(tmp_path):
    import torch

    from longred_pl.models import Placement, load_causal_lm, load_config

    path = _save(tmp_path / "llama", "llama")
    from safetensors.torch import load_file, save_file

    weights = load_file(os.path.join(path, "model.safetensors"))
    del weights["model.norm.weight"]
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"no tensor for 1 parameter.*model\.norm\.weight"):
        load_causal_lm(path, load_config(path), placement=Placement(torch.device("cpu")))


@pytest.mark.parametrize("kind", ["llama_tied", "gemma2", "qwen2"])
def test_one_device_load_equals_from_pretrained_and_keeps_ties(tmp_path, kind):
    """Without sharding, the same loader fills a whole model: equal, and tied weights one tensor
    (``to_empty`` makes one tensor per module; the loader ties them again)."""
    import torch
    from transformers import AutoModelForCausalLM

    from longred_pl.loading import load_model
    from longred_pl.models import load_config

    path = _save(tmp_path / kind, kind)
    model = load_model(
        path,
        load_config(path),
        dtype=torch.float32,
        attn_implementation="eager",
        trust_remote_code=False,
        device=torch.device("cpu"),
    )
    reference = AutoModelForCausalLM.from_pretrained(path)
    tied = reference.get_output_embeddings().weight is reference.get_input_embeddings().weight
    ours = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert ours == tied
    got, want = model.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name
