"""One rule for a command's output folder: a non-empty one is refused unless ``--overwrite``.

:func:`check_output` runs first thing in a tool (before any model loads) and refuses a
non-empty ``out`` on one line that names it and the fixes; :func:`replace_output` runs
when the results are ready and empties the folder then, so a tool that fails halfway
loses nothing of the old output, and a finished one never leaves two runs' files mixed.
``longred fit`` follows the same rule for its run folder (``runs.py``).

A tool that writes its files one by one (``longred prepare``) writes them in
:func:`staged_output` instead: on success they replace what ``out`` held, as
:func:`replace_output` would; on failure (an error, Ctrl-C) nothing of the run stays: a
folder the run created is removed, one that existed before keeps what it held.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextmanager
def staged_output(path: Path) -> Iterator[Path]:
    """A folder inside ``path`` (checked by :func:`check_output`) to write the results in.

    When the block ends without an error, ``path``'s old entries are removed and the
    staged ones moved in their place. When it raises, the staged folder goes, and so do
    ``path`` and any parent folders this call created (if still empty); a folder that
    existed before is never removed, and keeps what it held.
    """
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=path))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()  # only while empty: never what another process wrote
            except OSError:
                break
        raise
    for entry in path.iterdir():
        if entry != stage:
            _remove(entry)
    for entry in stage.iterdir():
        entry.rename(path / entry.name)
    stage.rmdir()
