"""Datasets of the local lm-eval test tasks, read from the JSONL files beside this module.

lm-eval resolves ``!function tasks.<name>`` relative to the task YAML, so these tasks work
from any working directory (``dataset_path: json`` with ``data_files`` would resolve
relative paths against the current directory instead). No network, no dataset cache.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]


def choice_dataset(**_metadata):
    """``tiny_choice.jsonl`` as the ``test`` split: context, choices, label."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows("tiny_choice.jsonl"))})


def text_dataset(**_metadata):
    """``tiny_text.jsonl`` as the ``test`` split: one ``text`` field per line."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_rows("tiny_text.jsonl"))})
