"""``longred demo``: the embedded default end to end, offline.

1. build (or reuse) the demo teacher: a small Llama trained on Shakespeare at window
   256 (``longred_pl.demo.teacher``, recipe ``configs/teacher/tiny-llama.yaml``);
2. write the shards the config's ``data:`` section points to, from the embedded corpus
   (train plays for long/short/s2l, held-out plays for validation), unless present;
3. ``longred validate`` (the extended, untrained student), then ``longred fit``;
4. print a summary: wall time, short-text perplexity of teacher and student before and
   after training, long perplexity, checkpoint sizes, the exported directory.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

# How each stream of the quickstart config is made from the embedded corpus:
# (split, pack). Long samples never cross play boundaries, as long web documents would not.
DEMO_STREAMS = {
    "long": ("train", False),
    "short": ("train", True),
    "s2l": ("train", True),
    "val_short": ("val", True),
    "val_long": ("val", False),
}


def _config_value(config: dict[str, Any], *keys: str) -> Any:
    node: Any = config
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"the demo config has no {'.'.join(keys)}")
        node = node[key]
    return node


def prepare_demo_data(
    config: dict[str, Any], teacher_dir: str, corpus: str = "shakespeare"
) -> None:
    """Write every stream of ``config['data']`` that is not on disk yet."""
    from longred_pl.data.prepare import tokenize_documents, write_shards
    from longred_pl.data.tokenizer import load_tokenizer
    from longred_pl.demo.corpora import load_corpus

    tokenizer = load_tokenizer(teacher_dir)
    tokenized: dict[str, list] = {}  # one tokenisation per split, shared by its streams
    for stream, (split, pack) in DEMO_STREAMS.items():
        spec = config["data"].get(stream)
        if not spec:
            continue
        out, seq_len = Path(spec["urls"]), int(spec["seq_len"])
        index = out / "index.json"
        if index.exists() and json.loads(index.read_text()).get("seq_len") == seq_len:
            continue
        print(f"[longred] writing {stream} shards ({corpus}/{split}, {seq_len} tokens) to {out}")
        if split not in tokenized:
            tokenized[split] = list(tokenize_documents(load_corpus(corpus, split), tokenizer))
        write_shards(
            tokenized[split],
            out,
            seq_len,
            samples_per_shard=64 if seq_len >= 1024 else 256,
            pack=pack,
            vocab_size=len(tokenizer),
            tokenizer_name=teacher_dir,
            source={"corpus": corpus, "split": split},
            overwrite=True,
        )


def _last_metrics(log_root: Path) -> dict[str, float]:
    """The latest value of every metric in the newest CSVLogger run under ``log_root``."""
    files = sorted(log_root.glob("**/metrics.csv"), key=os.path.getmtime)
    if not files:
        return {}
    latest: dict[str, float] = {}
    with open(files[-1]) as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if value not in ("", None) and key not in ("step", "epoch"):
                    latest[key] = float(value)
    return latest


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else float("nan")


def run_demo(
    config: str = "configs/quickstart.yaml",
    recipe: str = "configs/teacher/tiny-llama.yaml",
    skip_validate: bool = False,
    fit_args: list[str] | None = None,
) -> dict[str, Any]:
    """The embedded default end to end, offline: teacher, shards, validate, fit, export.

    Args:
        config: the LightningCLI fit config (its ``model.teacher_path`` and ``data:``
            streams say where the teacher and the shards go).
        recipe: the demo teacher's recipe (built on first use, then cached).
        skip_validate: skip validating the untrained, RoPE-extended student first.
        fit_args: extra ``longred fit`` flags, e.g. ``["--trainer.max_steps=8"]``.
    """
    from longred_pl.demo.teacher import TeacherRecipe, ensure_teacher
    from longred_pl.trainer_cli import lightning_cli

    extra = list(fit_args or [])
    start = time.perf_counter()
    config_path = config
    config = yaml.safe_load(Path(config_path).read_text())
    teacher_dir = _config_value(config, "model", "teacher_path")
    teacher_recipe = TeacherRecipe.from_file(recipe) if os.path.exists(recipe) else TeacherRecipe()
    ensure_teacher(teacher_dir, teacher_recipe, progress=True)
    prepare_demo_data(config, teacher_dir)
    log_root = Path(_config_value(config, "trainer", "default_root_dir"))
    before: dict[str, float] = {}
    if not skip_validate:
        print("[longred] validating the extended student before training")
        before = validate_metrics(config_path, extra)
    # the demo's run replaces its previous one whole (a resume passes --ckpt_path instead)
    replace = [] if any(a.startswith("--ckpt_path") for a in extra) else ["--overwrite"]
    lightning_cli(["fit", "--config", config_path, *replace, *extra])
    after = _last_metrics(log_root)
    ckpt = log_root / "checkpoints" / "last.ckpt"
    teacher_weights = Path(teacher_dir) / "model.safetensors"
    summary = {
        "wall_time_s": round(time.perf_counter() - start, 1),
        "teacher_ppl_short": after.get("val/ppl_short_teacher"),
        "student_ppl_short_before": before.get("val/ppl_short"),
        "student_ppl_short_after": after.get("val/ppl_short"),
        "student_ppl_long_before": before.get("val/ppl_long"),
        "student_ppl_long_after": after.get("val/ppl_long"),
        "checkpoint_mb": round(_size_mb(ckpt), 2),
        "teacher_weights_mb": round(_size_mb(teacher_weights), 2),
        "exported_student": _exported_dir(config),
    }
    (log_root / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n[longred] demo summary")
    for key, value in summary.items():
        print(f"  {key:28s} {value}")
    return summary


def _exported_dir(config: dict[str, Any]) -> str | None:
    for callback in config.get("trainer", {}).get("callbacks", []) or []:
        if str(callback.get("class_path", "")).endswith("ExportStudent"):
            return callback["init_args"]["dirpath"]
    return None


def validate_metrics(config_path: str, extra: list[str]) -> dict[str, float]:
    """Run validation in-process on the config (no logger) and return its metrics."""
    from longred_pl.trainer_cli import build_cli

    cli = build_cli(["--config", config_path, "--trainer.logger=false", *extra])
    results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=True)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}
