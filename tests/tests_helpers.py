"""Config builder shared by the integration tests that run `longred fit`; the studies' tiny teacher."""

from __future__ import annotations

from pathlib import Path

import yaml


def fit_config(tmp_path, tiny_llama, tiny_shards, max_steps, every=2, slow=None, **trainer) -> str:
    """Write a tiny LongReD fit config under ``tmp_path`` and return its path."""
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(tmp_path / "ckpt"),
                "every_n_train_steps": every,
                "save_top_k": -1,
            },
        },
        {
            "class_path": "longred_pl.export.ExportStudent",
            "init_args": {"dirpath": str(tmp_path / "student")},
        },
    ]
    if slow:
        callbacks.append({"class_path": "killable.Slow", "init_args": {"seconds": slow}})
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "accumulate_grad_batches": 4,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path)},
            },
            "enable_progress_bar": False,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 2,
            "val_check_interval": 8,
            "check_val_every_n_epoch": None,
            "default_root_dir": str(tmp_path),
            "callbacks": callbacks,
            **trainer,
        },
        "model": {
            "teacher_path": tiny_llama,
            "target_length": 256,
            "rope_method": "abf",
            "rope_kwargs": {"rope_theta": 40000.0},
            "distill_layers": [1, 2],
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
        },
        "data": {
            "long": {"urls": tiny_shards["long"], "seq_len": 256, "batch_size": 1},
            "short": {"urls": tiny_shards["short"], "seq_len": 16, "batch_size": 4},
            "s2l": {"urls": tiny_shards["s2l"], "seq_len": 64, "batch_size": 2},
            "val_short": {"urls": tiny_shards["val_short"], "seq_len": 64, "batch_size": 2},
            "schedule": ["long", "s2l", "long", "short"],
            "num_workers": 1,
            "shuffle_buffer": 4,
        },
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


TINY_STUDY_RECIPE = {
    "corpora": ["shakespeare", "python"],
    "corpus_max_bytes": 120_000,
    "vocab_size": 320,
    "hidden_size": 32,
    "num_layers": 4,  # the study configs distil hidden states of 4-layer teachers
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 64,
    "window": 256,  # the study configs' teacher window
    "batch_size": 4,
    "steps": 20,
    "warmup": 5,
    "eval_rows": 8,
}
"""A 47K-parameter two-domain teacher for the studies' end-to-end tests (`experiments/`)."""


def tiny_study_args(tmp_path: Path, *extra: str) -> list[str]:
    """A study's command line on the tiny teacher (1 seed, 1 thread, small evaluation), under
    ``tmp_path``; ``extra`` are the study's own flags."""
    recipe = tmp_path / "tiny-teacher.yaml"
    recipe.write_text(yaml.safe_dump(TINY_STUDY_RECIPE))
    return [
        "--recipe",
        str(recipe),
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "out"),
        "--seeds",
        "1",
        "--threads",
        "1",
        "--num-short",
        "8",
        "--num-long",
        "2",
        "--calib-steps",
        "2",
        *extra,
    ]
