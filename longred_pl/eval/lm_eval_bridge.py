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
lm-eval's own console output (its loggers' lines, progress bars, prints) goes to
``OUT/lm_eval.log``, said in one line, and the console keeps this module's lines.
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
from longred_pl.eval.harness import (
    _import_lm_eval,
    _keep_global_rng,
    check_model_dir,
    into_log,
    log_path,
)
from longred_pl.models import load_config

LOG_NAME = "lm_eval.log"  # lm-eval's console output, in the output directory

__all__ = [
    "check_arguments",
    "check_model_dir",
    "lm_eval_markdown",
    "lm_eval_result",
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
        hints = "; ".join(
            f"{t}: {', '.join(difflib.get_close_matches(t, manager.all_tasks, n=3)) or 'none'}"
            for t in unknown
        )
        raise UserError(
            f"--tasks: unknown lm-eval task(s) {', '.join(unknown)} (close matches: {hints}); "
            "local task YAMLs need --include-path DIR"
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


def check_counts(batch_size: int, limit: int | float | None, bootstrap_iters: int) -> None:
    """A :class:`UserError` naming the first of ``--batch-size``/``--limit``/``--bootstrap-iters``
    out of range."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {batch_size})")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be > 0: examples per task, or a fraction < 1 (got {limit})")
    if bootstrap_iters < 0:
        raise UserError(
            f"--bootstrap-iters must be >= 0; 0 skips the stderrs (got {bootstrap_iters})"
        )


def lm_eval_result(model_dir: str, raw: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`score_with_lm_eval`'s result from ``lm_eval.simple_evaluate``'s output ``raw``."""
    return {
        "model": model_dir,
        "tasks": {name: _metrics(values) for name, values in raw["results"].items()},
        "n_samples": raw.get("n-samples", {}),
        "higher_is_better": raw.get("higher_is_better", {}),
        "versions": {k: str(v) for k, v in raw.get("versions", {}).items()},
        "lm_eval_version": raw.get("lm_eval_version"),
        "settings": settings,
    }


def _simple_evaluate(
    model_dir: str,
    tasks: list[str],
    manager: Any,
    settings: dict[str, Any],
    trust_remote_code: bool,
    log: str,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of the ``hf`` model in ``model_dir``, its output to ``log``."""
    lm_eval = _import_lm_eval()
    kwargs = {k: v for k, v in settings.items() if k not in ("dtype", "seed")}
    model_args = {"pretrained": model_dir, "dtype": settings["dtype"]}
    model_args["trust_remote_code"] = trust_remote_code
    for name in ("random", "numpy_random", "torch_random", "fewshot_random"):
        kwargs[f"{name}_seed"] = settings["seed"]
    with _keep_global_rng(), into_log(log):
        return lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=tasks,
            task_manager=manager,
            log_samples=False,
            **kwargs,
        )


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
    log: str | None = None,
) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on the local Hugging Face model in ``model_dir``.

    Args:
        model_dir: local causal-LM directory with a tokenizer (e.g. ``longred export``'s).
        tasks: lm-eval task, group or tag names.
        include_path: directory of extra task YAMLs (local datasets).
        limit: examples per task (an int), or a fraction of each task when < 1.
        batch_size, device, dtype, trust_remote_code: requests per forward; ``cpu``,
            ``cuda:0``...; the weights' dtype at load; custom modelling code allowed.
        num_fewshot: few-shot examples (default: each task's own).
        bootstrap_iters: bootstrap resamples for the stderr of non-mean metrics
            (lm-eval's default; 0 skips them, and every stderr is then ``None``).
        seed: lm-eval's Python/NumPy/torch/few-shot seeds (the caller's generators are
            restored afterwards).
        manager: a :func:`task_manager` for ``tasks`` to reuse across models.
        log: file for lm-eval's console output (default: a new one in the temp directory).

    Returns:
        ``{"model", "tasks": {task: {metric: value}}, "n_samples": {task: {"original",
        "effective"}}, "higher_is_better", "versions", "lm_eval_version", "settings"}``;
        metrics use lm-eval's names (``acc``, ``acc_norm``, ``word_perplexity``...), with
        ``<metric>_stderr`` beside each (``None`` when not computed).
    """
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise UserError(f"--tasks: give at least one lm-eval task name, got {tasks!r}")
    check_counts(batch_size, limit, bootstrap_iters)
    model_dir = check_model_dir(model_dir, trust_remote_code)
    manager = task_manager(tasks, include_path) if manager is None else manager
    settings = {"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size}
    settings.update(device=device, dtype=dtype, bootstrap_iters=bootstrap_iters, seed=seed)
    log = log_path(log, "[longred lm-eval]")
    raw = _simple_evaluate(model_dir, tasks, manager, settings, trust_remote_code, log)
    return lm_eval_result(model_dir, raw, settings)


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


def check_arguments(
    tasks: Sequence[str],
    lengths: Sequence[int] | None,
    limit: int | float | None,
    batch_size: int,
    bootstrap_iters: int,
) -> tuple[list[str], list[str]]:
    """``(ruler_names, other_tasks)`` of ``--tasks``, after the checks that need no files."""
    from longred_pl.eval.ruler import split_tasks

    ruler_names, others = split_tasks([t.strip() for t in tasks if t.strip()])
    if not others and not ruler_names:
        raise UserError("--tasks: give at least one lm-eval task name")
    check_counts(batch_size, limit, bootstrap_iters)
    if lengths and not ruler_names:
        raise UserError("--lengths is RULER's; add `ruler` to --tasks or drop --lengths")
    if ruler_names and limit is not None and not float(limit).is_integer():
        raise UserError("--limit: RULER takes prompts per task and length (an int), not a fraction")
    return ruler_names, others


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
        output: the output directory: lm_eval.json/.md, ruler.json/.md/.png for RULER, and
            lm_eval.log, lm-eval's own output (lm-eval draws its bars: ``progress`` unread).
        lengths: RULER prompt lengths in tokens (its ``max_seq_lengths``); required with
            RULER; a task that does not fit a length is skipped there (said, and recorded).
        include_path: directory of extra task YAMLs (local datasets).
        limit: examples per task (an int) or a fraction (< 1); for RULER, prompts built and
            scored per task and length.
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
    from longred_pl.models import resolve_device

    ruler_names, tasks = check_arguments(tasks, lengths, limit, batch_size, bootstrap_iters)
    manager, ruler_tasks = _check_inputs(
        models, tasks, ruler_names, lengths, include_path, output, loading
    )
    common = {"batch_size": batch_size, "device": str(resolve_device(loading.device))}
    common.update(dtype=loading.dtype, trust_remote_code=loading.trust_remote_code, seed=seed)
    common["log"] = _start_log(output.out)
    short = {"include_path": include_path, "limit": limit, "num_fewshot": num_fewshot}
    short.update(bootstrap_iters=bootstrap_iters, manager=manager)
    rows, ruler_rows = _score_models(models, tasks, ruler_tasks, lengths or [], short, common)
    return _write(rows, ruler_rows, tasks, settings, output.out)


def _score_models(
    models: list[str],
    tasks: list[str],
    ruler_tasks: list[str],
    lengths: list[int],
    short: dict[str, Any],
    common: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each model in turn: its row of lm-eval ``tasks``, then its RULER row."""
    from longred_pl.eval.report import model_names

    rows, ruler_rows = [], []
    for name, model_dir in zip(model_names(models), models, strict=True):
        print(f"[longred lm-eval] {name}: {model_dir}")
        if tasks:
            rows.append({"name": name, **score_with_lm_eval(model_dir, tasks, **short, **common)})
        if ruler_tasks:
            row = _ruler_row(name, model_dir, lengths, ruler_tasks, short["limit"], common)
            ruler_rows.append(row)
    return rows, ruler_rows


def _check_inputs(
    models: list[str],
    tasks: list[str],
    ruler_names: list[str],
    lengths: list[int] | None,
    include_path: str | None,
    output: Output,
    loading: ModelLoading,
) -> tuple[Any, list[str]]:
    """Every input checked before the first model is scored; ``(task manager, RULER tasks)``."""
    from longred_pl.eval.ruler import preflight
    from longred_pl.outputs import check_output

    for model_dir in models:
        check_model_dir(model_dir, loading.trust_remote_code)
    inputs = {f"model {i + 1}": m for i, m in enumerate(models)}
    check_output(output.out, output.overwrite, "--out", inputs)
    manager = task_manager(tasks, include_path) if tasks else None
    if not ruler_names:
        return manager, []
    return manager, preflight(models, ruler_names, lengths, loading.trust_remote_code)


def _start_log(out: str) -> str:
    """``OUT/lm_eval.log``, started empty and announced in one line (kept if the run fails)."""
    path = Path(out, LOG_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    print(f"[longred lm-eval] lm-eval's log lines and progress bars go to {path} (tail -f it)")
    return str(path)


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

    log = Path(out, LOG_NAME)
    kept = log.read_bytes() if log.is_file() else b""
    replace_output(Path(out))  # the old results go; this run's log stays
    log.write_bytes(kept)
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
