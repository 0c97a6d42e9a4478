"""The model card (``README.md``) of an exported student: how it was made and how it scores.

The Hugging Face Hub reads a model directory's ``README.md`` as its card: YAML front matter
(``library_name``, ``pipeline_tag``, ``base_model``, ``tags``) and markdown. The card written
by ``longred export`` (and by ``ExportStudent`` at the end of ``fit``) says

* the base model and the RoPE change (method, parameters, old and new window);
* the recipe: ``longred`` / ``long_cpt`` / ``mix_cpt``, the loss weights, the distilled
  hidden states, the s2l position scheme (docs/method.md, "The recipe");
* the data: each stream's shards, length and batch, with the ``index.json`` that
  ``longred prepare`` wrote beside them (source, tokenizer, sample count);
* optimizer steps, micro-steps and tokens trained per stream;
* the evaluation tables when an evaluation was run (``longred eval``'s ``results.json``,
  ``longred lm-eval``'s ``lm_eval.json`` / ``ruler.json``);
* the tokenizer's origin, or that there is none.

A checkpoint holds the model's settings and the data cursor but not the stream settings
(the data module saves no hyperparameters), so for ``longred export`` they come from the
run's ``config.yaml`` (LightningCLI writes it into the log directory), found near the
checkpoint or given with ``--run-config``; the card says where they came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["card_facts", "eval_markdown", "find_eval_results", "find_run_config", "render_card"]

PAPER = "Dong et al. 2025, LongReD (arXiv 2502.07365)"
KINDS = ("long", "short", "s2l")


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
    (:func:`streams_from`), ``streams_from`` (where they were read), ``checkpoint``.
    """
    hp = dict(module.hparams)
    teacher, student = module.teacher_config, module.student_config
    method = hp.get("method", "longred")
    streams = run.get("streams") or {}
    data = {k: {**v, "index": read_index(v.get("urls"))} for k, v in streams.items()}
    return {
        "teacher_path": str(hp["teacher_path"]),
        "n_layers": int(teacher.num_hidden_layers),
        "teacher": {"window": int(teacher.max_position_embeddings), "rope": _rope(teacher)},
        "student": {"window": int(student.max_position_embeddings), "rope": _rope(student)},
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
        "steps": run.get("steps"),
        "micro_steps": run.get("micro_steps"),
        "world_size": run.get("world_size"),
        "tokens": tokens_trained(
            streams,
            run.get("schedule") or [],
            run.get("micro_steps") or 0,
            run.get("world_size") or 1,
        ),
        "checkpoint": run.get("checkpoint"),
    }


def _rope(config: Any) -> dict[str, Any]:
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


def eval_markdown(path: str) -> str:
    """The tables of one evaluation file, as the command that wrote it prints them."""
    from longred_pl.errors import UserError
    from longred_pl.eval.lm_eval_bridge import lm_eval_markdown
    from longred_pl.eval.report import results_markdown, ruler_markdown

    try:
        results = json.loads(Path(path).read_text())
        rows = results["models"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"--eval-results: {path!r} is not a results.json, lm_eval.json or ruler.json "
            "(written by `longred eval` / `longred lm-eval`); pass one of those"
        ) from err
    if rows and "short" in rows[0]:
        return results_markdown(rows)
    parts = [lm_eval_markdown(rows)] if rows and "tasks" in rows[0] else []
    ruler = results.get("ruler") or ([r for r in rows if r.get("ruler")] if rows else [])
    if ruler:
        parts.append(ruler_markdown(ruler))
    return "\n".join(parts)


# ------------------------------------------------------------------------ render
def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if value else "-"


def _rope_text(rope: dict[str, Any]) -> str:
    parts = [str(rope.get("rope_type", "default"))]
    parts += [
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(rope.items())
        if k != "rope_type"
    ]
    return " ".join(parts)


def _front_matter(f: dict[str, Any]) -> str:
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if f.get("base_model"):
        meta["base_model"] = f["base_model"]
    tags = ["longred", "long-context", f"rope-{f['rope_method']}", f["method"].replace("_", "-")]
    meta["tags"] = list(dict.fromkeys(tags))
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _recipe(f: dict[str, Any]) -> list[str]:
    t, s = f["teacher"], f["student"]
    lines = [
        "## How it was made",
        "",
        "| | base model | this model |",
        "|---|---:|---:|",
        f"| context window (tokens) | {t['window']} | {s['window']} |",
        f"| RoPE | {_rope_text(t['rope'])} | {_rope_text(s['rope'])} |",
        "",
        f"- RoPE change: `{f['rope_method']}` with `rope_kwargs` {_json(f['rope_kwargs'])} "
        f"(window x{s['window'] / t['window']:g}).",
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


def _data(f: dict[str, Any]) -> list[str]:
    lines = ["", "## Training data", ""]
    if not f["data"]:
        return lines + [
            "Unknown: the checkpoint holds no stream settings and no run `config.yaml` was "
            "found near it (`longred export ... --run-config CONFIG.yaml` adds them)."
        ]
    lines += [
        f"Stream settings from `{f['streams_from']}`; sources from each `index.json`.",
        "",
        "| stream | shards | seq_len | batch/rank | samples | tokenizer | source |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for kind, s in f["data"].items():
        index = s["index"] or {}
        source = index.get("source")
        source = json.dumps(source, sort_keys=True) if isinstance(source, dict | list) else source
        lines.append(
            f"| {kind} | `{s['urls']}` | {s['seq_len']} | {s['batch_size']} | "
            f"{index.get('num_samples', '-')} | {index.get('tokenizer', '-')} | "
            f"{source or '- (no index.json)'} |"
        )
    return lines


def _training(f: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Training",
        "",
        f"- {f['steps']} optimizer steps, {f['micro_steps']} micro-steps, "
        f"{f['world_size']} rank(s)"
        + (f"; checkpoint `{f['checkpoint']}`." if f.get("checkpoint") else "."),
    ]
    tokens = f.get("tokens")
    if tokens:
        per = ", ".join(f"{k} {v:,}" for k, v in tokens.items() if k != "total")
        lines.append(f"- Tokens trained: {tokens['total']:,} ({per}).")
    else:
        lines.append("- Tokens trained: unknown (stream settings not found).")
    return lines


def render_card(f: dict[str, Any]) -> str:
    """The card's text from :func:`card_facts` plus ``name``, ``base_model``, ``tokenizer``
    (``{"source", "files"}`` or ``None``) and ``evaluation`` (``[(path, markdown)]``)."""
    base = f.get("base_model") or f"`{f['teacher_path']}`"
    lines = [
        _front_matter(f),
        f"# {f['name']}",
        "",
        f"A {f['student']['window']}-token context version of the base model {base} "
        f"({f['teacher']['window']} tokens), trained by `longred_pl` (method `{f['method']}`; "
        "LongReD: [arXiv 2502.07365](https://arxiv.org/abs/2502.07365)).",
        "",
    ]
    lines += _recipe(f) + _data(f) + _training(f) + ["", "## Evaluation", ""]
    if f.get("evaluation"):
        for path, markdown in f["evaluation"]:
            lines += [f"From `{path}`:", "", markdown.rstrip("\n"), ""]
    else:
        lines.append(
            "Not evaluated yet: `longred eval` / `longred lm-eval` on this directory, "
            "then `longred export ... --eval-results results.json`."
        )
    tok = f.get("tokenizer")
    lines += [
        "",
        "## Tokenizer",
        "",
        f"Copied from `{tok['source']}`: {', '.join(tok['files'])}."
        if tok
        else "**None in this directory**: the run's teacher had no tokenizer files. Copy the "
        "base model's tokenizer here (or export again with `--tokenizer DIR`).",
    ]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        "```",
        "",
    ]
    return "\n".join(lines)
