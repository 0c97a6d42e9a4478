"""One rule for a command's output folder: a non-empty one is refused unless ``--overwrite``.

:func:`check_output` runs first thing in a tool (before any model loads) and refuses a
non-empty ``out`` on one line that names it and the fixes; :func:`replace_output` runs
when the results are ready and empties the folder then, so a tool that fails halfway
loses nothing of the old output, and a finished one never leaves two runs' files mixed.
``longred fit`` follows the same rule for its run folder (``runs.py``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from longred_pl.errors import UserError


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def protected(path: Path) -> bool:
    """The working directory, one of its parents, or home: never emptied by ``--overwrite``."""
    target, here = path.resolve(), Path.cwd().resolve()
    return target == here or target in here.parents or target == Path.home().resolve()


def check_output(
    out: str | Path, overwrite: bool, field: str, inputs: Mapping[str, str | None] = {}
) -> Path:
    """``out`` as a Path, after refusing what cannot be written there.

    Args:
        out: the command's output folder.
        overwrite: the command's ``--overwrite``.
        field: how the command names ``out`` (``OUT``, ``--out``).
        inputs: ``{name: path}`` the command reads; ``out`` may not hold one of them (and
            ``--overwrite`` would remove it).
    """
    path = Path(out)
    target = path.resolve()
    for name, source in inputs.items():
        if source and _inside(Path(source).resolve(), target):
            raise UserError(
                f"{field}: {str(path)!r} holds {name} ({source}), which this command reads; "
                f"write to another directory"
            )
    if path.exists() and not path.is_dir():
        raise UserError(f"{field}: {str(path)!r} is a file; pass a directory (created if missing)")
    if path.is_dir() and any(path.iterdir()):
        if overwrite and protected(path):
            raise UserError(
                f"--overwrite: refusing to empty {str(path)!r} (the working directory, one of "
                f"its parents, or home); pass the command's own output directory"
            )
        if not overwrite:
            raise UserError(
                f"{field}: {str(path)!r} is not empty; pass a new directory, or --overwrite to "
                f"replace what is there"
            )
    return path


def replace_output(path: Path) -> Path:
    """Empty ``path`` (checked by :func:`check_output`) and create it; returns it."""
    if path.is_dir():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
