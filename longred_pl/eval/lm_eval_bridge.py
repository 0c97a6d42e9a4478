"""Score local models with EleutherAI's lm-evaluation-harness (``lm-eval`` 0.4.x).

LongReD's claim (LONGRED.md; Dong et al. 2025, Sec. 4) is that the extended model keeps
the original's short-text skills, which the paper measures on standard short benchmarks
(MMLU, HellaSwag, ...). :func:`score_with_lm_eval` runs such tasks on a local Hugging Face
directory (teacher or exported student) through lm-eval's Python API
(``lm_eval.simple_evaluate`` with the ``hf`` model); ``longred lm-eval``
(:func:`lm_eval_main`) does it for several models side by side and writes
``lm_eval.json`` and ``lm_eval.md``.

Offline: the model is read from its directory (an absolute path, so lm-eval's model-info
lookup never mistakes it for a Hub repository), ``trust_remote_code`` stays off unless
asked, and ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` default to ``1`` for the task data,
so built-in tasks read the local ``datasets`` cache and local tasks
(``--include-path DIR``, e.g. ``tests/data/lm_eval_tasks``) read their own files.
lm-eval is an optional extra: ``pip install 'longred_pl[eval]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longred_pl.models import load_config

__all__ = [
    "check_model_dir",
    "lm_eval_main",
    "lm_eval_markdown",
    "score_with_lm_eval",
    "task_manager",
]

OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _import_lm_eval() -> Any:
    for name in OFFLINE_ENV:  # read by `datasets` at import: set before lm-eval imports it
        os.environ.setdefault(name, "1")
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError(
            "longred lm-eval needs lm-evaluation-harness: `pip install 'longred_pl[eval]'`"
        ) from err
    return lm_eval


def task_manager(tasks: Sequence[str], include_path: str | None = None) -> Any:
    """A TaskManager that knows every name in ``tasks``, or a ValueError naming the unknown.

    Indexing lm-eval's ~15k built-in task files takes seconds, so tasks that all live in
    ``include_path`` are loaded from there alone.
    """
    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not os.path.isdir(include_path):
            raise FileNotFoundError(f"--include-path: {include_path!r} is not a directory")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hints = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        raise ValueError(
            f"--tasks: unknown lm-eval task(s) {unknown} (close matches: {hints}); local task "
            "YAMLs need --include-path DIR"
        )
    return manager


@contextlib.contextmanager
def _keep_global_rng() -> Iterator[None]:
    """lm-eval seeds Python's, NumPy's and torch's global generators; restore the caller's."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


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


def check_model_dir(model_dir: str, trust_remote_code: bool = False) -> str:
    """The absolute path of a local model directory with a tokenizer, or a clear error."""
    model_dir = str(Path(model_dir).resolve())
    load_config(model_dir, trust_remote_code, field="MODEL_DIR")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in tokenizer_files):
        raise FileNotFoundError(
            f"MODEL_DIR: {model_dir!r} has no tokenizer; lm-eval tokenises the task text, so "
            "save one there (`longred export` and `longred build-teacher` do)"
        )
    return model_dir


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
        raise ValueError(f"--tasks: give at least one lm-eval task name, got {tasks!r}")
    if batch_size < 1 or (limit is not None and limit <= 0) or bootstrap_iters < 0:
        raise ValueError("--batch-size must be >= 1, --limit > 0, --bootstrap-iters >= 0")
    model_dir = check_model_dir(model_dir, trust_remote_code)
    lm_eval = _import_lm_eval()
    if manager is None:
        manager = task_manager(tasks, include_path)
    model_args = {"pretrained": model_dir, "dtype": dtype, "trust_remote_code": trust_remote_code}
    with _keep_global_rng():
        raw = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=tasks, task_manager=manager,
            num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit,
            bootstrap_iters=bootstrap_iters, log_samples=False, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )  # fmt: skip
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
        },  # fmt: skip
    }


def lm_eval_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One row per model, one column per ``task metric`` (stderr after ``±`` when known)."""
    columns = sorted({(task, metric) for row in rows for task, metrics in row["tasks"].items()
                      for metric in metrics if not metric.endswith("_stderr")})  # fmt: skip
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


def _limit(text: str) -> int | float:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def _parser() -> argparse.ArgumentParser:
    from longred_pl.eval.evaluator import add_common_flags

    p = argparse.ArgumentParser(
        prog="longred lm-eval",
        description="Score local Hugging Face models with lm-evaluation-harness tasks, offline.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_DIR", help="local model directories")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", default=None, help="directory of extra task YAMLs")
    p.add_argument("--limit", type=_limit, default=None, help="examples per task (or fraction < 1)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples")
    p.add_argument("--bootstrap-iters", type=int, default=100_000, help="0 skips bootstrap stderrs")
    p.add_argument("--seed", type=int, default=0, help="lm-eval's seeds")
    add_common_flags(p)
    return p


def lm_eval_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``longred lm-eval MODEL_DIR ... --tasks T1,T2 [--include-path DIR] --out DIR``."""
    from longred_pl.eval.evaluator import resolve_device

    parser = _parser()
    ns = parser.parse_args(None if argv is None else list(argv))
    tasks = [t.strip() for t in ns.tasks.split(",") if t.strip()]
    names = [Path(d).name or str(d) for d in ns.models]
    if len(set(names)) < len(names):
        names = list(ns.models)
    if ns.batch_size < 1 or (ns.limit is not None and ns.limit <= 0) or ns.bootstrap_iters < 0:
        parser.error("--batch-size must be >= 1, --limit > 0 and --bootstrap-iters >= 0")
    try:  # every input checked before the first model is scored
        if not tasks:
            raise ValueError("--tasks: give at least one lm-eval task name")
        for model_dir in ns.models:
            check_model_dir(model_dir, ns.trust_remote_code)
        manager = task_manager(tasks, ns.include_path)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    rows = []
    for name, model_dir in zip(names, ns.models, strict=True):
        print(f"[longred lm-eval] {name}: {model_dir}")
        result = score_with_lm_eval(
            model_dir, tasks, ns.include_path, ns.limit, ns.batch_size,
            str(resolve_device(ns.device)), num_fewshot=ns.num_fewshot, dtype=ns.dtype,
            bootstrap_iters=ns.bootstrap_iters, trust_remote_code=ns.trust_remote_code,
            seed=ns.seed, manager=manager,
        )  # fmt: skip
        rows.append({"name": name, **result})
    os.makedirs(ns.out, exist_ok=True)
    results = {"tasks": tasks, "models": rows, "args": vars(ns)}
    Path(ns.out, "lm_eval.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = lm_eval_markdown(rows)
    Path(ns.out, "lm_eval.md").write_text(markdown)
    print(markdown)
    print(f"[longred lm-eval] wrote {ns.out}/lm_eval.json and lm_eval.md")
    return results
