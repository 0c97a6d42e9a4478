"""The LM head runs inside the model's forward, with the model's own logit transform."""

import pytest
import torch
import torch.nn.functional as F

from longred_pl.errors import UserError
from longred_pl.forward import check_logit_head, logit_head, run_model
from longred_pl.losses import (
    LogitHead,
    chunked_next_token_loss,
    chunked_token_nll,
    shift_labels,
)


def _tiny(kind):
    """Tiny random models of families whose logits are not plain ``h @ W.T``."""
    import transformers as tf

    common = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    if kind == "cohere":
        return tf.CohereForCausalLM(tf.CohereConfig(**common, logit_scale=0.37))
    if kind == "granite":
        return tf.GraniteForCausalLM(tf.GraniteConfig(**common, logits_scaling=3.0))
    if kind == "gemma2":
        cfg = tf.Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5)
        return tf.Gemma2ForCausalLM(cfg)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["llama", "cohere", "granite", "gemma2"])
def test_next_token_loss_equals_models_own_logits(kind):
    torch.manual_seed(0)
    model = _tiny(kind).float()
    head = logit_head(model)
    check_logit_head(model, head)
    ids = torch.randint(0, 96, (2, 20))
    labels = shift_labels(ids)
    ref_logits = model(input_ids=ids, use_cache=False).logits.float()
    ref = F.cross_entropy(ref_logits.reshape(-1, 96), labels.reshape(-1), ignore_index=-100)
    ref_grad = torch.autograd.grad(ref, model.get_output_embeddings().weight)[0]

    def loss(h, w, b):
        return chunked_next_token_loss(h, w, labels, 7, b, head)

    ours = run_model(model, ids, (), None, loss)[1]
    grad = torch.autograd.grad(ours, model.get_output_embeddings().weight)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    nll = run_model(model, ids, (), None, lambda h, w, b: chunked_token_nll(h, w, ids, 5, b, head))[
        1
    ]
    torch.testing.assert_close(nll.mean(), ref, rtol=1e-5, atol=1e-6)


def test_head_bias_is_part_of_the_loss():
    torch.manual_seed(0)
    model = _tiny("llama")
    lm = model.lm_head
    model.lm_head = torch.nn.Linear(lm.in_features, lm.out_features, bias=True)
    torch.nn.init.normal_(model.lm_head.bias, std=2.0)
    ids = torch.randint(0, 96, (2, 12))
    labels = shift_labels(ids)
    ref = F.cross_entropy(model(input_ids=ids).logits.reshape(-1, 96), labels.reshape(-1))
    ref_b = torch.autograd.grad(ref, model.lm_head.bias)[0]
    ours = run_model(
        model, ids, (), None, lambda h, w, b: chunked_next_token_loss(h, w, labels, 5, b)
    )[1]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        torch.autograd.grad(ours, model.lm_head.bias)[0], ref_b, rtol=1e-4, atol=1e-7
    )


def test_unknown_logit_transform_is_refused():
    torch.manual_seed(0)
    model = _tiny("cohere")
    with pytest.raises(UserError, match="computes its logits"):
        check_logit_head(model, LogitHead())  # the plain head misses Cohere's logit_scale


def test_loss_reads_the_head_weight_while_the_forward_runs():
    """FSDP1 may leave only a flat shard in ``lm_head.weight`` once the forward returns.

    Simulated: the real weight is in place only during the root forward (pre/post hooks),
    garbage outside it. The loss must be the one of the real weight.
    """
    torch.manual_seed(0)
    model = _tiny("llama")
    real = model.lm_head.weight.detach().clone()
    garbage = torch.zeros_like(real)
    ids = torch.randint(0, 96, (2, 16))
    labels = shift_labels(ids)
    expected = chunked_next_token_loss(run_model(model, ids, [2])[0][2], real, labels, 8).detach()
    with torch.no_grad():
        model.lm_head.weight.copy_(garbage)

    def gather(module, args):
        module.lm_head.weight.data.copy_(real)

    def reshard(module, args, output):
        module.lm_head.weight.data.copy_(garbage)

    model.register_forward_pre_hook(gather)
    model.register_forward_hook(reshard)
    got = run_model(
        model, ids, (), None, lambda h, w, b: chunked_next_token_loss(h, w, labels, 8, b)
    )[1]
    torch.testing.assert_close(got.detach(), expected)


def test_load_time_check_on_a_toy_of_the_config_refuses_a_missed_transform(monkeypatch):
    """The loaders check a 1-layer toy of the model's config (no forward of the real model):
    a head that misses Cohere's logit_scale is refused as the check on the model would."""
    import longred_pl.forward as forward

    torch.manual_seed(0)
    model = _tiny("cohere")
    forward.check_model_head(model)  # the real head passes
    monkeypatch.setattr(forward, "logit_head", lambda m: LogitHead())
    with pytest.raises(UserError, match="computes its logits"):
        forward.check_model_head(model)
