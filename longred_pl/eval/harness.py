"""What every lm-eval-harness run here needs: an offline import, the caller's RNG kept, a checked model dir."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longred_pl.errors import UserError
from longred_pl.models import load_config

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


def check_model_dir(model_dir: str, trust_remote_code: bool = False) -> str:
    """The absolute path of a local model directory with a tokenizer, or a clear error."""
    model_dir = str(Path(model_dir).resolve())
    load_config(model_dir, trust_remote_code, field="MODEL_DIR")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in tokenizer_files):
        raise UserError(
            f"MODEL_DIR: {model_dir!r} has no tokenizer; lm-eval tokenises the task text, so "
            "save one there (`longred export` and `longred build-teacher` do)"
        )
    return model_dir
