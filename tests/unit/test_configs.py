"""Every shipped YAML under ``configs/`` parses and type-checks against the real LightningCLI.

The parser is the one ``longred fit`` builds (LightningCLI over ``LongReDModule`` and
``MixedLengthDataModule``), but nothing is instantiated: the paper configs name teacher
directories (``/models/...``) that do not exist here. Partial configs (``trainer/``,
``logger/``) are parsed on top of ``quickstart.yaml``, and every ``longred fit`` command in a
YAML's opening comment is parsed exactly as written (each experiment YAML opens with a comment
giving the paper setting it reproduces, the hardware and the exact launch command).

Paper configs are also checked against the setting they claim (docs/method.md): the values that
make them that setting, the student RoPE they produce on a teacher-shaped config (no
weights), the skipped position ids they draw, and the data module's own cross-field checks.
``configs/teacher/*.yaml`` are teacher recipes, loaded with ``TeacherRecipe.from_file``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import random
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
BASE = CONFIGS / "quickstart.yaml"
PARTIAL_DIRS = ("trainer", "logger")  # composed after an experiment config
RANKS = 8  # the paper configs' per-rank batch sizes assume 8 ranks

ALL_YAMLS = sorted(CONFIGS.rglob("*.yaml"))
TEACHER_YAMLS = [  # teacher recipes: configs/teacher/*.yaml and any other teacher-*.yaml
    p
    for p in ALL_YAMLS
    if p.relative_to(CONFIGS).parts[0] == "teacher" or p.name.startswith("teacher-")
]
CLI_YAMLS = [p for p in ALL_YAMLS if p not in TEACHER_YAMLS]
PARTIAL_YAMLS = [p for p in CLI_YAMLS if p.relative_to(CONFIGS).parts[0] in PARTIAL_DIRS]
EXPERIMENT_YAMLS = [p for p in CLI_YAMLS if p not in PARTIAL_YAMLS and p != BASE]


def _id(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


# ---------------------------------------------------------------- the paper settings
# Published schedule (docs/method.md): micro-steps 0,2,...,14 long, 1 and 3 s2l, 5,7,...,15 short.
PUBLISHED_SCHEDULE = [
    "long" if i % 2 == 0 else "s2l" if i in (1, 3) else "short" for i in range(16)
]

PUBLISHED = {  # every paper config, baselines included
    "trainer.max_steps": 512,
    "trainer.precision": "bf16-mixed",
    "trainer.gradient_clip_val": 1.0,
    "model.optimizer.class_path": "torch.optim.AdamW",
    "model.optimizer.init_args.lr": 2e-5,
    "model.optimizer.init_args.betas": [0.9, 0.95],
    "model.optimizer.init_args.weight_decay": 0.1,
    "model.lr_scheduler": None,  # constant learning rate
    "model.attn_implementation": "sdpa",
    "model.dtype": "float32",
    "model.loss_chunk_size": 4096,
    "model.gradient_checkpointing": True,
    "data.long.batch_size": 1,  # 8 x T_long per long micro-step (the paper's 4 do not split over 8 ranks)
}
THREE_STREAMS = {  # short 128 x 1K and s2l 16 x 8K per micro-batch, global
    "trainer.accumulate_grad_batches": 16,
    "data.schedule": PUBLISHED_SCHEDULE,
    "data.short.seq_len": 1024,
    "data.short.batch_size": 128 // RANKS,
    "data.s2l.seq_len": 8192,
    "data.s2l.batch_size": 16 // RANKS,
}
LONGRED = {
    **PUBLISHED,
    **THREE_STREAMS,
    "model.method": "longred",
    "model.distill_layers": [1, 9, 12, 14, 15, 32],
    "model.short_weight": 5.0,
    "model.s2l_weight": 10.0,
}
CREAM = {
    "model.s2l_positions": "cream",
    "model.position_kwargs": {
        "r_std": 5.0,
        "r_min": 2,
        "head_tail_prob": 0.5,
        "head_tail_per_sample": False,
    },
}
UNIFORM = {
    "model.s2l_positions": "uniform",
    "model.position_kwargs": {"head_tail_prob": 0.5, "head_tail_per_sample": False},
}
LLAMA3_8B = {"model.teacher_path": "/models/Meta-Llama-3-8B"}
ABF_32K = {
    **LLAMA3_8B,
    "model.rope_method": "abf",
    "model.target_length": 32768,
    "model.rope_kwargs": {"rope_theta": 2e7},  # 500K -> 20M
    "data.long.seq_len": 32768,
}
AT_128K = {"model.target_length": 131072, "data.long.seq_len": 131072}

# Teacher configs with the published shapes (config.json of the models; no weights needed).
TEACHERS = {
    "/models/Meta-Llama-3-8B": (
        "LlamaConfig",
        dict(
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        ),
    ),
    "/models/Mistral-7B-v0.3": (
        "MistralConfig",
        dict(
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            sliding_window=None,
            vocab_size=32768,
        ),
    ),
}
TEACHERS["artifacts/reproduce/teacher"] = (  # configs/reproduce/teacher-two-domains.yaml
    "LlamaConfig",
    dict(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        intermediate_size=384,
        vocab_size=2048,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    ),
)
TEACHERS["artifacts/paper/teacher"] = TEACHERS["artifacts/reproduce/teacher"]  # same shape
SHAPE_8B = dict(
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=32,
    intermediate_size=14336,
    vocab_size=128256,
)
LLAMA31_ROPE = {  # Llama-3.1-8B's rope_parameters
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


# experiments/reproduce (python -m experiments.reproduce): the two-domain teacher 256 -> 1024, ABF 10000 -> 80000 (quickstart).
REPRODUCE = {
    "model.teacher_path": "artifacts/reproduce/teacher",
    "model.rope_method": "abf",
    "model.target_length": 1024,
    "model.rope_kwargs": {"rope_theta": 80000.0},
    "model.optimizer.init_args.lr": 3e-4,
    "model.lr_scheduler": None,
    "data.long.seq_len": 1024,
    "data.long.batch_size": 1,
}
REPRODUCE_THREE = {
    **REPRODUCE,
    "trainer.accumulate_grad_batches": 16,
    "data.schedule": PUBLISHED_SCHEDULE,
    "data.short.seq_len": 128,
    "data.s2l.seq_len": 256,
}
REPRODUCE_LONGRED = {
    **REPRODUCE_THREE,
    "model.method": "longred",
    "model.distill_layers": [1, 2, 4],
    "model.short_weight": 5.0,
    "model.s2l_weight": 10.0,
}


# experiments/paper_setting (python -m experiments.paper_setting): the same student setting, a
# teacher that learned A and B only, short and s2l text from C (the World English Bible).
PAPER = {
    **REPRODUCE,
    "model.teacher_path": "artifacts/paper/teacher",
    "data.long.urls": "artifacts/paper/data/long",
}
PAPER_THREE = {
    **REPRODUCE_THREE,
    **PAPER,
    "data.short.urls": "artifacts/paper/data/short",
    "data.s2l.urls": "artifacts/paper/data/s2l",
}
LONG_ONLY = {  # Long+CPT: the 8 long micro-steps of a LongReD step, no other stream
    "model.method": "long_cpt",
    "data.schedule": ["long"],
    "data.short": None,
    "data.s2l": None,
    "trainer.accumulate_grad_batches": 8,
}


def _suggested(theta: float, window: int, target: int) -> Any:
    from longred_pl.rope import suggest_abf_theta

    return pytest.approx(suggest_abf_theta(theta, window, target, 128), rel=1e-9)


EXPECTED: dict[str, dict[str, Any]] = {
    "reproduce/long-cpt.yaml": {**REPRODUCE, **LONG_ONLY},
    "reproduce/mix-cpt.yaml": {**REPRODUCE_THREE, "model.method": "mix_cpt"},
    "reproduce/longred-c.yaml": {**REPRODUCE_LONGRED, "model.s2l_positions": "cream"},
    "reproduce/longred-u.yaml": {**REPRODUCE_LONGRED, "model.s2l_positions": "uniform"},
    "paper_setting/long-cpt.yaml": {**PAPER, **LONG_ONLY},
    "paper_setting/mix-cpt.yaml": {**PAPER_THREE, "model.method": "mix_cpt"},
    "paper_setting/longred-c.yaml": {
        **REPRODUCE_LONGRED,
        **PAPER_THREE,
        "model.distill_layers": [2, 3, 4],  # the committed run's select-layers choice
        "model.s2l_positions": "cream",
    },
    "llama3-8b/32k-abf-longred-c.yaml": {**LONGRED, **CREAM, **ABF_32K},
    "llama3-8b/32k-abf-longred-u.yaml": {**LONGRED, **UNIFORM, **ABF_32K},
    "llama3-8b/32k-pi-longred-c.yaml": {
        **LONGRED,
        **CREAM,
        **ABF_32K,
        "model.rope_method": "pi",
        "model.rope_kwargs": {"factor": 4.0},
    },
    "llama3-8b/128k-abf-longred-c.yaml": {
        **LONGRED,
        **CREAM,
        **LLAMA3_8B,
        **AT_128K,
        "model.rope_method": "abf",
        # docs/method.md states no 128K theta: the config says it uses rope.suggest_abf_theta.
        "model.rope_kwargs.rope_theta": _suggested(500000.0, 8192, 131072),
    },
    "llama3-8b/32k-abf-long-cpt.yaml": {
        **PUBLISHED,
        **ABF_32K,
        "model.method": "long_cpt",
        "data.schedule": ["long"],
        "data.short": None,
        "data.s2l": None,
        # 8 micro-steps x 8 ranks x 32K = 2M tokens per step, the paper's 16 x 128K.
        "trainer.accumulate_grad_batches": 8,
    },
    "llama3-8b/32k-abf-mix-cpt.yaml": {
        **PUBLISHED,
        **THREE_STREAMS,
        **ABF_32K,
        "model.method": "mix_cpt",
    },
    "mistral-7b-v0.3/128k-abf-longred-c.yaml": {
        **LONGRED,
        **CREAM,
        **AT_128K,
        "model.teacher_path": "/models/Mistral-7B-v0.3",
        "model.rope_method": "abf",
        "model.rope_kwargs.rope_theta": _suggested(1000000.0, 32768, 131072),
    },
    # context parallelism: batch sizes are per data-parallel group (dp = 8 / cp), so the
    # global short 128 x 1K and s2l 16 x 8K batches stay the paper's
    "llama3-8b/128k-abf-longred-c-cp4.yaml": {
        **LONGRED,
        **CREAM,
        **LLAMA3_8B,
        **AT_128K,
        "model.rope_method": "abf",
        "model.rope_kwargs.rope_theta": _suggested(500000.0, 8192, 131072),
        "model.attn_implementation": "longred_ring",
        "data.short.batch_size": 128 // 2,
        "data.s2l.batch_size": 16 // 2,
    },
    "llama3-8b/512k-abf-longred-c-cp8.yaml": {
        **LONGRED,
        **CREAM,
        **LLAMA3_8B,
        "model.target_length": 524288,
        "data.long.seq_len": 524288,
        "model.rope_method": "abf",
        "model.rope_kwargs.rope_theta": _suggested(500000.0, 8192, 524288),
        "model.attn_implementation": "longred_ring",
        "data.short.batch_size": 128,
        "data.s2l.batch_size": 16,
    },
    "llama3.1-8b/128k-llama3-longred-c.yaml": {
        **LONGRED,
        **CREAM,
        **LLAMA3_8B,
        **AT_128K,
        "model.rope_method": "llama3",
        "model.rope_kwargs": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    },
}


# ------------------------------------------------------------------------ helpers
def opening_comment(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    comment = []
    for line in lines:
        if not line.startswith("#"):
            break
        comment.append(line)
    return comment


def launch_commands(path: Path) -> list[list[str]]:
    """The ``--config`` files of each ``longred fit`` command in the opening comment."""
    commands = []
    for line in opening_comment(path):
        if "longred fit" not in line:
            continue
        words = shlex.split(line.split("longred fit", 1)[1].replace("`", " "))
        commands.append([words[i + 1] for i, word in enumerate(words[:-1]) if word == "--config"])
    return commands


@contextlib.contextmanager
def restored_global_state() -> Iterator[None]:
    """LightningCLI applies ``seed_everything``; keep it from leaking into other tests."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def parse():
    """``parse(*paths)`` -> the config Namespace ``longred fit --config ...`` would use."""
    from lightning.pytorch.cli import LightningCLI

    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.module import LongReDModule

    class ParseOnlyCLI(LightningCLI):
        def instantiate_classes(self) -> None:
            """Parse and type-check only: the teacher directories do not exist here."""

    cache: dict[tuple[str, ...], Any] = {}

    def _parse(*paths: Path | str) -> Any:
        args = tuple(arg for path in paths for arg in ("--config", str(ROOT / path)))
        if args not in cache:  # tests only read the result (plain() copies)
            with restored_global_state(), mock.patch.object(sys, "argv", ["longred"]):
                cli = ParseOnlyCLI(LongReDModule, MixedLengthDataModule, args=list(args), run=False)
            cache[args] = cli.config
        return cache[args]

    return _parse


def get(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def plain(value: Any) -> Any:
    """Namespaces -> dicts, tuples -> lists, for comparison with YAML-shaped expectations."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def teacher_config(path: str) -> Any:
    import transformers

    class_name, fields = TEACHERS[path]
    return getattr(transformers, class_name)(**{**SHAPE_8B, **fields})


def build_strategy(strategy: Any) -> Any:
    """The strategy object alone (cheap: no process group, no model)."""
    from jsonargparse import Namespace

    assert isinstance(strategy, Namespace), strategy
    module, name = strategy.class_path.rsplit(".", 1)
    init_args = strategy.init_args.as_dict() if strategy.get("init_args") else {}
    cls = getattr(importlib.import_module(module), name)
    return cls(**init_args, **(strategy.get("dict_kwargs") or {}))


# -------------------------------------------------------------------------- tests
def test_configs_are_found():
    assert BASE in CLI_YAMLS and TEACHER_YAMLS and PARTIAL_YAMLS
    assert {_id(p) for p in EXPERIMENT_YAMLS} == set(EXPECTED), (
        "every experiment YAML needs an EXPECTED entry (the values that make it its paper setting)"
    )


@pytest.mark.parametrize("path", ALL_YAMLS, ids=_id)
def test_opening_comment(path):
    comment = "\n".join(opening_comment(path))
    assert comment, f"{_id(path)}: the first line must be a comment (setting, hardware, launch)"
    assert "Hardware" in comment, f"{_id(path)}: the opening comment must state the hardware"
    if path in TEACHER_YAMLS:
        assert "longred build-teacher" in comment
        return
    assert "longred fit" in comment, (
        f"{_id(path)}: the opening comment must give the launch command"
    )
    for configs in launch_commands(path):
        assert str(path.relative_to(ROOT)) in configs, (
            f"{_id(path)}: a launch command that omits it"
        )
        for config in configs:
            assert (ROOT / config).is_file(), f"{_id(path)}: launch command names missing {config}"
    if path in EXPERIMENT_YAMLS:
        assert "longred prepare" in comment, f"{_id(path)}: say how its shards are written"


@pytest.mark.parametrize("path", CLI_YAMLS, ids=_id)
def test_parses(parse, path):
    config = parse(BASE, path) if path in PARTIAL_YAMLS else parse(path)
    assert config.model.teacher_path and config.data is not None


@pytest.mark.parametrize("path", CLI_YAMLS, ids=_id)
def test_launch_commands_parse(parse, path):
    commands = launch_commands(path)
    assert commands
    for configs in commands:
        config = parse(*configs)
        strategy = config.trainer.strategy
        if getattr(getattr(strategy, "init_args", None), "activation_checkpointing_policy", None):
            # The strategy checkpoints the decoder layers; the model's own would recompute twice.
            assert config.model.gradient_checkpointing is False, configs


def off_setting(config, name: str) -> dict:
    """The keys of ``config`` whose values differ from paper config ``name``'s setting."""
    return {
        key: plain(get(config, key))
        for key, expected in EXPECTED[name].items()
        if plain(get(config, key)) != expected
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_setting(parse, name):
    wrong = off_setting(parse(CONFIGS / name), name)
    assert not wrong, f"{name}: values off the paper setting: {wrong}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_semantics(parse, name):
    """The student RoPE, skipped positions and data module the config produces are valid."""
    from longred_pl import positions, rope
    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.data.shards import StreamConfig

    config = parse(CONFIGS / name)
    model, data = config.model, config.data
    teacher = teacher_config(model.teacher_path)
    student = rope.extend_rope(
        teacher, model.rope_method, model.target_length, **(model.rope_kwargs or {})
    )
    assert student.max_position_embeddings == model.target_length
    if model.rope_method == "llama3":
        assert student.rope_parameters == LLAMA31_ROPE
    assert data.long.seq_len == model.target_length

    # The data module's own cross-field checks, with the shard lookup stubbed (no data here).
    kinds = ("long", "short", "s2l", "val_short", "val_long")
    streams = {k: StreamConfig(**plain(data[k])) if data[k] else None for k in kinds}
    others = ("schedule", "ratios", "num_workers", "seed", "shuffle_buffer", "val_batches")
    with mock.patch("longred_pl.data.index.expand_urls", side_effect=lambda urls, field: [urls]):
        datamodule = MixedLengthDataModule(**streams, **{k: plain(data[k]) for k in others})
    datamodule.check_model(
        teacher_window=teacher.max_position_embeddings,
        target_length=model.target_length,
        vocab_size=teacher.vocab_size,
        method=model.method,
    )
    if model.method != "long_cpt":  # one optimizer step = one period of the schedule
        assert config.trainer.accumulate_grad_batches == len(datamodule.schedule)

    if model.method == "longred":
        n_layers, layers = teacher.num_hidden_layers, model.distill_layers
        assert n_layers in layers and min(layers) >= 0 and max(layers) <= n_layers
        scheme = positions.get_position_scheme(model.s2l_positions)
        gen, kwargs = torch.Generator().manual_seed(0), model.position_kwargs or {}
        ids = scheme(2, data.s2l.seq_len, model.target_length, generator=gen, **kwargs)
        assert ids.shape == (2, data.s2l.seq_len) and (ids[:, 0] == 0).all()
        assert (ids.diff(dim=1) > 0).all() and ids.max() < model.target_length


@pytest.mark.parametrize("path", PARTIAL_YAMLS, ids=_id)
def test_partial_config_takes_effect(parse, path):
    """The partial config's trainer keys win over quickstart's; its strategy can be built."""
    import yaml
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    own = yaml.safe_load(path.read_text())["trainer"]
    config = parse(BASE, path)
    for key in ("accelerator", "devices", "num_nodes", "precision"):
        if key in own:
            assert config.trainer[key] == own[key], key
    if "logger" in own:
        assert config.trainer.logger.class_path == own["logger"]["class_path"]
        init_args = plain(config.trainer.logger.init_args)
        assert {k: init_args[k] for k in own["logger"]["init_args"]} == own["logger"]["init_args"]
    if "strategy" not in own:
        return
    strategy = config.trainer.strategy
    if isinstance(own["strategy"], str):  # a registered name ("auto", "ddp", ...)
        assert strategy == own["strategy"]
        return
    assert strategy.class_path == own["strategy"]["class_path"]
    built = build_strategy(strategy)  # CPU is enough: no process group is started
    if isinstance(built, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        accepted = inspect.signature(FullyShardedDataParallel.__init__).parameters
        assert set(strategy.dict_kwargs) <= set(accepted), strategy.dict_kwargs
        assert built.kwargs["use_orig_params"] is True
        classes = strategy.init_args.auto_wrap_policy
        assert {c.__name__ for c in classes} >= {"LlamaDecoderLayer", "MistralDecoderLayer"}
    if isinstance(built, DDPStrategy):  # LM head unused on short/s2l micro-steps
        assert strategy.init_args.find_unused_parameters is True


@pytest.mark.parametrize("path", TEACHER_YAMLS, ids=_id)
def test_teacher_recipe(path):
    import yaml

    from longred_pl.demo.teacher import TeacherRecipe

    recipe = TeacherRecipe.from_file(path)
    assert recipe.to_dict() == {**TeacherRecipe().to_dict(), **yaml.safe_load(path.read_text())}


# ------------------------------------------- the checks above can fail (typos are caught)
@pytest.mark.parametrize(
    "text",
    [
        "model: {rope_methd: abf}\n",  # unknown key
        "model: {dtype: float64}\n",  # not a Literal choice (model.method is checked at construction)
        "data: {short: {urls: x, seq_len: 1K, batch_size: 8}}\n",  # not an int
        "trainer:\n  strategy:\n    class_path: lightning.pytorch.strategies.FSDPStrategy\n"
        "    init_args: {auto_wrap_policy: [transformers.models.llama.modeling_llama.LlamaDecoderLayr]}\n",
        "trainer:\n  strategy:\n    class_path: lightning.pytorch.strategies.FSDPStrategy\n"
        "    init_args: {use_orig_params: true}\n",  # **kwargs are refused under init_args
    ],
    ids=["unknown-key", "bad-choice", "bad-type", "bad-wrap-class", "kwargs-in-init-args"],
)
def test_typos_fail(parse, tmp_path, text, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit):
        parse(BASE, bad)


def test_wrong_paper_value_is_caught(parse, tmp_path):
    name = "llama3-8b/32k-abf-longred-c.yaml"
    bad = tmp_path / "typo.yaml"
    bad.write_text("model: {rope_kwargs: {rope_theta: 2000000.0}}\n")  # 2e6 instead of 2e7
    # the check test_paper_setting runs flags exactly the typo, and nothing else
    assert off_setting(parse(CONFIGS / name, bad), name) == {
        "model.rope_kwargs": {"rope_theta": 2000000.0}
    }
