"""Plots are files: matplotlib on the Agg backend, imported only when a plot is drawn."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or an ImportError with the fix."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: `pip install 'longred_pl[plots]'`") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
