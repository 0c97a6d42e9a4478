"""Every shipped YAML under ``configs/`` builds and keeps the rules that make it correct.

Nothing here restates a config; each test is a rule a config must keep:

* it builds: every ``longred fit`` command in its opening comment parses with the real
  LightningCLI (the parser ``longred fit`` builds over ``LongReDModule`` and
  ``MixedLengthDataModule``), the module and the data module are constructed (a teacher's
  config stands in for its weights, the shard lookup is stubbed) and the library's own setup
  checks (``checks.check_run``) pass on the ranks of the trainer config it is composed with;
* lengths: under context parallelism every stream, validation included, splits into
  ``2 x cp`` chunks; the long stream trains at the student's whole window; one optimizer step
  is one period of the published schedule;
* its file name says what it runs (window, RoPE, method, skipped positions, CP size);
* the published recipe (docs/method.md) where a config claims it: the full-scale configs
  (every directory but the scaled-down studies); the scaled-down studies share the
  quickstart's RoPE and optimizer; the runs one results table compares differ in their
  method only.

``configs/trainer/`` and ``configs/logger/`` fragments are parsed on top of
``quickstart.yaml`` and checked for their own rules; ``configs/teacher/*.yaml`` and
``teacher-*.yaml`` are teacher recipes, loaded with ``TeacherRecipe.from_file``. The last
tests break each rule once (an override on top of a shipped config) and check it fails.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import random
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from longred_pl.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
BASE = CONFIGS / "quickstart.yaml"
PARTIAL_DIRS = ("trainer", "logger")  # composed after an experiment config
SCALED_DOWN = ("reproduce", "paper_setting")  # the small studies; other directories: full scale

ALL_YAMLS = sorted(CONFIGS.rglob("*.yaml"))
TEACHER_YAMLS = [  # teacher recipes: configs/teacher/*.yaml and any other teacher-*.yaml
    p
    for p in ALL_YAMLS
    if p.relative_to(CONFIGS).parts[0] == "teacher" or p.name.startswith("teacher-")
]
CLI_YAMLS = [p for p in ALL_YAMLS if p not in TEACHER_YAMLS]
PARTIAL_YAMLS = [p for p in CLI_YAMLS if p.relative_to(CONFIGS).parts[0] in PARTIAL_DIRS]
FIT_YAMLS = [p for p in CLI_YAMLS if p not in PARTIAL_YAMLS]  # quickstart included
SCALED_YAMLS = [p for p in FIT_YAMLS if p.parent.name in SCALED_DOWN]
FULL_SCALE_YAMLS = [p for p in FIT_YAMLS if p != BASE and p not in SCALED_YAMLS]


def _id(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


# ------------------------------------------------- the published run (docs/method.md)
PAPER_STEPS = 512
PAPER_WEIGHTS = {"short_weight": 5.0, "s2l_weight": 10.0}  # a1, a2
PAPER_BATCHES = {"short": (1024, 128), "s2l": (8192, 16)}  # (seq_len, samples over all ranks)
PAPER_LONG_TOKENS = 4 * 32768  # the long micro-batch, 4 x 32K
# Llama-3-8B's distilled hidden states, read by the paper off its per-layer drift curves; no
# library default produces them (default_distill_layers gives [1, n]), so a config must.
PAPER_LAYERS = [1, 9, 12, 14, 15, 32]
# (teacher rope_theta, teacher window, target) -> ABF rope_theta: the one the paper states.
# Other ABF targets use rope.suggest_abf_theta, as those configs' comments say.
PAPER_ABF_THETA = {(500000.0, 8192, 32768): 2e7}
PAPER_DRAWS = {  # the published skipped-position draws; None: the scheme's published default
    "cream": dict(
        r_mean=None,  # 1 + k
        r_std=5.0,
        r_min=2,
        r_max=None,  # 2k
        head_tail_lengths=None,  # T // 3 or 4k
        head_tail_prob=0.5,
        head_tail_per_sample=False,  # drawn once per micro-batch
    ),
    "uniform": dict(head_tail_lengths=None, head_tail_prob=0.5, head_tail_per_sample=False),
}
LLAMA31_ROPE = {  # Llama-3.1-8B's rope_parameters (what configs/llama3.1-8b claims to give)
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# The published teachers' config.json shapes (no weights needed); the small teachers are the
# ones a shipped recipe builds (teacher_of).
SHAPE_8B = dict(
    hidden_size=4096,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_hidden_layers=32,
    intermediate_size=14336,
    vocab_size=128256,
)
PUBLISHED_TEACHERS = {
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

# A config's file name: [<window>k-<rope>-]<method>[-cp<N>].
NAME = re.compile(
    r"((?P<window>\d+)k-(?P<rope>[a-z0-9]+)-)?"
    r"(?P<method>long-cpt|mix-cpt|longred-c|longred-u)(-cp(?P<cp>\d+))?"
)
NAMED_METHODS = {  # name -> (model.method, model.s2l_positions or None)
    "long-cpt": ("long_cpt", None),
    "mix-cpt": ("mix_cpt", None),
    "longred-c": ("longred", "cream"),
    "longred-u": ("longred", "uniform"),
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


def named_trainer(path: Path) -> list[str]:
    """The trainer config the opening comment names (``# Trainer config: ...``), or none."""
    for line in opening_comment(path):
        if line.startswith("# Trainer config:"):
            value = line.split(":", 1)[1].split()[0]
            return [] if value == "none" else [value]
    raise AssertionError(f"{_id(path)}: the opening comment names no 'Trainer config:'")


def teacher_builds() -> dict[str, Path]:
    """``--out`` directory -> the teacher recipe whose ``longred build-teacher`` writes it."""
    built = {}
    for recipe in TEACHER_YAMLS:
        text = " ".join(line.lstrip("#").strip().rstrip("\\") for line in opening_comment(recipe))
        for path, out in re.findall(r"longred build-teacher --recipe (\S+)\s+--out (\S+)", text):
            assert ROOT / path == recipe, f"{_id(recipe)}: its build command names {path}"
            built[out] = recipe
    return built


COMPOSITIONS = sorted({tuple(c) for path in CLI_YAMLS for c in launch_commands(path)})


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


_PARSED: dict[tuple[str, ...], Any] = {}


def parse(*paths: Path | str) -> Any:
    """The config Namespace ``longred fit --config ...`` would use (cached: tests only read it)."""
    from lightning.pytorch.cli import LightningCLI

    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.module import LongReDModule

    class ParseOnlyCLI(LightningCLI):
        def instantiate_classes(self) -> None:
            """Parse and type-check only: the teacher directories do not exist here."""

    args = tuple(arg for path in paths for arg in ("--config", str(ROOT / path)))
    if args not in _PARSED:
        with restored_global_state(), mock.patch.object(sys, "argv", ["longred"]):
            cli = ParseOnlyCLI(LongReDModule, MixedLengthDataModule, args=list(args), run=False)
        _PARSED[args] = cli.config
    return _PARSED[args]


def fit(path: Path, *extra: Path) -> Any:
    """``path`` on the trainer config it names (as launched), then ``extra``."""
    return parse(path, *named_trainer(path), *extra)


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


def load_class(class_path: str) -> Any:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def teacher_of(config: Any) -> Any:
    """The teacher's config: a published model's shape, or what a shipped recipe builds."""
    import transformers

    from longred_pl.demo.teacher import TeacherRecipe, teacher_config

    path = config.model.teacher_path
    if path in PUBLISHED_TEACHERS:
        class_name, fields = PUBLISHED_TEACHERS[path]
        return getattr(transformers, class_name)(**{**SHAPE_8B, **fields})
    built = teacher_builds()
    assert path in built, f"model.teacher_path {path!r}: no shipped recipe builds it"
    no_ids = SimpleNamespace(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return teacher_config(TeacherRecipe.from_file(built[path]), no_ids)


def ranks(config: Any) -> tuple[int, int]:
    """``(dp, cp)``: data-parallel groups and ranks per sequence of the composed trainer."""
    trainer, strategy = config.trainer, config.trainer.strategy
    world = int(trainer.devices) * int(trainer.num_nodes or 1)
    cp = 1
    if getattr(strategy, "class_path", "").endswith("ContextParallelStrategy"):
        cp = int(strategy.init_args.context_parallel_size)
    assert world % cp == 0, f"{world} ranks do not split into groups of {cp}"
    return world // cp, cp


def streams(config: Any) -> dict[str, Any]:
    """Every stream the data module reads, validation included (``None`` when not set)."""
    return {k: config.data[k] for k in ("long", "short", "s2l", "val_short", "val_long")}


def build(config: Any) -> tuple[Any, Any]:
    """The module and data module ``longred fit`` builds, without weights or shards."""
    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.data.shards import StreamConfig
    from longred_pl.module import LongReDModule

    model = {k: v for k, v in plain(config.model).items() if k not in ("optimizer", "lr_scheduler")}
    with mock.patch("longred_pl.module.load_config", return_value=teacher_of(config)):
        module = LongReDModule(**model)
    data = {k: StreamConfig(**plain(c)) if c else None for k, c in streams(config).items()}
    others = ("schedule", "ratios", "num_workers", "seed", "shuffle_buffer", "val_batches")
    with mock.patch("longred_pl.data.index.expand_urls", side_effect=lambda urls, field: [urls]):
        datamodule = MixedLengthDataModule(**data, **{k: plain(config.data[k]) for k in others})
    return module, datamodule


def build_strategy(strategy: Any) -> Any:
    """The strategy object alone (cheap: no process group, no model)."""
    from jsonargparse import Namespace

    assert isinstance(strategy, Namespace), strategy
    init_args = strategy.init_args.as_dict() if strategy.get("init_args") else {}
    return load_class(strategy.class_path)(**init_args, **(strategy.get("dict_kwargs") or {}))


# -------------------------------------------------------------------------- rules
# Each rule takes a config's path and its parsed config and fails with an AssertionError
# (or the library's UserError) naming what is wrong; test_breaks_are_caught breaks each once.
def builds(path: Path | None, config: Any) -> None:
    """Module, data module and the setup checks of ``checks.check_run`` on the composed ranks.

    The construction checks the method exists, the RoPE extends the teacher, the distilled
    layers and position kwargs are valid; check_run the precision, every stream's length
    against the windows, the streams the method consumes, whole schedule periods per step,
    the ring attention and training lengths under CP, and the s2l draw against the target.
    """
    from longred_pl import checks
    from longred_pl.parallel.microbatch import Layout

    module, datamodule = build(config)
    dp, cp = ranks(config)
    module.layout = Layout(dp_size=dp, cp_size=cp)
    trainer = SimpleNamespace(
        precision=config.trainer.precision,
        accumulate_grad_batches=config.trainer.accumulate_grad_batches,
    )
    checks.check_run(module, datamodule, trainer)
    if config.trainer.precision == "bf16-mixed":  # fp32 master weights (2e-5 rounds away in bf16)
        assert config.model.dtype == "float32", "bf16-mixed needs model.dtype: float32"
    strategy = config.trainer.strategy
    if getattr(getattr(strategy, "init_args", None), "activation_checkpointing_policy", None):
        # The strategy checkpoints the decoder layers; the model's own would recompute twice.
        assert config.model.gradient_checkpointing is False, "model.gradient_checkpointing twice"


def cp_lengths(path: Path | None, config: Any) -> None:
    """Under CP every stream splits into 2 x cp chunks: validation is sharded too
    (``module.token_nll``), which ``check_run`` does not check."""
    from longred_pl.parallel.sharding import check_cp_length

    _, cp = ranks(config)
    assert config.model.attn_implementation == "longred_ring" or cp == 1, "attn_implementation"
    for kind, stream in streams(config).items():
        if stream is not None:
            check_cp_length(stream.seq_len, cp, field=f"data.{kind}.seq_len")


def name_says_what_it_runs(path: Path, config: Any) -> None:
    """``[<window>k-<rope>-]<method>[-cp<N>].yaml``: window, RoPE, method, positions, CP."""
    match = NAME.fullmatch(path.stem)
    assert match, f"{path.name}: name it [<window>k-<rope>-]<method>[-cp<N>].yaml"
    assert match["window"] or path in SCALED_YAMLS, f"{path.name}: give <window>k-<rope>-"
    method, positions = NAMED_METHODS[match["method"]]
    model = config.model
    assert model.method == method, f"{path.name}: model.method is not {method!r}"
    if positions:
        assert model.s2l_positions == positions, f"{path.name}: model.s2l_positions"
    if match["window"]:
        assert model.target_length == int(match["window"]) * 1024, "model.target_length"
        assert model.rope_method == match["rope"], "model.rope_method"
    assert ranks(config)[1] == int(match["cp"] or 1), "trainer.strategy: the CP size"


def schedule_and_accumulation(path: Path, config: Any) -> None:
    """One optimizer step is one period of the published schedule (the published weights
    assume it); Long+CPT reads the long micro-steps of that period ("same data, same steps")."""
    from longred_pl.data.schedule import PUBLISHED_SCHEDULE, build_schedule

    schedule = build_schedule(plain(config.data.schedule), plain(config.data.ratios))
    accumulate = config.trainer.accumulate_grad_batches
    if config.model.method == "long_cpt":
        assert schedule == ["long"], "data.schedule: long_cpt reads the long stream only"
        long_steps = PUBLISHED_SCHEDULE.count("long")
        assert accumulate == long_steps, "trainer.accumulate_grad_batches != long micro-steps"
    else:
        assert schedule == list(PUBLISHED_SCHEDULE), "data.schedule: not the published one"
        assert accumulate == len(schedule), "trainer.accumulate_grad_batches != the period"


def rope_rules(path: Path, config: Any) -> None:
    """The long stream trains at the whole target window; the RoPE is the one the config
    claims: the paper's or suggest_abf_theta's ABF base, PI by target / window, Llama-3.1's."""
    from longred_pl import rope

    model, teacher = config.model, teacher_of(config)
    assert config.data.long.seq_len == model.target_length, "data.long.seq_len != target"
    if path in SCALED_YAMLS:  # the studies extend their teachers as the quickstart does
        for key in ("rope_method", "target_length", "rope_kwargs"):
            assert plain(model[key]) == plain(parse(BASE).model[key]), f"model.{key}"
    if path not in FULL_SCALE_YAMLS:
        return
    theta, window = teacher.rope_parameters["rope_theta"], rope.original_window(teacher)
    kwargs = plain(model.rope_kwargs) or {}
    if model.rope_method == "abf":
        paper = PAPER_ABF_THETA.get((theta, window, model.target_length))
        suggested = rope.suggest_abf_theta(
            theta, window, model.target_length, rope.rotary_dim(teacher)
        )
        expected = pytest.approx(paper or suggested, rel=1e-9)
        assert kwargs.get("rope_theta") == expected, "model.rope_kwargs.rope_theta"
    if model.rope_method == "pi":
        assert kwargs.get("factor") == model.target_length / window, "model.rope_kwargs.factor"
    if model.rope_method == "llama3":
        student = rope.extend_rope(teacher, "llama3", model.target_length, **kwargs)
        assert student.rope_parameters == LLAMA31_ROPE, "model.rope_kwargs: not Llama-3.1's"


def longred_settings(path: Path, config: Any) -> None:
    """The published weights and skipped-position draw; distilled layers end with the final
    state (L_s2l's, always distilled by the paper) and come from where the config says."""
    from longred_pl import positions
    from longred_pl.methods import default_distill_layers

    model, n_layers = config.model, teacher_of(config).num_hidden_layers
    for key, value in PAPER_WEIGHTS.items():  # ablations override them on the command line
        assert model[key] == value, f"model.{key}"
    scheme = inspect.signature(positions.get_position_scheme(model.s2l_positions)).parameters
    draw = {p.name: p.default for p in scheme.values() if p.kind is p.KEYWORD_ONLY}
    draw.update(plain(model.position_kwargs) or {})
    assert draw == PAPER_DRAWS[model.s2l_positions], "model.position_kwargs: not the paper's"
    layers = plain(model.distill_layers) or default_distill_layers(n_layers)
    assert layers[-1] == n_layers and layers[0] > 0, "model.distill_layers: 1..n, ending at n"
    if path in FULL_SCALE_YAMLS:  # the Mistral config reuses them: 32 layers too
        assert n_layers == 32 and layers == PAPER_LAYERS, "model.distill_layers: not the paper's"
    elif path.parent.name == "paper_setting":  # the committed run's select-layers choice
        results = ROOT / "experiments/paper_setting/results/paper_setting.json"
        chosen = json.loads(results.read_text())["select_layers"]["distill_layers"]
        assert layers == chosen, "model.distill_layers: not the study's select-layers choice"
    elif path != BASE:  # configs/reproduce: as the quickstart
        quickstart = plain(parse(BASE).model.distill_layers)
        assert layers == quickstart, "model.distill_layers: not the quickstart's"


def paper_recipe(path: Path, config: Any) -> None:
    """The published run on the trainer config the config names: steps, optimizer, precision,
    global micro-batches; the memory settings an 8B student and teacher need."""
    from longred_pl.methods import published_adamw

    trainer, model, data = config.trainer, config.model, config.data
    assert trainer.max_steps == PAPER_STEPS, "trainer.max_steps"
    assert trainer.precision == "bf16-mixed", "trainer.precision"
    assert trainer.gradient_clip_val == 1.0, "trainer.gradient_clip_val (the scripts' 1.0)"
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = load_class(model.optimizer.class_path)(params, **plain(model.optimizer.init_args))
    assert optimizer.defaults == published_adamw(params).defaults, "model.optimizer"
    assert model.lr_scheduler is None, "model.lr_scheduler: the published lr is constant"
    dp, _ = ranks(config)
    for kind, (seq_len, samples) in PAPER_BATCHES.items():
        if data[kind] is not None:
            assert data[kind].seq_len == seq_len, f"data.{kind}.seq_len"
            assert data[kind].batch_size * dp == samples, f"data.{kind}: {samples} over {dp} ranks"
    # one long sample per data-parallel group, the smallest micro-batch; it still holds at
    # least the paper's long tokens (its 4 x 32K do not split over 8 ranks)
    assert data.long.batch_size == 1, "data.long.batch_size"
    assert dp * data.long.seq_len >= PAPER_LONG_TOKENS, "data.long: under the paper's tokens"
    # a long sample's logits over a 128K vocabulary (16 GB in fp32 at 32K) must be chunked,
    # and 8B activations at 32K+ tokens checkpointed, by the model or by the strategy
    assert model.loss_chunk_size > 0, "model.loss_chunk_size: 0 materialises all logits"
    by_strategy = getattr(trainer.strategy, "init_args", None)
    by_strategy = getattr(by_strategy, "activation_checkpointing_policy", None)
    assert model.gradient_checkpointing or by_strategy, "model.gradient_checkpointing: none"


def scaled_as_quickstart(path: Path, config: Any) -> None:
    """The quickstart's optimizer (lr 3e-4 for a 1M-parameter model), constant, clip 1.0."""
    for key in ("trainer.gradient_clip_val", "model.optimizer", "model.lr_scheduler"):
        assert plain(get(config, key)) == plain(get(parse(BASE), key)), key


SHARED = (  # what the runs one results table compares share: "same data, same steps"
    *("seed_everything", "trainer.max_steps", "trainer.precision", "trainer.gradient_clip_val"),
    *("model.teacher_path", "model.rope_method", "model.target_length", "model.rope_kwargs"),
    *("model.dtype", "model.seed", "model.optimizer", "model.lr_scheduler"),
    *("data.long", "data.seed", "data.shuffle_buffer"),
)
SHARED_STREAMS = ("data.short", "data.s2l", "data.schedule", "trainer.accumulate_grad_batches")
SHARED_LONGRED = ("model.distill_layers", "model.short_weight", "model.s2l_weight")


def reference_run(path: Path) -> Path | None:
    """The LongReD-C config whose results table compares ``path`` (same window and RoPE)."""
    match = NAME.fullmatch(path.stem)
    if not match or match["cp"]:
        return None
    prefix = f"{match['window']}k-{match['rope']}-" if match["window"] else ""
    reference = path.parent / f"{prefix}longred-c.yaml"
    return reference if reference.is_file() and reference != path else None


def same_setting(path: Path, config: Any) -> None:
    """Differs from its LongReD-C run in the method only (and the streams it does not read)."""
    reference = fit(reference_run(path))
    keys = SHARED
    if config.data.short and config.data.s2l:  # mix_cpt and longred read the same three
        keys += SHARED_STREAMS
    if config.model.method == "longred":
        keys += SHARED_LONGRED
    differ = [k for k in keys if plain(get(config, k)) != plain(get(reference, k))]
    assert not differ, f"{_id(path)} differs from {_id(reference_run(path))} in {differ}"
    assert named_trainer(path) == named_trainer(reference_run(path)), "another trainer config"


STUDY_YAMLS = [p for p in FIT_YAMLS if reference_run(p)]
LONGRED_YAMLS = [  # model.method's default is longred
    p
    for p in FIT_YAMLS
    if yaml.safe_load(p.read_text())["model"].get("method", "longred") == "longred"
]


# -------------------------------------------------------------------------- tests
def test_configs_are_found():
    assert BASE in FIT_YAMLS and TEACHER_YAMLS and PARTIAL_YAMLS
    assert FULL_SCALE_YAMLS and SCALED_YAMLS and STUDY_YAMLS
    assert {ROOT / c for command in COMPOSITIONS for c in command} >= set(FIT_YAMLS)


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
    if path in FIT_YAMLS and path != BASE:
        assert "longred prepare" in comment, f"{_id(path)}: say how its shards are written"


@pytest.mark.parametrize("path", FIT_YAMLS, ids=_id)
def test_trainer_config_named(path):
    """The trainer config it names exists and is the one its launch commands compose."""
    named = named_trainer(path)
    for trainer in named:
        assert (ROOT / trainer).is_file() and Path(trainer).parent.name == "trainer", trainer
    for configs in launch_commands(path):
        i = configs.index(str(path.relative_to(ROOT)))
        assert configs[i + 1 : i + 1 + len(named)] == named, configs


@pytest.mark.parametrize("path", CLI_YAMLS, ids=_id)
def test_parses(path):
    config = parse(BASE, path) if path in PARTIAL_YAMLS else parse(path)
    assert config.model.teacher_path and config.data is not None


@pytest.mark.parametrize("configs", COMPOSITIONS, ids="+".join)
def test_launch_command_builds(configs):
    builds(None, parse(*configs))


@pytest.mark.parametrize("configs", COMPOSITIONS, ids="+".join)
def test_cp_lengths(configs):
    cp_lengths(None, parse(*configs))


@pytest.mark.parametrize("path", [p for p in FIT_YAMLS if p != BASE], ids=_id)
def test_name_says_what_it_runs(path):
    name_says_what_it_runs(path, fit(path))


@pytest.mark.parametrize("path", FIT_YAMLS, ids=_id)
def test_schedule_and_accumulation(path):
    schedule_and_accumulation(path, fit(path))


@pytest.mark.parametrize("path", FIT_YAMLS, ids=_id)
def test_rope(path):
    rope_rules(path, fit(path))


@pytest.mark.parametrize("path", LONGRED_YAMLS, ids=_id)
def test_longred_settings(path):
    longred_settings(path, fit(path))


@pytest.mark.parametrize("path", FULL_SCALE_YAMLS, ids=_id)
def test_paper_recipe(path):
    paper_recipe(path, fit(path))


@pytest.mark.parametrize("path", SCALED_YAMLS, ids=_id)
def test_scaled_down_as_quickstart(path):
    scaled_as_quickstart(path, fit(path))


@pytest.mark.parametrize("path", STUDY_YAMLS, ids=_id)
def test_same_setting(path):
    same_setting(path, fit(path))


@pytest.mark.parametrize("path", PARTIAL_YAMLS, ids=_id)
def test_partial_config_takes_effect(path):
    """The partial config's trainer keys win over quickstart's; its strategy can be built."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

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
    if type(built) is ModelParallelStrategy:  # checks.check_mesh's rule, before the mesh exists
        world = config.trainer.devices * config.trainer.num_nodes
        assert strategy.init_args.tensor_parallel_size == 1, "no tensor parallelism here"
        assert strategy.init_args.data_parallel_size == world, "every rank data-parallel"


@pytest.mark.parametrize("path", TEACHER_YAMLS, ids=_id)
def test_teacher_recipe(path):
    from longred_pl.demo.teacher import TeacherRecipe

    recipe = TeacherRecipe.from_file(path)
    assert recipe.to_dict() == {**TeacherRecipe().to_dict(), **yaml.safe_load(path.read_text())}


# ------------------------------------------------- the checks above can fail
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
def test_typos_fail(tmp_path, text, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit):
        parse(BASE, bad)


BREAKS = [  # (rule, config as launched, {field: wrong value}): the failure names the field
    (builds, "llama3-8b/32k-abf-longred-c", {"data.s2l.seq_len": 16384}),
    (builds, "llama3-8b/32k-abf-longred-c", {"model.distill_layers": [1, 33]}),
    (builds, "quickstart", {"model.dtype": "bfloat16", "trainer.precision": "bf16-mixed"}),
    (builds, "llama3-8b/128k-abf-longred-c-cp4", {"model.attn_implementation": "sdpa"}),
    (builds, "quickstart", {"model.teacher_path": "artifacts/other/teacher"}),
    (cp_lengths, "llama3-8b/128k-abf-longred-c-cp4", {"data.val_short.seq_len": 8188}),
    (name_says_what_it_runs, "llama3-8b/32k-abf-longred-c", {"model.s2l_positions": "uniform"}),
    (name_says_what_it_runs, "llama3-8b/32k-pi-longred-c", {"model.target_length": 65536}),
    (schedule_and_accumulation, "reproduce/longred-c", {"data.schedule": ["long", "short"]}),
    (schedule_and_accumulation, "reproduce/long-cpt", {"trainer.accumulate_grad_batches": 16}),
    (rope_rules, "llama3-8b/32k-abf-longred-c", {"model.rope_kwargs.rope_theta": 2e6}),
    (rope_rules, "mistral-7b-v0.3/128k-abf-longred-c", {"model.rope_kwargs.rope_theta": 8e6}),
    (rope_rules, "llama3-8b/32k-pi-longred-c", {"model.rope_kwargs.factor": 8.0}),
    (rope_rules, "llama3.1-8b/128k-llama3-longred-c", {"model.rope_kwargs.factor": 16.0}),
    (rope_rules, "quickstart", {"data.long.seq_len": 512}),
    (rope_rules, "paper_setting/mix-cpt", {"model.rope_kwargs.rope_theta": 4e4}),
    (longred_settings, "quickstart", {"model.s2l_weight": 30.0}),
    (longred_settings, "llama3-8b/32k-abf-longred-c", {"model.position_kwargs.r_std": 2.0}),
    (longred_settings, "llama3-8b/128k-abf-longred-c", {"model.distill_layers": [1, 9, 16, 32]}),
    (longred_settings, "paper_setting/longred-c", {"model.distill_layers": [1, 2, 4]}),
    (longred_settings, "reproduce/longred-u", {"model.distill_layers": [1, 3, 4]}),
    (longred_settings, "llama3-8b/512k-abf-longred-c-cp8", {"model.distill_layers": [1, 9, 12]}),
    (paper_recipe, "llama3-8b/32k-abf-mix-cpt", {"model.optimizer.init_args.lr": 2e-4}),
    (paper_recipe, "mistral-7b-v0.3/128k-abf-longred-c", {"trainer.max_steps": 1000}),
    (paper_recipe, "llama3-8b/128k-abf-longred-c-cp4", {"data.short.batch_size": 16}),
    (paper_recipe, "llama3.1-8b/128k-llama3-longred-c", {"model.gradient_checkpointing": False}),
    (paper_recipe, "llama3-8b/32k-abf-long-cpt", {"model.loss_chunk_size": 0}),
    (scaled_as_quickstart, "paper_setting/long-cpt", {"model.optimizer.init_args.lr": 1e-3}),
    (same_setting, "llama3-8b/32k-abf-long-cpt", {"data.shuffle_buffer": 256}),
    (same_setting, "paper_setting/mix-cpt", {"data.s2l.urls": "artifacts/paper/data/short"}),
    (same_setting, "reproduce/longred-u", {"model.short_weight": 15.0}),
]


@pytest.mark.parametrize(
    "rule, name, wrong",
    BREAKS,
    ids=[f"{rule.__name__}-{name}-{next(iter(wrong))}" for rule, name, wrong in BREAKS],
)
def test_breaks_are_caught(tmp_path, rule, name, wrong):
    """Each rule fails on a shipped config with one field broken, naming that field."""
    override: dict[str, Any] = {}
    for dotted, value in wrong.items():
        *parents, leaf = dotted.split(".")
        node = override
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    bad = tmp_path / "break.yaml"
    bad.write_text(yaml.safe_dump(override))
    parts = next(iter(wrong)).split(".")  # the field, or the group it is in (model.optimizer)
    names = "|".join(re.escape(".".join(parts[:i])) for i in range(2, len(parts) + 1))
    path = CONFIGS / f"{name}.yaml"
    with pytest.raises((AssertionError, UserError), match=names):
        rule(path, fit(path, bad))
