"""What every lm-eval-harness run here needs: an offline import, the caller's RNG kept, a checked
model dir, and lm-eval's console output (its loggers, progress bars, prints) kept in a log file."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import tempfile
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


def log_path(log: str | os.PathLike | None, prefix: str) -> str:
    """Where lm-eval's console output goes: ``log``, or a new file in the temp directory.

    A new file is announced on one line (``prefix`` first); a given one is the caller's to say.
    """
    if log is not None:
        return str(log)
    fd, path = tempfile.mkstemp(prefix="longred_lm_eval_", suffix=".log")
    os.close(fd)
    print(f"{prefix} lm-eval's log lines and progress bars go to {path} (tail -f it to follow)")
    return path


@contextlib.contextmanager
def into_log(path: str) -> Iterator[None]:
    """lm-eval's console output appended to ``path`` instead of the console, for the block.

    The ``lm_eval`` loggers (INFO and up) write there alone; ``sys.stdout``/``sys.stderr``
    (lm-eval's prints, tqdm bars, other libraries' warnings) go there, and so does file
    descriptor 2 (what subprocesses such as ``git`` and C code write).
    """
    with open(path, "a", encoding="utf-8") as log, _lm_eval_logger_to(log):
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        with _fd2_to(log), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield


@contextlib.contextmanager
def _lm_eval_logger_to(log: Any) -> Iterator[None]:
    logger = logging.getLogger("lm_eval")
    saved = logger.level, logger.propagate, list(logger.handlers)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logger.handlers = [handler]
    logger.propagate = False
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate, logger.handlers = saved[1], saved[2]


@contextlib.contextmanager
def _fd2_to(log: Any) -> Iterator[None]:
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a closed stderr): nothing to redirect
        yield
        return
    log.flush()
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        log.flush()
        os.dup2(saved, 2)
        os.close(saved)
