"""longred_pl: extend an LLM's context window with LongReD restoration distillation.

Main entry points: :class:`longred_pl.module.LongReDModule` (LightningModule),
:class:`longred_pl.data.datamodule.MixedLengthDataModule` (LightningDataModule) and the
``longred`` command line (:mod:`longred_pl.cli`). Submodules are imported lazily so that
``import longred_pl`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LongReDModule": "longred_pl.module",
    "MixedLengthDataModule": "longred_pl.data.datamodule",
    "StreamConfig": "longred_pl.data.shards",
    "ExportStudent": "longred_pl.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'longred_pl' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
