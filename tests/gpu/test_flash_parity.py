"""flash_attention_2 vs sdpa in bf16 on CUDA: hidden states and a gradient, through the library.

Both models read the same tokens through ``forward.run_model`` (the path of every loss),
once at contiguous positions and once at skipped s2l position ids (CREAM), which
``run_model`` passes with the explicit all-ones ``attention_mask`` (NOTES.md: without it
transformers may read the gaps as packed-sequence boundaries). Each case compares the
distilled hidden states and the gradient of the cosine loss on a query projection.
Skipped when flash-attn is not installed (``pip install 'longred_pl[flash]'``).

Tolerances: the two kernels differ by bf16 rounding (relative 1e-3..1e-2 on these
sizes); a wrong mask, wrong positions or a dropped skip changes the states by far more
(token cosine well below 0.99).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
WINDOW, TARGET, HIDDEN, LAYERS = 256, 1024, 256, [1, 2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("flash_attn", reason="flash-attn is not installed (longred_pl[flash])")
    from conftest import save_tiny_llama

    from longred_pl import rope
    from longred_pl.models import load_causal_lm, load_config

    path = save_tiny_llama(
        tmp_path_factory.mktemp("flash"), vocab_size=1024, window=WINDOW, hidden=HIDDEN
    )
    config = rope.extend_rope(load_config(path), "abf", TARGET, rope_theta=40000.0)
    return {
        impl: load_causal_lm(path, config, impl, "bfloat16").cuda().train()
        for impl in ("sdpa", "flash_attention_2")
    }


def states_and_grad(model, input_ids_BT, position_ids_BT, targets):
    """The library's forward (``run_model``), then the cosine loss's gradient on one weight."""
    from longred_pl.forward import run_model
    from longred_pl.losses import hidden_cosine_loss

    model.zero_grad(set_to_none=True)
    states, _ = run_model(model, input_ids_BT, LAYERS, position_ids_BT)
    hidden_cosine_loss(states, targets, LAYERS).backward()
    grad = model.base_model.layers[0].self_attn.q_proj.weight.grad.float()
    return {i: s.detach().float() for i, s in states.items()}, grad


@pytest.mark.parametrize("case", ["contiguous", "s2l skipped ids"])
def test_flash_attention_matches_sdpa(models, case):
    from longred_pl.positions import cream_position_ids

    gen = torch.Generator().manual_seed(0)
    input_ids_BT = torch.randint(0, 1024, (2, WINDOW), generator=gen).cuda()
    skipped_BT = cream_position_ids(2, WINDOW, TARGET, generator=gen).cuda()
    position_ids_BT = skipped_BT if case == "s2l skipped ids" else None
    if position_ids_BT is not None:
        assert (skipped_BT.diff(dim=1) > 1).any(), "the s2l case must contain skips"
    targets = {i: torch.randn(2, WINDOW, HIDDEN, generator=gen).cuda() for i in LAYERS}
    sdpa, sdpa_grad = states_and_grad(models["sdpa"], input_ids_BT, position_ids_BT, targets)
    flash, flash_grad = states_and_grad(
        models["flash_attention_2"], input_ids_BT, position_ids_BT, targets
    )
    for i in LAYERS:
        cos = float(F.cosine_similarity(flash[i], sdpa[i], dim=-1).min())
        rel = float((flash[i] - sdpa[i]).abs().max() / sdpa[i].abs().max())
        print(f"{case} hidden[{i}]: min token cosine {cos:.5f}, max |diff| / max |ref| {rel:.2e}")
        assert cos > 0.999 and rel < 0.05
    grad_rel = float((flash_grad - sdpa_grad).norm() / sdpa_grad.norm())
    print(f"{case} q_proj grad: relative difference {grad_rel:.2e}")
    assert grad_rel < 0.05
