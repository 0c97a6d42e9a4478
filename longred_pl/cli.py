"""The ``longred`` command line.

``longred fit|validate|test ...`` is a LightningCLI over :class:`LongReDModule` and
:class:`MixedLengthDataModule` (``--help`` lists every key of the YAML configs). The
other sub-commands are the tools around training:

* ``longred prepare``        write token shards from text files or an embedded corpus;
* ``longred build-teacher``  train the small real teacher of the embedded default;
* ``longred demo``           the embedded default end to end (teacher, data, fit, export);
* ``longred export CKPT OUT`` a checkpoint's student as a Hugging Face directory;
* ``longred eval MODEL_DIR...`` short/long perplexity, copy probe, passkey; JSON, markdown, plots;
* ``longred select-layers``  per-layer drift of the extended student; recommends ``distill_layers``;
* ``longred lm-eval MODEL_DIR... --tasks ...`` short-text benchmarks through lm-eval-harness.

``main(args)`` runs in-process, so tests and notebooks call the CLI directly.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _save_config_callback() -> type:
    from lightning.pytorch.cli import SaveConfigCallback

    class LogConfig(SaveConfigCallback):
        """Writes ``config.yaml`` as usual and sends the whole config to the logger.

        Dashboards (W&B) then show the trainer, data and model settings of every run, not
        only the model's hyper-parameters.
        """

        def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if trainer.logger is not None:
                trainer.logger.log_hyperparams({"config": self.config.as_dict()})

    return LogConfig


def lightning_cli(args: Sequence[str], run: bool = True) -> Any:
    """LightningCLI over the LongReD module and data module.

    With ``run=False`` ``args`` carry no sub-command and the CLI only builds the trainer,
    model and data module (``cli.trainer``, ``cli.model``, ``cli.datamodule``).
    """
    from lightning.pytorch.cli import LightningCLI

    from longred_pl.data.datamodule import MixedLengthDataModule
    from longred_pl.module import LongReDModule

    return LightningCLI(
        LongReDModule,
        MixedLengthDataModule,
        args=list(args),
        run=run,
        save_config_callback=_save_config_callback(),
        save_config_kwargs={"overwrite": True},
    )


def build_cli(args: Sequence[str]) -> Any:
    """The configured objects of a config, without running a sub-command."""
    return lightning_cli(args, run=False)


def _export(argv: Sequence[str]) -> None:
    import argparse

    from longred_pl.export import export_checkpoint

    parser = argparse.ArgumentParser(
        prog="longred export",
        description="Write a checkpoint's student as a Hugging Face directory.",
    )
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) of a LongReDModule run")
    parser.add_argument("out_dir", help="output directory")
    ns = parser.parse_args(list(argv))
    print(f"[longred] exported to {export_checkpoint(ns.ckpt, ns.out_dir)}")


def _prepare(argv: Sequence[str]) -> Any:
    from longred_pl.data.prepare import prepare_main

    return prepare_main(list(argv))


def _build_teacher(argv: Sequence[str]) -> Any:
    from longred_pl.teacher import build_teacher_main

    return build_teacher_main(list(argv))


def _demo(argv: Sequence[str]) -> Any:
    from longred_pl.demo import demo_main

    return demo_main(list(argv))


def _eval(argv: Sequence[str]) -> Any:
    from longred_pl.eval.evaluator import eval_main

    return eval_main(list(argv))


def _select_layers(argv: Sequence[str]) -> Any:
    from longred_pl.drift import select_layers_main

    return select_layers_main(list(argv))


def _lm_eval(argv: Sequence[str]) -> Any:
    from longred_pl.eval.lm_eval_bridge import lm_eval_main

    return lm_eval_main(list(argv))


TOOLS: dict[str, Callable[[Sequence[str]], Any]] = {
    "prepare": _prepare,
    "build-teacher": _build_teacher,
    "demo": _demo,
    "export": _export,
    "eval": _eval,
    "select-layers": _select_layers,
    "lm-eval": _lm_eval,
}


def main(args: Sequence[str] | None = None) -> Any:
    """Entry point of the ``longred`` console script; ``args`` defaults to ``sys.argv[1:]``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        tools = ", ".join(TOOLS)
        print(f"usage: longred {{{', '.join(LIGHTNING_COMMANDS)}}} ... | {{{tools}}} ...\n")
    return lightning_cli(argv)


def console() -> None:
    """The ``longred`` console script: ``main`` with the exit status of a shell command."""
    main()


if __name__ == "__main__":
    console()
