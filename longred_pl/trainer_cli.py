"""LightningCLI over ``LongReDModule`` and ``MixedLengthDataModule``: ``longred fit`` /
``validate`` / ``test`` and the library's in-process runs of them (the demo, the studies).

It adds to LightningCLI what a LongReD run needs before anything is instantiated: the
run-folder rule and ``--ckpt_path last|auto`` (``runs.py``), ``--overwrite``, and the model
settings reconciled with a resumed checkpoint (``resume.py``). ``longred_pl.cli`` (the
command line) is built on it; nothing here imports the command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from longred_pl import _lightning_private
from longred_pl.errors import UserError


def _lightning_cli_class() -> type:
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    class LogConfig(SaveConfigCallback):
        """Writes ``config.yaml`` as usual and sends the whole config to the logger."""

        def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if trainer.logger is not None:
                trainer.logger.log_hyperparams({"config": self.config.as_dict()})

    class LongReDCLI(LightningCLI):
        """LightningCLI that reconciles model settings on resume (``resume.py``)."""

        def parse_arguments(self, parser: Any, args: Any) -> None:
            # ``main`` always passes args; Lightning warns whenever sys.argv is non-empty too
            self.argv = sys.argv[1:] if args is None else list(args)
            self.config = parser.parse_args(self.argv)

        def add_arguments_to_parser(self, parser: Any) -> None:
            from jsonargparse import ActionYesNo

            parser.add_argument(
                "--overwrite",
                action=ActionYesNo,
                default=False,
                help="fit: empty the run's output folders (checkpoints, logs, export) before "
                "it starts; without it a fit into used ones is refused",
            )

    _lightning_private.check_version()
    LongReDCLI = _lightning_private.replace_ckpt_path_parsing(LongReDCLI, reconcile_ckpt_path)
    return LongReDCLI, LogConfig


def reconcile_ckpt_path(self: Any) -> None:
    """``--ckpt_path`` under the run-folder and resume rules (replaces Lightning's, which
    puts the checkpoint's hyperparameters over the config without a word)."""
    from longred_pl import resume, runs

    sub = self.config.get("subcommand")
    if not sub:
        return
    ckpt, overwrite = self.config[sub].get("ckpt_path"), self.config[sub].get("overwrite")
    if overwrite and sub != "fit":
        raise UserError(f"--overwrite: only for fit ({sub} writes no run folder)")
    trainer, given = self.config[sub].get("trainer"), ckpt
    ckpt, note = runs.resolve_ckpt_path(given, trainer)
    self.config[sub]["ckpt_path"] = ckpt
    notes = [note]
    if sub == "fit":
        keep = runs.config_files(self.argv)
        notes.append(runs.check_new_run(trainer, ckpt, bool(overwrite), given == "auto", keep))
    for line in filter(None, notes):
        print(f"[longred] {line}", file=sys.stderr)
    if not ckpt:
        return
    if ckpt in ("best", "hpc", "registry"):  # Lightning resolves these later
        print(
            f"[longred] resume: ckpt_path={ckpt!r} is resolved by Lightning after the "
            f"models load; model settings are not compared with it (pass a path to "
            f"have them checked)",
            file=sys.stderr,
        )
        return
    if not os.path.exists(ckpt):
        raise UserError(
            f"ckpt_path: {ckpt!r} does not exist; pass a .ckpt file or a "
            f"sharded checkpoint directory of the run"
        )
    from longred_pl.module import LongReDModule

    given = self.config[sub]["model"]
    saved = resume.read_checkpoint_hparams(ckpt)
    use, notes = resume.reconcile(saved, dict(given), resume.init_defaults(LongReDModule), ckpt)
    for key, value in use.items():
        given[key] = value
    for note in notes:
        print(f"[longred] resume: {note}", file=sys.stderr)


def lightning_cli(args: Sequence[str], run: bool = True) -> Any:
    """LightningCLI over the LongReD module and data module.

    With ``run=False`` ``args`` carry no sub-command and the CLI only builds the trainer,
    model and data module (``cli.trainer``, ``cli.model``, ``cli.datamodule``).
    """
    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.module import LongReDModule

    cli_class, log_config = _lightning_cli_class()
    return cli_class(
        LongReDModule,
        MixedLengthDataModule,
        args=list(args),
        run=run,
        save_config_callback=log_config,
        save_config_kwargs={"overwrite": True},
    )


def build_cli(args: Sequence[str]) -> Any:
    """The configured objects of a config, without running a sub-command."""
    return lightning_cli(args, run=False)
