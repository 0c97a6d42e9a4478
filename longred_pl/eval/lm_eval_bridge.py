"""Score local models with EleutherAI's lm-evaluation-harness (``lm-eval`` 0.4.x).

LongReD's claim (docs/method.md; Dong et al. 2025, Sec. 4) is that the extended model keeps
the original's short-text skills, which the paper measures on standard short benchmarks
(MMLU, HellaSwag, ...), while matching the long baselines on RULER. :func:`score_with_lm_eval`
runs short tasks on a local Hugging Face directory (teacher or exported student) through
lm-eval's Python API (``lm_eval.simple_evaluate`` with the ``hf`` model); RULER tasks go
through :mod:`longred_pl.eval.ruler` (one run per prompt length). ``longred lm-eval``
(:func:`lm_eval_models`) does both for
several models side by side and writes ``lm_eval.json``/``lm_eval.md`` and
``ruler.json``/``ruler.md``/``ruler.png``.

Offline: the model is read from its directory (an absolute path, so lm-eval's model-info
lookup never mistakes it for a Hub repository), ``trust_remote_code`` stays off unless
asked, and ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` default to ``1`` for the task data,
so built-in tasks read the local ``datasets`` cache and local tasks
(``--include-path DIR``, e.g. ``tests/data/lm_eval_tasks``) read their own files.
lm-eval is an optional extra: ``pip install 'longred_pl[eval]'``.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from longred_pl.arguments import ModelLoading, Output
from longred_pl.errors import UserError
from longred_pl.eval.harness import _import_lm_eval, _keep_global_rng, check_model_dir
from longred_pl.models import load_config

__all__ = [
    "check_model_dir",
    "lm_eval_markdown",
    "lm_eval_models",
    "score_with_lm_eval",
    "task_manager",
]


def task_manager(tasks: Sequence[str], include_path: str | None = None) -> Any:
    """A TaskManager that knows every name in ``tasks``, or a UserError naming the unknown.

    Indexing lm-eval's ~15k built-in task files takes seconds, so tasks that all live in
    ``include_path`` are loaded from there alone.
    """
    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not os.path.isdir(include_path):
            raise UserError(f"--include-path: {include_path!r} is not a directory")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hints = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        raise UserError(
            f"--tasks: unknown lm-eval task(s) {unknown} (close matches: {hints}); local task "
            "YAMLs need --include-path DIR"
        )
    return manager


def _metrics(task_results: dict[str, Any]) -> dict[str, float | None]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A"}`` -> ``{"acc": 0.5, "acc_stderr": None}``."""
    out: dict[str, float | None] = {}
    for key, value in task_results.items():
        if "," not in key:  # name, alias, sample_len
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric}[{filt}]"
        out[name] = float(value) if isinstance(value, int | float) else None
    return out


def score_with_lm_eval(
    model_dir: str,
    tasks: Sequence[str],
    include_path: str | None = None,
    limit: int | float | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    *,
    num_fewshot: int | None = None,
    dtype: str = "float32",
    bootstrap_iters: int = 100_000,
    trust_remote_code: bool = False,
    seed: int = 0,
    manager: Any = None,
) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on the local Hugging Face model in ``model_dir``.

    Args:
        model_dir: local causal-LM directory with a tokenizer (e.g. ``longred export``'s).
        tasks: lm-eval task, group or tag names.
        include_path: directory of extra task YAMLs (local datasets).
        limit: examples per task (an int), or a fraction of each task when < 1.
        batch_size: requests per forward.
        device: ``cpu``, ``cuda``, ``cuda:0``...
        num_fewshot: few-shot examples (default: each task's own).
        dtype: weights' dtype at load.
        bootstrap_iters: bootstrap resamples for the stderr of non-mean metrics
            (lm-eval's default; 0 skips them, and every stderr is then ``None``).
        trust_remote_code: allow custom modelling code in ``model_dir``.
        seed: lm-eval's Python/NumPy/torch/few-shot seeds (the caller's generators are
            restored afterwards).
        manager: a :func:`task_manager` for ``tasks`` to reuse across models (built here
            when ``None``).

    Returns:
        ``{"model", "tasks": {task: {metric: value}}, "n_samples": {task: {"original",
        "effective"}}, "higher_is_better", "versions", "lm_eval_version", "settings"}``;
        metrics use lm-eval's names (``acc``, ``acc_norm``, ``word_perplexity``...), with
        ``<metric>_stderr`` beside each (``None`` when not computed).
    """
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise UserError(f"--tasks: give at least one lm-eval task name, got {tasks!r}")
    if batch_size < 1 or (limit is not None and limit <= 0) or bootstrap_iters < 0:
        raise UserError("--batch-size must be >= 1, --limit > 0, --bootstrap-iters >= 0")
    model_dir = check_model_dir(model_dir, trust_remote_code)
    lm_eval = _import_lm_eval()
    if manager is None:
        manager = task_manager(tasks, include_path)
    model_args = {"pretrained": model_dir, "dtype": dtype, "trust_remote_code": trust_remote_code}
    with _keep_global_rng():
        raw = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=tasks,
            task_manager=manager,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return {
        "model": model_dir,
        "tasks": {name: _metrics(values) for name, values in raw["results"].items()},
        "n_samples": raw.get("n-samples", {}),
        "higher_is_better": raw.get("higher_is_better", {}),
        "versions": {k: str(v) for k, v in raw.get("versions", {}).items()},
        "lm_eval_version": raw.get("lm_eval_version"),
        "settings": {
            "limit": limit,
            "num_fewshot": num_fewshot,
            "batch_size": batch_size,
            "device": device,
            "dtype": dtype,
            "bootstrap_iters": bootstrap_iters,
            "seed": seed,
        },
    }


def lm_eval_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One row per model, one column per ``task metric`` (stderr after ``±`` when known)."""
    columns = sorted(
        {
            (task, metric)
            for row in rows
            for task, metrics in row["tasks"].items()
            for metric in metrics
            if not metric.endswith("_stderr")
        }
    )
    header = "| model | " + " | ".join(f"{task} {metric}" for task, metric in columns) + " |"
    lines = [header, "|---|" + "---:|" * len(columns)]
    for row in rows:
        cells = []
        for task, metric in columns:
            values = row["tasks"].get(task, {})
            value, err = values.get(metric), values.get(f"{metric}_stderr")
            cell = "-" if value is None else f"{value:.4g}"
            cells.append(cell + (f" ± {err:.2g}" if value is not None and err is not None else ""))
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def lm_eval_models(
    models: list[str],
    tasks: list[str],
    output: Output,
    lengths: list[int] | None = None,
    include_path: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 100_000,
    seed: int = 0,
    batch_size: int = 4,
    loading: ModelLoading = ModelLoading(),
) -> dict[str, Any]:
    """Score local Hugging Face models with lm-evaluation-harness tasks, offline.

    Args:
        models: local model directories, each with a tokenizer.
        tasks: lm-eval task, group or tag names; ``ruler`` (or RULER task names) runs
            RULER's offline tasks at ``lengths`` (:mod:`longred_pl.eval.ruler`).
        output: the output directory: lm_eval.json/.md, and ruler.json/.md/.png for RULER
            (lm-eval draws its own bars: ``progress`` is not read).
        lengths: RULER prompt lengths in tokens (its ``max_seq_lengths``); required with RULER.
        include_path: directory of extra task YAMLs (local datasets).
        limit: examples per task (an int) or a fraction (< 1); for RULER, prompts per task
            and length.
        num_fewshot: few-shot examples (default: each task's own).
        bootstrap_iters: bootstrap resamples of the stderrs (0 skips them).
        seed: lm-eval's seeds.
        batch_size: requests per forward.
        loading: device, dtype, trust_remote_code (:class:`longred_pl.arguments.ModelLoading`).

    Returns:
        ``{"tasks", "models": [row per model], "ruler": [row per model] | None, "args"}``.
    """
    settings = {k: v for k, v in locals().items() if k not in ("output", "loading")}
    settings.update(asdict(loading), **asdict(output))  # the arguments, in lm_eval.json
    trust_remote_code, out = loading.trust_remote_code, output.out
    from longred_pl.eval.report import model_names
    from longred_pl.eval.ruler import preflight, split_tasks
    from longred_pl.models import resolve_device

    ruler_names, tasks = split_tasks([t.strip() for t in tasks if t.strip()])
    if not tasks and not ruler_names:
        raise UserError("--tasks: give at least one lm-eval task name")
    if batch_size < 1 or (limit is not None and limit <= 0) or bootstrap_iters < 0:
        raise UserError("--batch-size must be >= 1, --limit > 0 and --bootstrap-iters >= 0")
    if lengths and not ruler_names:
        raise UserError("--lengths is RULER's; add `ruler` to --tasks or drop --lengths")
    if ruler_names and limit is not None and not float(limit).is_integer():
        raise UserError("--limit: RULER takes prompts per task and length (an int), not a fraction")
    for model_dir in models:  # every input checked before the first model is scored
        check_model_dir(model_dir, trust_remote_code)
    from longred_pl.outputs import check_output

    check_output(
        out, output.overwrite, "--out", {f"model {i + 1}": m for i, m in enumerate(models)}
    )
    manager = task_manager(tasks, include_path) if tasks else None
    ruler_tasks = preflight(models, ruler_names, lengths, trust_remote_code) if ruler_names else []
    device = str(resolve_device(loading.device))
    rows, ruler_rows = [], []
    for name, model_dir in zip(model_names(models), models, strict=True):
        print(f"[longred lm-eval] {name}: {model_dir}")
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "device": device,
            "dtype": loading.dtype,
            "trust_remote_code": trust_remote_code,
            "seed": seed,
        }
        if tasks:
            result = score_with_lm_eval(
                model_dir,
                tasks,
                include_path,
                limit,
                num_fewshot=num_fewshot,
                bootstrap_iters=bootstrap_iters,
                manager=manager,
                **common,
            )
            rows.append({"name": name, **result})
        if ruler_tasks:
            ruler_rows.append(
                _ruler_row(name, model_dir, lengths or [], ruler_tasks, limit, common)
            )
    return _write(rows, ruler_rows, tasks, settings, out)


def _ruler_row(
    name: str,
    model_dir: str,
    lengths: list[int],
    tasks: list[str],
    limit: int | float | None,
    common: dict[str, Any],
) -> dict[str, Any]:
    from longred_pl.eval.ruler import score_ruler

    window = int(load_config(model_dir, common["trust_remote_code"]).max_position_embeddings)
    result = score_ruler(
        model_dir, lengths, tasks, limit=None if limit is None else int(limit), **common
    )
    return {"name": name, "window": window, "ruler": result}


def _write(rows: list, ruler_rows: list, tasks: list[str], settings: dict, out: str) -> dict:
    from longred_pl.eval.ruler import write_ruler
    from longred_pl.outputs import replace_output

    replace_output(Path(out))
    results = {"tasks": tasks, "models": rows, "ruler": ruler_rows or None, "args": settings}
    if rows:
        Path(out, "lm_eval.json").write_text(json.dumps(results, indent=2) + "\n")
        markdown = lm_eval_markdown(rows)
        Path(out, "lm_eval.md").write_text(markdown)
        print(markdown)
        print(f"[longred lm-eval] wrote {out}/lm_eval.json and lm_eval.md")
    if ruler_rows:
        from longred_pl.eval.report import ruler_markdown

        paths = write_ruler(ruler_rows, out)
        print(ruler_markdown(ruler_rows))
        print(f"[longred lm-eval] wrote {', '.join(paths)}")
    return results
