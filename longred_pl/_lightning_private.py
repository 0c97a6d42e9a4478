"""Every private Lightning API the library uses, in one place.

Read against Lightning 2.6.6 (:data:`CHECKED_LIGHTNING`); a warning is emitted once outside
that range, and ``tests/unit/test_private_guards.py`` checks each name below on the
installed Lightning, so that an upgrade fails a test, not a run.

* ``LightningCLI._parse_ckpt_path``: with ``--ckpt_path`` it puts the checkpoint's model
  hyperparameters over the config, explicit flags included, without a word; the library's
  CLI replaces it with its own resume reconciliation (:func:`replace_ckpt_path_parsing`);
* ``ModelParallelStrategy``: ``setup_environment`` builds its (data_parallel,
  tensor_parallel) mesh; the context-parallel strategy skips to the parent's
  ``setup_environment`` and ``_setup_distributed`` and sets ``_device_mesh`` (and
  ``_data_parallel_size`` when "auto") itself, on the strategy and on the LightningModule,
  where ``LightningModule.device_mesh`` reads it (:func:`setup_without_model_parallel_mesh`,
  :func:`install_device_mesh`, :func:`device_mesh`);
* ``RichProgressBar._update`` and ``._leave``: the step progress bar (optimizer steps,
  not batches) advances Rich's training task and keeps the user's ``leave`` setting.
"""

from __future__ import annotations

import warnings
from typing import Any

CHECKED_LIGHTNING = ("2.6", "2.6")  # inclusive (major.minor) range this file was read on


def check_version(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed Lightning) is in the checked range; warns if not."""
    if version is None:
        import lightning

        version = lightning.__version__
    minor = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
    low, high = (tuple(int(p) for p in v.split(".")) for v in CHECKED_LIGHTNING)
    if low <= minor <= high:
        return True
    warnings.warn(
        f"longred_pl uses private Lightning APIs read on Lightning {CHECKED_LIGHTNING[0]}-"
        f"{CHECKED_LIGHTNING[1]}; found {version}. Run tests/unit/test_private_guards.py.",
        stacklevel=2,
    )
    return False


def attached_trainer(module: Any) -> Any:
    """The Trainer a LightningModule is attached to, or ``None`` (public: ``.trainer`` raises
    when there is none)."""
    try:
        return module.trainer
    except (RuntimeError, AttributeError):  # detached, or not a LightningModule
        return None


def replace_ckpt_path_parsing(cli_class: type, parse: Any) -> type:
    """A subclass of ``cli_class`` whose ``_parse_ckpt_path`` runs ``parse(cli)`` instead."""
    if not callable(getattr(cli_class, "_parse_ckpt_path", None)):
        raise ImportError(
            f"{cli_class.__name__} has no _parse_ckpt_path (Lightning changed it); the resume "
            f"rules of longred_pl.trainer_cli need it"
        )
    return type(cli_class.__name__, (cli_class,), {"_parse_ckpt_path": parse})


def setup_without_model_parallel_mesh(strategy: Any) -> None:
    """``ModelParallelStrategy.setup_environment`` minus its (dp, tp) mesh: the accelerator's
    setup (its parent's) and the process group."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    super(ModelParallelStrategy, strategy).setup_environment()
    strategy._setup_distributed()


def data_parallel_size(strategy: Any) -> int | str:
    """The strategy's ``data_parallel_size`` as given (an int, or ``"auto"``)."""
    return strategy._data_parallel_size


def install_device_mesh(strategy: Any, mesh: Any, data_parallel: int) -> None:
    """Use ``mesh`` as the strategy's device mesh (and the module's ``device_mesh``)."""
    strategy._data_parallel_size = data_parallel
    strategy._device_mesh = mesh
    if strategy.lightning_module is not None:
        strategy.lightning_module._device_mesh = mesh


def device_mesh(strategy: Any) -> Any:
    """The strategy's device mesh (``ModelParallelStrategy``'s ``_device_mesh``), or ``None``."""
    return getattr(strategy, "_device_mesh", None)


def rich_bar_leave(bar: Any) -> bool:
    """A ``RichProgressBar``'s ``leave`` setting."""
    return bool(bar._leave)


def rich_bar_update(bar: Any, task_id: Any, completed: int) -> None:
    """Set a ``RichProgressBar`` task's progress."""
    bar._update(task_id, completed)
