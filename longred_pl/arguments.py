"""Argument groups that several tools share, as typed dataclasses.

A tool's function takes these groups as parameters (``loading: ModelLoading``); the
command line reads each group's fields as flags of their own (``--device``, ``--dtype``,
``--out``...), with ``--help`` written from the fields' docstrings, the way LightningCLI
reads the module's signature. In-process, build the groups directly::

    evaluate_models(["student"], EvalData("val/short"), Output("eval"), loading=ModelLoading("cpu"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dtype = Literal["float32", "bfloat16", "float16"]
"""The dtype a tool loads weights in."""

AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
"""The attention kernel a tool asks transformers for (flash_attention_2: the [flash] extra)."""


@dataclass(frozen=True)
class ModelLoading:
    """How each model is loaded.

    Args:
        device: auto (CUDA when available), cpu, cuda:0 ...
        dtype: the weights' dtype.
        trust_remote_code: allow custom model code in a model directory.
    """

    device: str = "auto"
    dtype: Dtype = "float32"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Output:
    """Where the results go.

    Args:
        out: output directory; it must be empty or absent.
        overwrite: replace a non-empty out whole (refused without it).
        progress: progress bars (--no-progress hides them).
    """

    out: str
    overwrite: bool = False
    progress: bool = True
