"""``longred eval``: several local models side by side, as one typed function.

:func:`evaluate_models` is the command (its Google docstring is its ``--help``); in-process,
call it directly or ``longred_pl.cli.main(["eval", ...])`` to parse flags as the shell does.
Every input is checked before the first model loads: directories, shards, settings, and
for RULER the packages, the offline tasks and each length against each tokenizer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from longred_pl.arguments import AttnImplementation, ModelLoading, Output
from longred_pl.errors import UserError
from longred_pl.eval.evaluator import (
    _tokenizer,
    document_mask_line,
    evaluate_model,
    stream_lengths,
)
from longred_pl.eval.probes import passkey_min_length
from longred_pl.eval.report import model_names, plot_results, results_markdown
from longred_pl.eval.settings import EvalData, Probes
from longred_pl.models import load_config
from longred_pl.outputs import check_output

__all__ = ["evaluate_models"]


def evaluate_models(
    models: list[str],
    data: EvalData,
    output: Output,
    teacher: str | None = None,
    probes: Probes = Probes(),
    loading: ModelLoading = ModelLoading(),
    attn_implementation: AttnImplementation = "sdpa",
) -> dict[str, Any]:
    """Short/long perplexity, copy accuracy, passkey and RULER of local Hugging Face models.

    Args:
        models: local model directories (students, baselines).
        data: the held-out shards (:class:`EvalData`).
        output: the output directory (results.json, results.md, PNG plots).
        teacher: the original model; evaluated first, adds the short-ppl retention.
        probes: the copy, passkey and RULER probes (:class:`Probes`).
        loading: device, dtype, trust_remote_code (:class:`ModelLoading`).
        attn_implementation: sdpa, eager or flash_attention_2.

    Returns:
        ``{"teacher", "models": [row per model], "args", "plots"}``, also in results.json.
    """
    settings = {
        "models": models,
        "teacher": teacher,
        **asdict(data),
        **asdict(probes),
        **asdict(loading),
        "attn_implementation": attn_implementation,
        **asdict(output),
    }
    dirs = list(dict.fromkeys(([teacher] if teacher else []) + list(models)))
    tasks = _check(data, probes, loading, dirs, teacher)  # every input, before a model loads
    inputs = {"the teacher": teacher, **{f"model {i + 1}": m for i, m in enumerate(models)}}
    check_output(output.out, output.overwrite, "--out", inputs)
    window = max(
        int(load_config(d, loading.trust_remote_code).max_position_embeddings) for d in dirs
    )
    probes = replace(probes, ruler_tasks=tasks)
    if line := document_mask_line(data):
        print(line)
    rows = []
    for name, model_dir in zip(model_names(dirs), dirs, strict=True):
        print(f"[longred eval] {name}: {model_dir}")
        row = evaluate_model(
            model_dir,
            data,
            probes,
            loading,
            attn_implementation=attn_implementation,
            passkey_window=window,
            progress=output.progress,
        )
        rows.append({"name": name, "is_teacher": model_dir == teacher, **row})
    if teacher:
        teacher_loss = rows[0]["short"]["loss"]
        for row in rows:
            row["short_retention"] = math.exp(teacher_loss - row["short"]["loss"])
    return _write(rows, teacher, settings, output.out)


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


def _check(
    data: EvalData, probes: Probes, loading: ModelLoading, dirs: list[str], teacher: str | None
) -> list[str] | None:
    """Every setting checked before a model loads; returns the RULER tasks (or None)."""
    if (data.long_data is None) and data.long_seq_len is not None:
        raise UserError("--long-seq-len needs --long-data: pass both or neither")
    values = {**asdict(data), **asdict(probes)}
    minimum = {
        "short_seq_len": 2,
        "long_seq_len": 2,
        "copy_span": 2,
        "num_short": 1,
        "num_long": 1,
        "batch_size": 1,
        "buckets": 1,
        "copy_trials": 1,
        "passkey_trials": 1,
        "ruler_limit": 0,
    }
    for flag, low in minimum.items():
        if values[flag] is not None and values[flag] < low:
            raise UserError(f"--{flag.replace('_', '-')} must be >= {low} (got {values[flag]})")
    _, long_len = stream_lengths(data)  # given, or read from index.json; refused if unlike it
    if long_len is not None and data.buckets >= long_len:
        raise UserError(f"--buckets must be < --long-seq-len ({long_len})")
    document_mask_line(data)  # --document-mask true on shards without boundaries: refused
    for path in dirs:
        load_config(
            path, loading.trust_remote_code, field="--teacher" if path == teacher else "MODEL_DIR"
        )
    if probes.passkey:
        _check_passkey(dirs, probes.passkey_lengths, loading.trust_remote_code)
    if not probes.ruler_lengths:
        return None
    from longred_pl.eval.ruler import preflight

    requested = probes.ruler_tasks or ["ruler"]
    return preflight(
        dirs, requested, probes.ruler_lengths, loading.trust_remote_code, "--ruler-lengths"
    )


def _check_passkey(dirs: list[str], lengths: list[int] | None, trust_remote_code: bool) -> None:
    """Each model has a tokenizer, and explicit lengths hold the prompt's fixed text."""
    for model_dir in dirs:
        shortest = passkey_min_length(_tokenizer(model_dir, trust_remote_code))
        if lengths and min(lengths) < shortest:
            raise UserError(
                f"--passkey-lengths {min(lengths)}: the passkey prompt needs {shortest} tokens "
                f"with {model_dir}'s tokenizer; use lengths of at least {shortest}"
            )
