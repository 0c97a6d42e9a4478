"""The model card (``README.md``) of an export or a merge: how it was made and how it scores.

The Hugging Face Hub reads a model directory's ``README.md`` as its card: YAML front matter
(``library_name``, ``pipeline_tag``, ``base_model``, ``license``, ``tags``) and markdown. The
card written by ``longred export`` (and by ``ExportStudent`` at the end of ``fit``) says

* the base model (``base_model`` in the front matter when its Hub id can be known, see
  :func:`hub_id_of`) and the RoPE change in words (``base frequency (rope_theta) 10000 ->
  80000``), with the old and new window;
* the recipe: ``longred`` / ``long_cpt`` / ``mix_cpt``, the loss weights, the distilled
  hidden states, the s2l position scheme (docs/method.md, "The recipe");
* the data: each stream's shards, length and batch, with the ``index.json`` that
  ``longred prepare`` wrote beside them (source, tokenizer, sample count); for a run fed
  by the user's own DataLoader, that, and the micro-batches, samples, lengths and tokens
  the module read per stream (``batches.BatchContract.record``, kept in the checkpoint);
* the optimizer and learning-rate schedule (the run's ``config.yaml``), optimizer steps,
  micro-steps and tokens trained per stream;
* the last validation the run logged before the checkpoint (its ``metrics.csv``, else the
  checkpoint's ``ModelCheckpoint`` score);
* the evaluation tables when an evaluation was run (``longred eval``'s ``results.json``,
  ``longred lm-eval``'s ``lm_eval.json`` / ``ruler.json``), rows named by model;
* the tokenizer's origin, or that there is none; the base model's license when its card
  (or config) states one.

No absolute local path is written: a path inside the run's directory is shown relative to
it, any other local path by its last component. The card of ``longred merge``
(:func:`render_merge_card`) names both parents and ``alpha`` under the same front matter rules.

A checkpoint holds the model's settings and the data cursor but not the stream settings
(the data module saves no hyperparameters), so for ``longred export`` they come from the
run's ``config.yaml`` (LightningCLI writes it into the log directory), found near the
checkpoint or given with ``--run-config``; the card says where they came from.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "base_model_of",
    "card_facts",
    "eval_markdown",
    "find_eval_results",
    "find_run_config",
    "hub_id_of",
    "license_of",
    "optimization_from_config",
    "read_front_matter",
    "render_card",
    "render_merge_card",
    "rope_change",
    "shown",
    "validation_from_csv",
]

PAPER = "Dong et al. 2025, LongReD (arXiv 2502.07365)"
KINDS = ("long", "short", "s2l")


# ------------------------------------------------------------------ local paths
def shown(path: Any, root: str | os.PathLike | None = None) -> str:
    """``path`` as the card may show it: never the user's full local path.

    URLs (``s3://``, ``https://``, ``pipe:``) and relative paths are kept; an absolute path
    inside ``root`` (the run's directory) is shown relative to it, any other by its last
    component. Lists are shown item by item.
    """
    if isinstance(path, list | tuple):
        return ", ".join(shown(p, root) for p in path)
    text = str(path)
    if not text or "://" in text or text.startswith("pipe:") or not os.path.isabs(text):
        return text
    if root is not None:
        try:
            return Path(text).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(text).name or text


def run_root(ckpt_path: str) -> str | None:
    """The run's directory: the checkpoint folder's parent (``RUN/checkpoints/last.ckpt``),
    unless that is the filesystem root, home or one of its parents (then ``None``)."""
    root = Path(ckpt_path).resolve().parent.parent
    home = Path.home().resolve()
    if root == Path(root.anchor) or root == home or root in home.parents:
        return None
    return str(root)


# --------------------------------------------------------------- Hub metadata
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# first components of relative paths that trainers write as _name_or_path (not Hub owners)
LOCAL_OWNERS = {"output", "outputs", "checkpoints", "checkpoint", "ckpt", "runs", "tmp", "saved"}


def is_hub_id(value: Any, strict: bool = True) -> bool:
    """Whether ``value`` reads as a Hub repository id ``owner/name``.

    ``strict`` (for ids found in files, not given by the user) also refuses the relative
    paths trainers record as ``_name_or_path`` (``output/checkpoint-500``); without it, an
    owner-less legacy id (``gpt2``) is accepted too.
    """
    legacy = not strict and isinstance(value, str) and HUB_ID.match(f"x/{value}")
    if not isinstance(value, str) or len(value) > 96 or not (HUB_ID.match(value) or legacy):
        return False
    if "--" in value or ".." in value or value.endswith((".", "-")):
        return False
    owner, _, name = value.rpartition("/")
    return not strict or (
        owner.lower() not in LOCAL_OWNERS and not re.fullmatch(r"checkpoint-\d+", name)
    )


def check_base_model(value: str | None) -> str | None:
    """``--base-model``: a Hub id (``org/name``), else a :class:`UserError`."""
    from longred_pl.errors import UserError

    if value is not None and (not is_hub_id(value, strict=False) or os.path.exists(value)):
        what = "a local path" if os.path.exists(value) else "not a Hugging Face Hub id (owner/name)"
        raise UserError(
            f"--base-model: {value!r} is {what}; pass the base model's id on the Hub, e.g. "
            "--base-model meta-llama/Meta-Llama-3-8B, or leave it out"
        )
    return value


def read_front_matter(directory: str | os.PathLike) -> dict[str, Any]:
    """The YAML front matter of ``directory/README.md`` (its model card), ``{}`` if none."""
    try:
        text = (Path(directory) / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    end = next((i for i, line in enumerate(lines[1:], 1) if line.strip() == "---"), None)
    if end is None:
        return {}
    try:
        front = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return {}
    return front if isinstance(front, dict) else {}


def _json_value(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def hub_id_of(directory: str | os.PathLike) -> tuple[Any, str | None]:
    """The Hub id of the model in ``directory`` where it can be known, and where it was read.

    In this order: the Hugging Face cache layout (``.../models--ORG--NAME/snapshots/REV``);
    the ``base_model`` of a card written by this library (``tags: [longred, ...]``: the
    directory is an export or a merge of that model, not on the Hub itself); the
    ``_name_or_path`` of ``config.json``; the ``name_or_path`` of ``tokenizer_config.json``
    (older transformers wrote the Hub id there). Another card's ``base_model`` names that
    model's own parent, not the model, so it is not used. ``(None, None)`` when unknown.
    """
    folder = Path(directory)
    parts = folder.resolve().parts
    for part, after in zip(parts, parts[1:], strict=False):
        candidate = part.removeprefix("models--").replace("--", "/")
        if part.startswith("models--") and after == "snapshots" and is_hub_id(candidate):
            return candidate, f"its Hugging Face cache folder `{part}`"
    front = read_front_matter(folder)
    if "longred" in (front.get("tags") or []) and front.get("base_model"):
        return front["base_model"], "the base_model of its card (a longred_pl model)"
    for name, key in (("config.json", "_name_or_path"), ("tokenizer_config.json", "name_or_path")):
        value = _json_value(folder / name, key)
        if is_hub_id(value):
            return value, f"`{key}` in its {name}"
    return None, None


def base_model_of(
    given: str | None, *directories: str | os.PathLike | None
) -> tuple[Any, str | None]:
    """``--base-model`` when given, else the first Hub id :func:`hub_id_of` finds in
    ``directories`` (the teacher's first); ``(id, where it came from)``."""
    if given:
        return given, "--base-model"
    for directory in directories:
        if directory:
            found, where = hub_id_of(directory)
            if found:
                return found, f"{Path(directory).name}: {where}"
    return None, None


LICENSE_KEYS = ("license", "license_name", "license_link")
LICENSE_FILE = re.compile(r"^(LICEN[CS]E|NOTICE|USE[_-]POLICY)", re.IGNORECASE)


def license_files(directory: str | os.PathLike) -> list[str]:
    """The license files at the top of ``directory``: ``LICENSE*``, ``NOTICE*``, ``USE_POLICY*``."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        n for n in names if LICENSE_FILE.match(n) and os.path.isfile(os.path.join(directory, n))
    )


def license_of(*directories: str | os.PathLike | None) -> dict[str, Any] | None:
    """The license the first of ``directories`` states: ``license`` (and ``license_name``,
    ``license_link``) of its card's front matter, else ``license`` in its ``config.json``;
    with ``from`` (the directory's name) and ``path``. ``None`` if none states one."""
    for directory in directories:
        if not directory:
            continue
        front = read_front_matter(directory)
        found = {k: front[k] for k in LICENSE_KEYS if front.get(k)}
        if not found.get("license"):
            value = _json_value(Path(directory) / "config.json", "license")
            found = {"license": value} if isinstance(value, str) and value else {}
        if found.get("license"):
            return {**found, "from": Path(directory).name, "path": str(directory)}
    return None


# ----------------------------------------------------------------------- the run
def find_run_config(ckpt_path: str, teacher_path: str) -> str | None:
    """The newest ``config.yaml`` within three levels of the checkpoint's run directory
    whose ``model.teacher_path`` is this run's teacher (``None`` when there is none)."""
    start = Path(ckpt_path).resolve().parent
    roots = [start, start.parent]
    found: list[Path] = []
    for root in roots:
        for depth in ("config.yaml", "*/config.yaml", "*/*/config.yaml", "*/*/*/config.yaml"):
            found += root.glob(depth)
    matching = [p for p in set(found) if _teacher_of(p) == str(teacher_path)]
    return str(max(matching, key=os.path.getmtime)) if matching else None


def _teacher_of(path: Path) -> str | None:
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    return str(model.get("teacher_path")) if isinstance(model, dict) else None


def read_run_config(path: str | None) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict (``{}`` when ``path`` is None or unreadable)."""
    if not path:
        return {}
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def streams_from(ckpt: dict[str, Any], config_path: str | None) -> dict[str, dict[str, Any]]:
    """``{kind: {"urls", "seq_len", "batch_size"}}`` from the checkpoint or the run config."""
    data = ckpt.get("datamodule_hyper_parameters")
    if not data and config_path:
        data = (yaml.safe_load(Path(config_path).read_text()) or {}).get("data")
    streams = {}
    for kind in KINDS:
        value = (data or {}).get(kind)
        if value is not None and not isinstance(value, dict):
            value = {k: getattr(value, k) for k in ("urls", "seq_len", "batch_size")}
        if value:
            streams[kind] = {k: value.get(k) for k in ("urls", "seq_len", "batch_size")}
    return streams


# the library's default optimizer (methods.published_adamw), when the config names none
DEFAULT_OPTIMIZER = {
    "class": "torch.optim.AdamW",
    "args": {"lr": 2e-5, "betas": [0.9, 0.95], "weight_decay": 0.1},
    "default": True,
}
TRAINER_KEYS = (
    "max_steps",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "precision",
)


def _callable_of(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict) and value.get("class_path"):
        return {"class": str(value["class_path"]), "args": dict(value.get("init_args") or {})}
    if isinstance(value, str) and value:
        return {"class": value, "args": {}}
    return None


def optimization_from_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Optimizer, learning-rate schedule and step settings of a run's ``config.yaml``.

    ``{"optimizer": {"class", "args"[, "default"]}, "scheduler": {"class", "args"} | None,
    "trainer": {max_steps, accumulate_grad_batches, gradient_clip_val, ...}}``; ``None``
    when ``config`` is empty (not found).
    """
    if not config:
        return None
    model = config.get("model") or {}
    optimizer = _callable_of(model.get("optimizer")) or _callable_of(config.get("optimizer"))
    scheduler = _callable_of(model.get("lr_scheduler")) or _callable_of(config.get("lr_scheduler"))
    trainer = config.get("trainer") or {}
    return {
        "optimizer": optimizer or copy.deepcopy(DEFAULT_OPTIMIZER),
        "scheduler": scheduler,
        "trainer": {k: trainer.get(k) for k in TRAINER_KEYS if trainer.get(k) is not None},
    }


def optimization_from_trainer(trainer: Any) -> dict[str, Any] | None:
    """The same from a live trainer (no ``config.yaml``): classes and the optimizer's defaults."""
    optimizers = list(getattr(trainer, "optimizers", None) or [])
    if not optimizers:
        return None
    opt = optimizers[0]
    keys = ("lr", "betas", "eps", "weight_decay", "momentum")
    args = {k: _plain(opt.defaults[k]) for k in keys if k in getattr(opt, "defaults", {})}
    configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
    scheduler = None
    if configs:
        kind = type(configs[0].scheduler)
        scheduler = {"class": f"{kind.__module__}.{kind.__qualname__}", "args": {}}
    settings = {k: getattr(trainer, k, None) for k in TRAINER_KEYS}
    return {
        "optimizer": {"class": f"{type(opt).__module__}.{type(opt).__qualname__}", "args": args},
        "scheduler": scheduler,
        "trainer": {k: _plain(v) for k, v in settings.items() if v is not None},
    }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, int | float | str | bool | list) else str(value)


def _val_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    metrics = {}
    for key, value in row.items():
        if str(key).startswith("val/") and value not in (None, ""):
            try:
                metrics[str(key)] = float(value)
            except (TypeError, ValueError):
                continue
    return metrics


def validation_from_csv(path: str | os.PathLike, steps: int | None) -> dict[str, Any] | None:
    """The last validation a CSVLogger's ``metrics.csv`` holds for the first ``steps``
    optimizer steps: ``{"metrics": {"val/...": value}, "step": optimizer steps, "from"}``.

    Lightning logs a validation run inside training at step ``global_step - 1`` (before the
    step counter moves on), so the row at logged step ``s`` scored the weights after ``s + 1``
    optimizer steps; rows logged at ``steps`` or later scored later weights and are skipped.
    """
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return None
    last = None
    for row in rows:
        metrics = _val_metrics(row)
        try:
            logged = int(float(row.get("step") or ""))
        except ValueError:
            continue
        if metrics and (steps is None or logged < steps):
            last = {"metrics": metrics, "step": logged + 1, "from": str(path)}
    return last


def validation_from_checkpoint(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The score a ``ModelCheckpoint`` monitoring a ``val/`` metric saved with the checkpoint."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if not str(key).startswith("ModelCheckpoint") or not isinstance(state, dict):
            continue
        monitor, score = state.get("monitor"), state.get("current_score")
        if isinstance(monitor, str) and monitor.startswith("val/") and score is not None:
            return {
                "metrics": {monitor: float(score)},
                "step": ckpt.get("global_step"),
                "from": "the checkpoint (ModelCheckpoint's monitored score)",
            }
    return None


def validation_from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``val/`` entries of a live trainer's ``callback_metrics`` (the last validation)."""
    values = _val_metrics({k: _plain(v) for k, v in metrics.items()})
    return {"metrics": values, "step": None, "from": "the trainer"} if values else None


def read_index(urls: str | Sequence[str] | None) -> dict[str, Any] | None:
    """``index.json`` beside local shards (``longred prepare`` writes it), if readable."""
    first = urls if isinstance(urls, str) else (list(urls or []) or [""])[0]
    folder = first if os.path.isdir(first) else os.path.dirname(first)
    path = os.path.join(folder, "index.json")
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def tokens_trained(
    streams: dict[str, dict[str, Any]], schedule: Sequence[str], micro_steps: int, world: int
) -> dict[str, int] | None:
    """Tokens per stream over the first ``micro_steps`` of the schedule, all ranks."""
    if not schedule or any(k not in streams for k in set(schedule)):
        return None
    period, rest = divmod(int(micro_steps), len(schedule))
    counts = {
        k: period * list(schedule).count(k) + list(schedule[:rest]).count(k) for k in set(schedule)
    }
    tokens = {
        k: n * int(streams[k]["batch_size"]) * int(streams[k]["seq_len"]) * int(world)
        for k, n in counts.items()
    }
    return {**{k: tokens[k] for k in KINDS if k in tokens}, "total": sum(tokens.values())}


def card_facts(module: Any, run: dict[str, Any]) -> dict[str, Any]:
    """Everything the card says, from a configured ``LongReDModule`` and the run's record.

    ``run``: ``steps``, ``micro_steps``, ``world_size``, ``schedule``, ``streams``
    (:func:`streams_from`), ``streams_from`` (where they were read), ``checkpoint``,
    ``root`` (the run's directory: paths inside it are shown relative to it),
    ``optimization`` (:func:`optimization_from_config`), ``validation``
    (:func:`validation_from_csv`), ``config`` (the run config's path), ``seen`` (the
    module's record of the batches it trained on, ``batches.BatchContract.record``: with a
    user's DataLoader the data section and the tokens come from it).
    """
    hp = dict(module.hparams)
    teacher, student = module.teacher_config, module.student_config
    method = hp.get("method", "longred")
    seen = run.get("seen") or {}
    user_data = bool(seen) and not seen.get("library", True)
    streams = {} if user_data else run.get("streams") or {}
    data = {k: {**v, "index": read_index(v.get("urls"))} for k, v in streams.items()}
    tokens = tokens_trained(
        streams,
        run.get("schedule") or [],
        run.get("micro_steps") or 0,
        run.get("world_size") or 1,
    )
    micro_steps, world = run.get("micro_steps"), run.get("world_size")
    if user_data or (tokens is None and seen.get("streams")):
        from longred_pl.batches import tokens_of  # as the module counted them while training

        tokens = tokens_of(seen) if seen.get("streams") else None
    if user_data:
        per_rank = (seen.get("streams") or {}).values()
        micro_steps = micro_steps or sum(int(s["micro_batches"]) for s in per_rank)
        world = world or seen.get("world_size")
    return {
        "teacher_path": str(hp["teacher_path"]),
        "n_layers": int(teacher.num_hidden_layers),
        "teacher": {"window": int(teacher.max_position_embeddings), "rope": rope_of(teacher)},
        "student": {"window": int(student.max_position_embeddings), "rope": rope_of(student)},
        "rope_method": hp.get("rope_method"),
        "rope_kwargs": hp.get("rope_kwargs") or {},
        "method": method,
        "short_weight": hp.get("short_weight") if method == "longred" else None,
        "s2l_weight": hp.get("s2l_weight") if method == "longred" else None,
        "distill_layers": list(module.distill_layers) if method == "longred" else None,
        "s2l_positions": hp.get("s2l_positions") if method == "longred" else None,
        "position_kwargs": hp.get("position_kwargs") or {},
        "data": data,
        "streams_from": run.get("streams_from"),
        "user_data": seen if user_data else None,
        "steps": run.get("steps"),
        "micro_steps": micro_steps,
        "world_size": world,
        "tokens": tokens,
        "checkpoint": run.get("checkpoint"),
        "root": run.get("root"),
        "config": run.get("config"),
        "optimization": run.get("optimization"),
        "validation": run.get("validation"),
    }


def rope_of(config: Any) -> dict[str, Any]:
    """A config's ``rope_parameters`` (with ``rope_theta`` from the config when not there)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


# ------------------------------------------------------------------- evaluation
def find_eval_results(out_dir: str) -> list[str]:
    """Evaluation files beside the export that scored this directory (``out_dir``).

    Looks in ``out_dir``, ``out_dir/eval`` and ``out_dir/../eval`` for ``results.json``
    (``longred eval``), ``lm_eval.json`` and ``ruler.json`` (``longred lm-eval``).
    """
    target = Path(out_dir).resolve()
    places = [target, target / "eval", target.parent / "eval"]
    found = []
    for place in places:
        for name in ("results.json", "lm_eval.json", "ruler.json"):
            path = place / name
            if path.is_file() and target in _models_of(path):
                found.append(str(path))
    return found


def _models_of(path: Path) -> set[Path]:
    try:
        rows = json.loads(path.read_text()).get("models", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {Path(r["model"]).resolve() for r in rows if "model" in r} | {
        Path(r["ruler"]["model"]).resolve() for r in rows if isinstance(r.get("ruler"), dict)
    }


def _renamed(rows: list[dict[str, Any]], names: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows named by model: ``names`` maps a resolved model directory to its card name
    (this model, the base model); other full-path names are shortened to the last part."""
    out = []
    for row in copy.deepcopy(rows):
        paths = [row.get("model"), (row.get("ruler") or {}).get("model")]
        name = next(
            (names[str(Path(p).resolve())] for p in paths if p and str(Path(p).resolve()) in names),
            None,
        )
        if name is not None:
            row["name"], row["is_teacher"] = name, False  # the name says which it is
        elif os.path.isabs(str(row.get("name", ""))):
            row["name"] = shown(row["name"])
        out.append(row)
    return out


def eval_markdown(path: str, names: Mapping[str, str] | None = None) -> str:
    """The tables of one evaluation file, as the command that wrote it prints them.

    ``names`` (``{resolved model directory: name}``) renames the rows of those models (e.g.
    ``this model``, the base model's id) instead of their directory names.
    """
    from longred_pl.errors import UserError
    from longred_pl.eval.lm_eval_bridge import lm_eval_markdown
    from longred_pl.eval.report import results_markdown, ruler_markdown

    try:
        results = json.loads(Path(path).read_text())
        rows = _renamed(results["models"], names or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"--eval-results: {path!r} is not a results.json, lm_eval.json or ruler.json "
            "(written by `longred eval` / `longred lm-eval`); pass one of those"
        ) from err
    if rows and "short" in rows[0]:
        return results_markdown(rows)
    parts = [lm_eval_markdown(rows)] if rows and "tasks" in rows[0] else []
    ruler = results.get("ruler")
    ruler = _renamed(ruler, names or {}) if ruler else [r for r in rows if r.get("ruler")]
    if ruler:
        parts.append(ruler_markdown(ruler))
    return "\n".join(parts)


# ------------------------------------------------------------------------ render
def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if value else "-"


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        if len(value) > 4:
            return f"{len(value)} values"
        return "(" + ", ".join(_value(v) for v in value) + ")"
    return str(value)


ROPE_TYPES = {
    "default": "none",
    "linear": "linear position interpolation",
    "dynamic": "dynamic NTK",
    "yarn": "YaRN",
    "llama3": "Llama 3 frequency bands",
    "longrope": "LongRoPE",
}
ROPE_KEYS = {
    "rope_theta": "base frequency",
    "factor": "scaling factor",
    "original_max_position_embeddings": "original window",
    "low_freq_factor": "low-frequency factor",
    "high_freq_factor": "high-frequency factor",
    "attention_factor": "attention scale",
    "beta_fast": "YaRN beta_fast",
    "beta_slow": "YaRN beta_slow",
    "short_factor": "short-range factors",
    "long_factor": "long-range factors",
    "partial_rotary_factor": "rotated share of each head",
}


def _rope_type(rope: Mapping[str, Any]) -> str:
    kind = str(rope.get("rope_type", "default"))
    return f"{ROPE_TYPES.get(kind, kind)} ({kind})"


def _rope_summary(rope: Mapping[str, Any]) -> str:
    params = [f"{_rope_key(k)} {_value(v)}" for k, v in sorted(rope.items()) if k != "rope_type"]
    return "; ".join([f"scaling {_rope_type(rope)}", *params])


def _rope_key(key: str) -> str:
    return f"{ROPE_KEYS[key]} ({key})" if key in ROPE_KEYS else key


def rope_rows(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(what, base model, this model)`` for the RoPE scaling and each RoPE parameter."""
    rows = [("RoPE scaling", _rope_type(old), _rope_type(new))]
    for key in sorted((set(old) | set(new)) - {"rope_type"}, key=lambda k: (k != "rope_theta", k)):
        rows.append(
            (f"RoPE {_rope_key(key)}", _value(old.get(key, "-")), _value(new.get(key, "-")))
        )
    return rows


def rope_change(old: Mapping[str, Any], new: Mapping[str, Any], method: str | None = None) -> str:
    """The RoPE change in words: ``base frequency (rope_theta) 10000 -> 80000 (abf)``."""
    parts = []
    if old.get("rope_type", "default") != new.get("rope_type", "default"):
        parts.append(f"scaling {_rope_type(old)} -> {_rope_type(new)}")
    for key in sorted((set(old) | set(new)) - {"rope_type"}, key=lambda k: (k != "rope_theta", k)):
        if key not in new:
            parts.append(f"{_rope_key(key)} {_value(old[key])} dropped")
        elif key not in old:
            parts.append(f"{_rope_key(key)} {_value(new[key])}")
        elif old[key] != new[key]:
            parts.append(f"{_rope_key(key)} {_value(old[key])} -> {_value(new[key])}")
    text = "; ".join(parts) or "unchanged"
    return f"{text} ({method})" if method else text


def _front_matter(meta_in: Mapping[str, Any], tags: Sequence[str]) -> str:
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if meta_in.get("base_model"):
        meta["base_model"] = meta_in["base_model"]
    for key in LICENSE_KEYS:
        if (meta_in.get("license") or {}).get(key):
            meta[key] = meta_in["license"][key]
    meta["tags"] = list(dict.fromkeys(tags))
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def base_name(f: Mapping[str, Any]) -> str:
    """The base model as the card names it: its Hub id, else its directory's name."""
    base = f.get("base_model")
    if isinstance(base, str) and base:
        return base
    if isinstance(base, list) and base:
        return ", ".join(map(str, base))
    return Path(f["teacher_path"]).name or str(f["teacher_path"])


def _base_link(f: Mapping[str, Any]) -> str:
    """The base model's Hub link, else its directory name (``base_model`` unknown)."""
    base = f.get("base_model")
    if isinstance(base, str) and base:
        return f"[{base}](https://huggingface.co/{base})"
    return f"`{base_name(f)}`"


def _unknown_id(f: Mapping[str, Any]) -> str:
    return "" if f.get("base_model") else "; a local directory, its Hub id not known"


def _recipe(f: dict[str, Any]) -> list[str]:
    t, s = f["teacher"], f["student"]
    lines = [
        "## How it was made",
        "",
        "| | base model | this model |",
        "|---|---:|---:|",
        f"| context window (tokens) | {t['window']} | {s['window']} |",
    ]
    lines += [f"| {what} | {old} | {new} |" for what, old, new in rope_rows(t["rope"], s["rope"])]
    lines += [
        "",
        f"- RoPE: {rope_change(t['rope'], s['rope'], f['rope_method'])}; context window "
        f"{t['window']} -> {s['window']} tokens (x{s['window'] / t['window']:g}). Settings: "
        f"`rope_method: {f['rope_method']}`, `rope_kwargs: {_json(f['rope_kwargs'])}`.",
    ]
    if f["method"] == "longred":
        lines += [
            f"- Method: `longred` (restoration distillation, {PAPER}): `L = L_long + "
            f"{f['short_weight']:g} * L_short + {f['s2l_weight']:g} * L_s2l`.",
            f"- Distilled hidden states (`L_short`): {f['distill_layers']} (0 = embeddings, "
            f"{f['n_layers']} = final normed output); `L_s2l` distils the final state.",
            f"- Skipped positions of the s2l stream: `{f['s2l_positions']}` ("
            + (
                f"options {_json(f['position_kwargs'])})." if f["position_kwargs"] else "defaults)."
            ),
        ]
    else:
        what = {
            "long_cpt": "next-token loss on the long stream only",
            "mix_cpt": "next-token loss on every stream, contiguous positions",
        }
        lines.append(f"- Method: `{f['method']}` (baseline of {PAPER}: {what[f['method']]}).")
    return lines


def _source_text(source: Any) -> str:
    """An ``index.json`` source in a few words, local paths by their last component."""
    if isinstance(source, dict) and isinstance(source.get("inputs"), list):
        parts = []
        for entry in source["inputs"]:
            if not isinstance(entry, dict):
                continue
            label = shown(entry.get("input", "?"))
            if entry.get("kind") == "corpus":
                label = f"corpus {label}" + (f" ({entry['split']})" if entry.get("split") else "")
            elif entry.get("num_files"):
                label += f" ({entry['num_files']} file(s))"
            if entry.get("weight", 1.0) != 1.0:
                label += f", weight {entry['weight']:g}"
            parts.append(label)
        return "; ".join(parts) or "-"
    if isinstance(source, dict | list):
        return json.dumps(_strip_paths(source), sort_keys=True)
    return shown(source) if source else ""


def _strip_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_paths(v) for v in value]
    return shown(value) if isinstance(value, str) else value


def _user_data(seen: Mapping[str, Any]) -> list[str]:
    """The data section of a run fed by the user's own DataLoader (no stream settings)."""
    streams = seen.get("streams") or {}
    dp = int(seen.get("data_parallel") or 1)
    lines = [
        f"From {seen.get('source') or 'a user DataLoader'} (not `MixedLengthDataModule`): no "
        "shards or sources were recorded; the streams below are what the training module read"
        + (f" (counts of one rank x {dp} data-parallel ranks)." if dp > 1 else ".")
    ]
    if not streams:
        return lines + ["", "No training batch was read."]
    lines += [
        "",
        "| stream | micro-batches | samples | seq_len | tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, s in streams.items():
        low, high = s.get("min_len"), s.get("max_len")
        length = f"{low}" if low == high else f"{low}-{high}"
        lines.append(
            f"| {kind} | {int(s['micro_batches']) * dp:,} | {int(s['samples']) * dp:,} | "
            f"{length} | {int(s['tokens']) * dp:,} |"
        )
    return lines


def _data(f: dict[str, Any]) -> list[str]:
    lines = ["", "## Training data", ""]
    if f.get("user_data"):
        return lines + _user_data(f["user_data"])
    if not f["data"]:
        return lines + [
            "Unknown: the checkpoint holds no stream settings and no run `config.yaml` was "
            "found near it (`longred export ... --run-config CONFIG.yaml` adds them)."
        ]
    root = f.get("root")
    lines += [
        f"Stream settings from `{shown(f['streams_from'], root)}`; sources from each `index.json`.",
        "",
        "| stream | shards | seq_len | batch/rank | samples | tokenizer | source |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for kind, s in f["data"].items():
        index = s["index"] or {}
        source = _source_text(index.get("source"))
        lines.append(
            f"| {kind} | `{shown(s['urls'], root)}` | {s['seq_len']} | {s['batch_size']} | "
            f"{index.get('num_samples', '-')} | {shown(index.get('tokenizer', '-'))} | "
            f"{source or '- (no index.json)'} |"
        )
    return lines


def _call_text(call: Mapping[str, Any]) -> str:
    """``AdamW`` (lr 0.001, ...): arguments set to None or False (switches left off) omitted."""
    name = str(call["class"]).rsplit(".", 1)[-1]
    given = {k: v for k, v in call.get("args", {}).items() if v is not None and v is not False}
    args = ", ".join(f"{k} {_value(v)}" for k, v in given.items())
    return f"`{name}`" + (f" ({args})" if args else "")


def _optimization(f: Mapping[str, Any]) -> list[str]:
    o = f.get("optimization")
    if not o:
        return ["- Optimizer and schedule: unknown (the run's `config.yaml` was not found)."]
    where = f" (from `{shown(f['config'], f.get('root'))}`)" if f.get("config") else ""
    default = " (the library's default, the published one)" if o["optimizer"].get("default") else ""
    lines = [f"- Optimizer: {_call_text(o['optimizer'])}{default}{where}."]
    sched = o.get("scheduler")
    lines.append(
        f"- Learning-rate schedule: {_call_text(sched)}, stepped every optimizer step."
        if sched
        else "- Learning-rate schedule: constant (no `lr_scheduler`)."
    )
    t = o.get("trainer") or {}
    settings = [f"{k} {_value(v)}" for k, v in t.items()]
    if settings:
        lines.append("- Trainer: " + ", ".join(settings) + ".")
    return lines


def _training(f: dict[str, Any]) -> list[str]:
    ckpt = f.get("checkpoint")
    lines = [
        "",
        "## Training",
        "",
        f"- {f['steps']} optimizer steps, {f['micro_steps']} micro-steps, "
        f"{f['world_size']} rank(s)"
        + (f"; checkpoint `{shown(ckpt, f.get('root'))}`." if ckpt else "."),
    ]
    tokens = f.get("tokens")
    if tokens:
        per = ", ".join(f"{k} {v:,}" for k, v in tokens.items() if k != "total")
        lines.append(f"- Tokens trained: {tokens['total']:,} ({per}).")
    elif f.get("user_data"):
        lines.append("- Tokens trained: 0 (no training batch was read).")
    else:
        lines.append("- Tokens trained: unknown (stream settings not found).")
    return lines + _optimization(f)


VALIDATION_LABELS = {
    "val/ppl_short": "short-text perplexity, this model",
    "val/ppl_short_teacher": "short-text perplexity, base model",
    "val/ppl_retention": "short-text retention (base ppl / this ppl; 1 = no loss)",
    "val/ppl_long": "long-text perplexity, this model",
}


def _validation(f: Mapping[str, Any]) -> list[str]:
    lines = ["", "## Validation during training", ""]
    v = f.get("validation")
    if not v:
        return lines + [
            "Not logged (no validation stream, or no `metrics.csv` / monitored checkpoint "
            "score was found)."
        ]
    metrics = {k: x for k, x in v["metrics"].items() if not k.startswith("val/loss_")}
    metrics = metrics or v["metrics"]
    when = f"after optimizer step {v['step']}" if v.get("step") else "at the last validation"
    lines += [
        f"Held-out validation {when} (from `{shown(v['from'], f.get('root'))}`):",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    order = [k for k in VALIDATION_LABELS if k in metrics]
    for key in order + sorted(k for k in metrics if k not in VALIDATION_LABELS):
        label = VALIDATION_LABELS.get(key)
        value = metrics[key]
        text = f"{value:.4f}" if key.endswith("retention") else f"{value:.2f}"
        lines.append(f"| {label} (`{key}`) | {text} |" if label else f"| `{key}` | {text} |")
    return lines


def _license(f: Mapping[str, Any]) -> list[str]:
    lic, files = f.get("license"), f.get("license_files") or []
    if lic:
        name = lic.get("license_name") or lic["license"]
        text = f"`{name}`, the base model's (stated by the card or config of `{lic['from']}`)."
    else:
        text = (
            "The base model's license applies; its card and config state none: add `license:` "
            "to this card's front matter before publishing."
        )
    if files:
        text += f" Its license files are copied here: {', '.join(files)}."
    return ["", "## License", "", text]


def _use(f: Mapping[str, Any]) -> list[str]:
    gen = f.get("generation")
    lines = [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        "```",
    ]
    if gen:
        lines += [
            "",
            f"Inference defaults: `use_cache: true` in `config.json`; `generation_config.json` "
            f"{gen}.",
        ]
    return lines + [""]


def render_card(f: dict[str, Any]) -> str:
    """The card's text from :func:`card_facts` plus ``name``, ``base_model``, ``license``
    (:func:`license_of`), ``license_files`` (copied), ``tokenizer`` (``{"source", "files",
    "max_length"}`` or ``None``), ``generation`` (where ``generation_config.json`` came
    from), ``evaluation`` (``[(path, markdown)]``) and ``out`` (the directory, to show
    evaluation paths)."""
    tags = ["longred", "long-context", f"rope-{f['rope_method']}", f["method"].replace("_", "-")]
    lines = [
        _front_matter(f, tags),
        f"# {f['name']}",
        "",
        f"A {f['student']['window']}-token context version of the base model {_base_link(f)} "
        f"({f['teacher']['window']} tokens{_unknown_id(f)}), trained by `longred_pl` (method "
        f"`{f['method']}`; LongReD: [arXiv 2502.07365](https://arxiv.org/abs/2502.07365)).",
        "",
    ]
    lines += _recipe(f) + _data(f) + _training(f) + _validation(f) + ["", "## Evaluation", ""]
    if f.get("evaluation"):
        for path, markdown in f["evaluation"]:
            lines += [f"From `{_eval_path(path, f.get('out'))}`:", "", markdown.rstrip("\n"), ""]
    else:
        lines.append(
            "Not evaluated yet: `longred eval` / `longred lm-eval` on this directory, "
            "then `longred export ... --eval-results results.json`."
        )
    lines += ["", "## Tokenizer", "", _tokenizer_text(f.get("tokenizer"))]
    return "\n".join(lines + _license(f) + _use(f))


def _eval_path(path: str, out: str | None) -> str:
    if out is not None:
        for base, prefix in ((Path(out), ""), (Path(out).parent, "../")):
            try:
                return prefix + Path(path).resolve().relative_to(base.resolve()).as_posix()
            except ValueError:
                continue
    return shown(path)


def _tokenizer_text(tok: Mapping[str, Any] | None) -> str:
    if not tok:
        return (
            "**None in this directory**: the run's teacher had no tokenizer files. Copy the "
            "base model's tokenizer here (or export again with `--tokenizer DIR`)."
        )
    text = f"Copied from `{shown(tok['source'])}`: {', '.join(tok['files'])}."
    if tok.get("max_length"):
        text += f" `model_max_length` = {tok['max_length']} (this model's context window)."
    return text


# ------------------------------------------------------------------------ merge
def render_merge_card(f: Mapping[str, Any]) -> str:
    """The card of ``longred merge``: ``name``, ``student`` / ``teacher`` (``{"path",
    "window", "rope"}``; the student's ``card``: it has a README.md), ``alpha``, ``dtype``,
    ``base_model``, ``license``, ``license_files``, ``tokenizer``, ``generation``."""
    s, t = f["student"], f["teacher"]
    student, teacher = shown(s["path"]), shown(t["path"])
    base = f.get("base_model")
    teacher_text = f"`{teacher}`" + (f" ({base})" if isinstance(base, str) and base else "")
    lines = [
        _front_matter(f, ["longred", "long-context", "merge"]),
        f"# {f['name']}",
        "",
        f"A weight interpolation of a long-context student and the model it was trained from: "
        f"every weight is `alpha * student + (1 - alpha) * base` with **alpha = {f['alpha']:g}** "
        f"(1 = the student, 0 = the base model's weights), computed in float32 and saved in "
        f"{f['dtype']}, by `longred merge` of `longred_pl`.",
        "",
        "## Parents",
        "",
        "| | directory | context window | RoPE |",
        "|---|---|---:|---|",
        f"| student (share alpha = {f['alpha']:g}) | `{student}` | {s['window']} | "
        f"{_rope_summary(s['rope'])} |",
        f"| base model (share 1 - alpha = {1 - f['alpha']:g}) | {teacher_text} | {t['window']} | "
        f"{_rope_summary(t['rope'])} |",
        "",
        f"- Config, RoPE and window are the student's: RoPE {rope_change(t['rope'], s['rope'])}; "
        f"context window {t['window']} -> {s['window']} tokens.",
        f"- Base model: {_base_link({'base_model': base, 'teacher_path': t['path']})}"
        + ("." if base else " (a local directory, its Hub id not known)."),
    ]
    if s.get("card"):
        lines.append(f"- The student's own card (`{student}/README.md`) says how it was trained.")
    lines += [
        "",
        "## Tokenizer",
        "",
        _tokenizer_text(f.get("tokenizer"))
        if f.get("tokenizer")
        else "**None in this directory**: neither parent had tokenizer files. Copy the base "
        "model's tokenizer here.",
    ]
    return "\n".join(lines + _license(f) + _use(f))
