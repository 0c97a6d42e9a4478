"""One run, one folder: what ``longred fit`` refuses, replaces and resumes from.

A fit writes into output folders its config names (:func:`run_folders`): each
``ModelCheckpoint``'s ``dirpath``, ``ExportStudent``'s ``dirpath`` and the CSV /
TensorBoard logger's ``save_dir/name``. Lightning itself never refuses a non-empty one: a
second run with the same config writes ``last-v1.ckpt`` next to the first run's
``last.ckpt``, and the next ``--ckpt_path .../last.ckpt`` resumes the wrong run. Here
(:func:`check_new_run`, called by the CLI before anything is instantiated):

* a fit without ``--ckpt_path`` into a non-empty output folder is refused on one line
  that names the folder, its field and the three ways on (``--ckpt_path auto`` to resume,
  ``--overwrite``, other folders);
* ``--overwrite`` empties those output folders whole before the run starts (never the
  config files on the command line, never inputs such as a teacher or shards that live
  beside them under ``default_root_dir``), so no folder mixes two runs' files;
* ``--ckpt_path last`` resolves to the newest *complete* checkpoint in the run's
  checkpoint folders (:func:`newest_checkpoint`) and is an error when there is none;
  ``--ckpt_path auto`` does the same but starts from scratch when there is none (the
  command a requeued job repeats).

Complete means loadable: a ``.ckpt`` file whose zip directory (written last by
``torch.save``) is intact, or a distributed checkpoint directory with its ``.metadata``
(written last, by rank 0, after every rank's shards).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longred_pl.errors import UserError

RESUME_WORDS = ("last", "auto")


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    if isinstance(node, dict):
        return node.get(key)
    return getattr(node, key, None)


def _class_name(node: Any) -> str:
    return str(_get(node, "class_path") or type(node).__name__).rsplit(".", 1)[-1]


def _items(node: Any) -> list[Any]:
    if node is None or isinstance(node, bool):
        return []
    return list(node) if isinstance(node, list | tuple) else [node]


def _dirpath(node: Any, key: str) -> str | None:
    """``init_args.<key>`` of a class_path node, or the attribute of an instance."""
    args = _get(node, "init_args")
    value = _get(args, key) if args is not None else _get(node, key)
    return None if value is None else str(value)


VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")


def _log_folders(trainer: Any) -> list[Path]:
    """``save_dir/name`` of each CSV / TensorBoard logger (``version_N`` folders inside);
    Lightning's default logger: ``<default_root_dir>/lightning_logs``."""
    root = _get(trainer, "default_root_dir")
    logger = _get(trainer, "logger")
    if logger in (None, True):
        return [Path(str(root or ".")) / "lightning_logs"]
    folders = []
    for item in _items(logger):
        if _class_name(item) in VERSIONED_LOGGERS:
            save_dir = _dirpath(item, "save_dir") or str(root or ".")
            folders.append(Path(save_dir) / (_dirpath(item, "name") or "lightning_logs"))
    return folders


def checkpoint_dirs(trainer: Any) -> list[Path]:
    """Where the run's checkpoints are: each ``ModelCheckpoint``'s ``dirpath``; without one,
    Lightning's ``<logger folder>/version_N/checkpoints``."""
    found = [
        Path(d)
        for c in _items(_get(trainer, "callbacks"))
        if _class_name(c) == "ModelCheckpoint" and (d := _dirpath(c, "dirpath"))
    ]
    if found:
        return found
    return [v / "checkpoints" for f in _log_folders(trainer) for v in sorted(f.glob("version_*"))]


def run_folders(trainer: Any) -> list[tuple[str, Path]]:
    """``(field, folder)`` of every output folder the config names for the run: checkpoints
    (``ModelCheckpoint.dirpath``), the export (``ExportStudent.dirpath``) and the CSV /
    TensorBoard logs (``save_dir/name``). Inputs that live beside them (a teacher, shards
    under ``default_root_dir``) are none of these, so they are never counted or removed.
    Lightning's own defaults (no dirpath, the default logger) write versioned folders that
    never mix; they are checked only through an explicit logger."""
    folders: list[tuple[str, Path]] = []
    for callback in _items(_get(trainer, "callbacks")):
        name = _class_name(callback)
        if name in ("ModelCheckpoint", "ExportStudent") and (path := _dirpath(callback, "dirpath")):
            folders.append((f"trainer.callbacks: {name} dirpath", Path(path)))
    if _get(trainer, "logger") not in (None, True):
        folders += [("trainer.logger: save_dir/name", f) for f in _log_folders(trainer)]
    unique: list[tuple[str, Path]] = []
    for field, folder in folders:
        if not any(folder.resolve() == u.resolve() for _, u in unique):
            unique.append((field, folder))
    return unique


def is_complete(path: Path) -> bool:
    """A checkpoint that loads: an intact ``torch.save`` zip, or a DCP directory with ``.metadata``."""
    if path.is_dir():
        return (path / ".metadata").is_file()
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def newest_checkpoint(dirs: Iterable[Path]) -> Path | None:
    """The newest complete checkpoint (by modification time) in ``dirs``, else None."""
    candidates = [p for d in dirs if d.is_dir() for p in d.iterdir() if p.name.endswith(".ckpt")]
    complete = [p for p in candidates if is_complete(p)]
    return max(complete, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), default=None)


def _non_empty(folder: Path, keep: Iterable[Path] = ()) -> bool:
    """``folder`` holds something other than ``keep`` (the command's own config files)."""
    kept = {Path(k).resolve() for k in keep}
    return folder.is_dir() and any(p.resolve() not in kept for p in folder.iterdir())


def _is_launch_rank() -> bool:
    """True where the run's folders are checked and replaced: the launching process (Lightning's
    own launcher re-runs the command with ``LOCAL_RANK`` set) or global rank 0 (torchrun, SLURM)."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key) not in (None, ""):
            return os.environ[key] == "0"
    return os.environ.get("LOCAL_RANK") in (None, "", "0")


def _guard_removal(folder: Path) -> None:
    from longred_pl.outputs import protected

    if protected(folder):
        raise UserError(
            f"--overwrite: refusing to remove {str(folder)!r}, which holds the working "
            f"directory or is home; set trainer.default_root_dir to the run's own folder"
        )


def resolve_ckpt_path(ckpt: str | None, trainer: Any) -> tuple[str | None, str | None]:
    """``(path, note)``: ``last``/``auto`` resolved to the newest complete checkpoint.

    Raises:
        UserError: ``last`` and the run has no complete checkpoint.
    """
    if ckpt not in RESUME_WORDS:
        return ckpt, None
    dirs = checkpoint_dirs(trainer)
    found = newest_checkpoint(dirs)
    where = (
        ", ".join(str(d) for d in dirs) or "(no checkpoint folder: set trainer.default_root_dir)"
    )
    if found is not None:
        return str(
            found
        ), f"ckpt_path={ckpt!r}: resuming from {found} (the newest complete checkpoint)"
    if ckpt == "last":
        raise UserError(
            f"ckpt_path: 'last' found no complete checkpoint in {where}; start the run without "
            f"--ckpt_path, or use --ckpt_path auto to start from scratch when there is none"
        )
    return None, f"ckpt_path='auto': no complete checkpoint in {where}; starting from scratch"


def check_new_run(
    trainer: Any,
    ckpt_path: str | None,
    overwrite: bool,
    auto: bool = False,
    keep: Iterable[Path] = (),
) -> str | None:
    """Refuse (or, with ``overwrite``, empty) the run's folders of a fit that starts afresh.

    ``ckpt_path`` set: the run continues and writes into its own folders. ``auto``: the
    command of a requeued job; with no checkpoint yet it continues in the folders an
    interrupted attempt of the same command began. ``keep``: the command's config files,
    which may live in the run's folder (never counted, never removed). Returns a note for
    the console, if any.
    """
    if ckpt_path or not _is_launch_rank():
        return None
    if overwrite and auto:
        raise UserError(
            "--overwrite: not with --ckpt_path auto (which resumes the run); choose one"
        )
    keep = list(keep)
    busy = [(field, f) for field, f in run_folders(trainer) if _non_empty(f, keep)]
    if not busy:
        return None
    field, first = busy[0]
    if auto:
        return f"{first} holds files of an earlier attempt without a checkpoint; the run starts again there"
    if not overwrite:
        raise UserError(
            f"{field}: {str(first)!r} already holds a run's files; resume that run with "
            f"--ckpt_path auto, replace it with --overwrite, or write this run elsewhere "
            f"(trainer.default_root_dir and the callbacks' dirpath)"
        )
    for _, folder in busy:
        _guard_removal(folder)
    kept = {Path(k).resolve() for k in keep}
    for _, folder in busy:
        for entry in folder.iterdir():
            if entry.resolve() in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return f"--overwrite: emptied {', '.join(str(f) for _, f in busy)}"


def config_files(argv: Iterable[str]) -> list[Path]:
    """The files a LightningCLI command line reads with ``--config`` / ``-c``."""
    argv, found = list(argv), []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            found.append(Path(argv[i + 1]))
        elif arg.startswith("--config="):
            found.append(Path(arg.split("=", 1)[1]))
    return found
