"""What sharding changes for the module: parameter names, weight decay groups, FSDP1 precision."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from longred_pl.errors import UserError
from longred_pl.fsdp import (
    clean_name,
    clip_grad_norm,
    fsdp1_mixed_precision,
    matrix_parameter_names,
    prepare_strategy,
)
from longred_pl.methods import param_groups


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)


class _FlatViews(nn.Module):
    """What FSDP1 with ``use_orig_params`` shows the optimizer: wrapper names, 1-D shards."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = [f"_fsdp_wrapped_module.{n}" for n, _ in model.named_parameters()]
        self.flat = nn.ParameterList(
            nn.Parameter(p.detach().reshape(-1)[:2].clone()) for p in model.parameters()
        )

    def named_parameters(self, *args, **kwargs):
        return iter(zip(self.names, self.flat, strict=True))


def test_clean_name_drops_wrapper_parts():
    assert (
        clean_name("model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.up.weight")
        == "model.layers.0.mlp.up.weight"
    )


def test_weight_decay_groups_come_from_names_not_shapes():
    model = _Tiny()
    names = matrix_parameter_names(model)
    assert names == {"proj.weight"}
    wrapped = _FlatViews(model)
    assert all(p.ndim == 1 for _, p in wrapped.named_parameters())  # ndim would say: no matrix
    decay, no_decay = param_groups(wrapped, names)
    assert [p.numel() for p in decay["params"]] == [2] and len(no_decay["params"]) == 3
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay


def test_a_matrix_missing_after_sharding_is_an_error():
    model = _Tiny()
    with pytest.raises(RuntimeError, match="weight decay would silently skip"):
        param_groups(model, frozenset({"proj.weight", "gone.weight"}))


def _strategy(user=None, use_orig_params=True):
    """Lightning's FSDPStrategy with its bf16-mixed precision plugin (as the Trainer sets it)."""
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = FSDPStrategy(mixed_precision=user, use_orig_params=use_orig_params)
    strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    return strategy


def test_fsdp1_policy_keeps_buffers_and_reduces_in_fp32():
    strategy = _strategy()
    policy = strategy.mixed_precision_config
    assert policy.buffer_dtype == torch.bfloat16  # what Lightning's bf16-mixed plugin asks for
    prepare_strategy(strategy)
    fixed = strategy.mixed_precision
    assert fixed.param_dtype == torch.bfloat16
    assert fixed.buffer_dtype is None and fixed.reduce_dtype == torch.float32
    assert strategy.mixed_precision_config is fixed  # what Lightning wraps the student with


def test_fsdp1_user_policy_casting_buffers_is_refused():
    from torch.distributed.fsdp import MixedPrecision

    user = MixedPrecision(param_dtype=torch.bfloat16, buffer_dtype=torch.bfloat16)
    with pytest.raises(UserError, match="buffer_dtype.*inv_freq"):
        fsdp1_mixed_precision(_strategy(user=user))


def test_fsdp1_without_original_parameters_is_refused():
    with pytest.raises(UserError, match="use_orig_params: true"):
        prepare_strategy(_strategy(use_orig_params=False))


def test_clip_grad_norm_measures_and_clips_the_student():
    module = SimpleNamespace(student=_Tiny())
    for p in module.student.parameters():
        p.grad = torch.full_like(p, 2.0)
    count = sum(p.numel() for p in module.student.parameters())
    norm = clip_grad_norm(module, None)
    assert float(norm) == pytest.approx(2.0 * count**0.5)
    assert all(torch.all(p.grad == 2.0) for p in module.student.parameters())  # measured only
    clip_grad_norm(module, 1.0)
    total = torch.cat([p.grad.reshape(-1) for p in module.student.parameters()]).norm()
    assert float(total) == pytest.approx(1.0, rel=1e-4)
