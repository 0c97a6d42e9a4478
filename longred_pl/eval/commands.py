"""``longred eval``: several local models side by side, as one typed function.

:func:`evaluate_models` is the command (its Google docstring is its ``--help``); in-process,
call it directly or ``longred_pl.cli.main(["eval", ...])`` to parse flags as the shell does.
Every input is checked before the first model loads: directories, shards, settings, and
for RULER the packages, the offline tasks and each length against each tokenizer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from longred_pl.data.shards import expand_urls
from longred_pl.errors import UserError
from longred_pl.eval.evaluator import (
    COPY_MAX_DISTANCE,
    PASSKEY_DEPTHS,
    RULER_LIMIT,
    _tokenizer,
    evaluate_model,
)
from longred_pl.eval.probes import passkey_min_length
from longred_pl.eval.report import model_names, plot_results, results_markdown
from longred_pl.models import load_config

__all__ = ["evaluate_models"]


def evaluate_models(
    models: list[str],
    short_data: str,
    short_seq_len: int,
    out: str,
    teacher: str | None = None,
    long_data: str | None = None,
    long_seq_len: int | None = None,
    num_short: int = 32,
    num_long: int = 4,
    batch_size: int = 4,
    buckets: int = 8,
    copy_span: int = 16,
    copy_trials: int = 8,
    copy_distances: list[int] | None = None,
    copy_max_distance: int = COPY_MAX_DISTANCE,
    passkey: bool = False,
    passkey_lengths: list[int] | None = None,
    passkey_depths: list[float] | None = None,
    ruler_lengths: list[int] | None = None,
    ruler_tasks: list[str] | None = None,
    ruler_limit: int | None = RULER_LIMIT,
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa",
    seed: int = 0,
    device: str = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Short/long perplexity, copy accuracy, passkey and RULER of local Hugging Face models.

    Args:
        models: local model directories (students, baselines).
        short_data: held-out short-text shards (``longred prepare``).
        short_seq_len: tokens per short sample.
        out: output directory (results.json, results.md, PNG plots).
        teacher: the original model; evaluated first, adds the short-ppl retention.
        long_data: held-out long-text shards (optional).
        long_seq_len: tokens per long sample (with ``long_data``).
        num_short: short samples evaluated.
        num_long: long samples evaluated.
        batch_size: samples per forward (RULER: prompts per generate call).
        buckets: position buckets of the long perplexity.
        copy_span: repeat-copy span length.
        copy_trials: repeat-copy sequences per distance.
        copy_distances: filler lengths (default: 0, powers of 4, up to the window capped
            at ``copy_max_distance``).
        copy_max_distance: longest default filler; 0 = up to each model's window.
        passkey: passkey retrieval (real LMs with a tokenizer); a depth x length heat-map.
        passkey_lengths: prompt lengths in tokens (default: window/16 ... the full window of
            the largest window among the models, for every model).
        passkey_depths: needle depths in [0, 1] (default 0, 0.25, 0.5, 0.75, 1).
        ruler_lengths: run RULER's offline tasks at these prompt lengths (needs lm-eval).
        ruler_tasks: RULER tasks (default ``ruler``: every task that runs offline).
        ruler_limit: prompts per RULER task and length (0 = lm-eval's 500).
        attn_implementation: sdpa, eager or flash_attention_2.
        seed: seed of the copy, passkey and RULER probes.
        device: auto (CUDA when available), cpu, cuda:0 ...
        dtype: weights' dtype.
        trust_remote_code: allow custom model code.
        progress: show progress bars.
        overwrite: replace a non-empty ``out`` whole (refused without it).

    Returns:
        ``{"teacher", "models": [row per model], "args", "plots"}``, also in results.json.
    """
    from longred_pl.outputs import check_output

    settings = {k: v for k, v in locals().items() if k != "check_output"}
    dirs = list(dict.fromkeys(([teacher] if teacher else []) + list(models)))
    tasks = _check(settings, dirs)
    inputs = {"the teacher": teacher, **{f"model {i + 1}": m for i, m in enumerate(models)}}
    check_output(out, overwrite, "--out", inputs)  # before any model loads, like _check
    window = max(int(load_config(d, trust_remote_code).max_position_embeddings) for d in dirs)
    rows = []
    for name, model_dir in zip(model_names(dirs), dirs, strict=True):
        print(f"[longred eval] {name}: {model_dir}")
        row = evaluate_model(
            model_dir,
            short_data,
            short_seq_len,
            long_data,
            long_seq_len,
            num_short=num_short,
            num_long=num_long,
            batch_size=batch_size,
            buckets=buckets,
            copy_span=copy_span,
            copy_trials=copy_trials,
            copy_distances=copy_distances,
            copy_max_distance=copy_max_distance,
            passkey=passkey,
            passkey_lengths=passkey_lengths,
            passkey_window=window,
            passkey_depths=passkey_depths or PASSKEY_DEPTHS,
            ruler_lengths=ruler_lengths,
            ruler_tasks=tasks,
            ruler_limit=ruler_limit or None,
            seed=seed,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            progress=progress,
        )
        rows.append({"name": name, "is_teacher": model_dir == teacher, **row})
    if teacher:
        teacher_loss = rows[0]["short"]["loss"]
        for row in rows:
            row["short_retention"] = math.exp(teacher_loss - row["short"]["loss"])
    return _write(rows, teacher, settings, out)


def _write(rows: list[dict], teacher: str | None, settings: dict, out: str) -> dict[str, Any]:
    from longred_pl.outputs import replace_output

    replace_output(Path(out))
    results: dict[str, Any] = {"teacher": teacher, "models": rows, "args": settings}
    Path(out, "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = results_markdown(rows)
    Path(out, "results.md").write_text(markdown)
    results["plots"] = plot_results(rows, out)
    print(markdown)
    print(f"[longred eval] wrote {out}/results.json, results.md, {len(results['plots'])} plot(s)")
    return results


def _check(s: dict[str, Any], dirs: list[str]) -> list[str] | None:
    """Every setting checked before a model loads; returns the RULER tasks (or None)."""
    if (s["long_data"] is None) != (s["long_seq_len"] is None):
        raise UserError("--long-data and --long-seq-len go together: pass both or neither")
    minimum = {
        "short_seq_len": 2,
        "long_seq_len": 2,
        "copy_span": 2,
        "num_short": 1,
        "num_long": 1,
        "batch_size": 1,
        "buckets": 1,
        "copy_trials": 1,
        "ruler_limit": 0,
    }
    for flag, low in minimum.items():
        if s[flag] is not None and s[flag] < low:
            raise UserError(f"--{flag.replace('_', '-')} must be >= {low} (got {s[flag]})")
    if s["long_seq_len"] is not None and s["buckets"] >= s["long_seq_len"]:
        raise UserError(f"--buckets must be < --long-seq-len ({s['long_seq_len']})")
    for path in dirs:
        field = "--teacher" if path == s["teacher"] else "MODEL_DIR"
        load_config(path, s["trust_remote_code"], field=field)
    expand_urls(s["short_data"], field="--short-data")
    if s["long_data"]:
        expand_urls(s["long_data"], field="--long-data")
    if s["passkey"]:
        _check_passkey(dirs, s["passkey_lengths"], s["trust_remote_code"])
    if not s["ruler_lengths"]:
        return None
    from longred_pl.eval.ruler import preflight

    requested = s["ruler_tasks"] or ["ruler"]
    return preflight(dirs, requested, s["ruler_lengths"], s["trust_remote_code"], "--ruler-lengths")


def _check_passkey(dirs: list[str], lengths: list[int] | None, trust_remote_code: bool) -> None:
    """Each model has a tokenizer, and explicit lengths hold the prompt's fixed text."""
    for model_dir in dirs:
        shortest = passkey_min_length(_tokenizer(model_dir, trust_remote_code))
        if lengths and min(lengths) < shortest:
            raise UserError(
                f"--passkey-lengths {min(lengths)}: the passkey prompt needs {shortest} tokens "
                f"with {model_dir}'s tokenizer; use lengths of at least {shortest}"
            )
