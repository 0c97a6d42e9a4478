"""Each private API the library reads is where its guard module says, on the installed versions.

One test per guard: a Lightning, transformers or torch upgrade that moves a name fails here,
not hours into a run.
"""

import inspect
import warnings

import pytest
import torch

from longred_pl import _lightning_private, _torch_private, _transformers_private


# --- Lightning ---------------------------------------------------------------------------
def test_lightning_version_is_in_the_checked_range():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _lightning_private.check_version()
    with pytest.warns(UserWarning, match="read on Lightning 2.6-2.6; found 2.7.0"):
        assert not _lightning_private.check_version("2.7.0")


def test_attached_trainer_is_none_when_detached_and_the_trainer_when_attached():
    import lightning as L

    module = L.LightningModule()
    assert _lightning_private.attached_trainer(module) is None
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    module.trainer = trainer
    assert _lightning_private.attached_trainer(module) is trainer


def test_lightning_cli_still_has_the_ckpt_path_hook_the_resume_rules_replace():
    from lightning.pytorch.cli import LightningCLI

    def parse(cli):
        return "ours"

    replaced = _lightning_private.replace_ckpt_path_parsing(LightningCLI, parse)
    assert issubclass(replaced, LightningCLI) and replaced._parse_ckpt_path is parse
    with pytest.raises(ImportError, match="has no _parse_ckpt_path"):
        _lightning_private.replace_ckpt_path_parsing(object, parse)


def test_model_parallel_strategy_has_the_internals_the_cp_strategy_sets():
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size="auto", tensor_parallel_size=1)
    assert _lightning_private.data_parallel_size(strategy) == "auto"
    assert _lightning_private.device_mesh(strategy) is None
    assert callable(strategy._setup_distributed)
    parent = super(ModelParallelStrategy, strategy).setup_environment
    assert parent.__func__ is not ModelParallelStrategy.setup_environment
    _lightning_private.install_device_mesh(strategy, "mesh", 2)
    assert _lightning_private.device_mesh(strategy) == "mesh"
    assert _lightning_private.data_parallel_size(strategy) == 2
    # LightningModule.device_mesh is the public reader of what install_device_mesh sets
    import lightning as L

    module = L.LightningModule()
    module._device_mesh = "mesh"
    assert module.device_mesh == "mesh"


def test_rich_progress_bar_has_leave_and_update():
    pytest.importorskip("rich")
    from lightning.pytorch.callbacks import RichProgressBar

    bar = RichProgressBar(leave=True)
    assert _lightning_private.rich_bar_leave(bar) is True
    assert list(inspect.signature(RichProgressBar._update).parameters)[:3] == [
        "self",
        "progress_bar_id",
        "current",
    ]


# --- transformers ------------------------------------------------------------------------
def test_config_records_the_attention_implementation():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert _transformers_private.attn_implementation(model.config) == "eager"
    model.set_attn_implementation("sdpa")
    assert _transformers_private.attn_implementation(model.config) == "sdpa"


# --- torch -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _torch_private.SDPA_OPS)
def test_each_sdpa_op_the_ring_calls_exists(name):
    assert _torch_private.sdpa_op(name) is getattr(torch.ops.aten, name)


def test_an_op_outside_the_vouched_list_is_refused():
    with pytest.raises(ValueError, match="not one of the SDPA ops"):
        _torch_private.sdpa_op("_scaled_dot_product_cudnn_attention")


def test_module_apply_has_the_signature_the_module_overrides():
    parameters = tuple(inspect.signature(torch.nn.Module._apply).parameters)
    assert parameters == _torch_private.MODULE_APPLY_PARAMETERS


# --- lm-eval -----------------------------------------------------------------------------
def test_lm_eval_loads_task_functions_through_the_loader_the_cap_replaces():
    pytest.importorskip("lm_eval", reason="the [eval] extra")
    from lm_eval.tasks import _yaml_loader

    from longred_pl import _lm_eval_private

    original = _yaml_loader._import_func_in_yml
    assert list(inspect.signature(original).parameters)[:2] == ["qual", "base_dir"]

    def build(num_samples: int = 500):
        return num_samples

    namespace = {"generate_samples": build}
    with _lm_eval_private.bounded_build(5, ("generate_samples",)):
        assert _yaml_loader._import_func_in_yml is not original
        _lm_eval_private._cap_builders(namespace, ("generate_samples",), 5, [])
        assert namespace["generate_samples"]() == 5
    assert _yaml_loader._import_func_in_yml is original
