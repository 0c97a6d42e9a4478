"""The ``longred`` command line: the one CLI layer of the library.

``longred fit|validate|test ...`` is a LightningCLI over :class:`LongReDModule` and
:class:`MixedLengthDataModule` (``--help`` lists every key of the YAML configs). The
other sub-commands are the tools around training; each is a typed library function
whose ``--help`` comes from its signature and docstring (jsonargparse), like ``fit``'s:

* ``longred prepare``         write token shards from text, JSONL, parquet, arrow or datasets;
* ``longred build-teacher``   train the small real teacher of the embedded default;
* ``longred demo``            the embedded default end to end (teacher, data, fit, export);
* ``longred export CKPT OUT`` a checkpoint's student as a Hugging Face directory;
* ``longred merge S T OUT``   the student's and the original's weights interpolated (``--alpha``);
* ``longred eval MODEL...``   short/long perplexity, copy probe, passkey; JSON, markdown, plots;
* ``longred select-layers``   per-layer drift of the extended student; recommends ``distill_layers``;
* ``longred lm-eval MODEL...`` benchmarks (RULER, short tasks) through lm-eval-harness.

Flags may be spelt ``--seq-len`` or ``--seq_len``. A user error (a bad setting or file)
prints one line, ``longred: error: ...``, and exits with status 2; ``--debug`` or
``LONGRED_DEBUG=1`` shows the traceback. ``main(args)`` runs in-process and raises, so
tests and notebooks call the CLI directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

from longred_pl.errors import UserError
from longred_pl.trainer_cli import build_cli, lightning_cli

__all__ = ["build_cli", "console", "lightning_cli", "main", "run_tool"]

LIGHTNING_COMMANDS = ("fit", "validate", "test")

# tool -> (module, function); each function is typed and documented (Google style).
TOOLS: dict[str, tuple[str, str]] = {
    "prepare": ("longred_pl.data.prepare", "prepare_shards"),
    "build-teacher": ("longred_pl.demo.teacher", "build_teacher_cli"),
    "demo": ("longred_pl.demo.run", "run_demo"),
    "export": ("longred_pl.export", "export_checkpoint"),
    "merge": ("longred_pl.merge", "merge_models"),
    "eval": ("longred_pl.eval.commands", "evaluate_models"),
    "select-layers": ("longred_pl.drift", "select_layers"),
    "lm-eval": ("longred_pl.eval.lm_eval_bridge", "lm_eval_models"),
}


def groups_of(fn: Any) -> dict[str, type]:
    """``fn``'s parameters typed with an argument group (a dataclass): ``{name: class}``."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(fn)
    return {n: t for n, t in hints.items() if n != "return" and dataclasses.is_dataclass(t)}


def tool_parameters(fn: Any) -> list[tuple[str, Any, bool]]:
    """``(flag name, annotation, required)`` for each flag of a tool, groups flattened in place."""
    import dataclasses
    import inspect
    import typing

    hints, groups = typing.get_type_hints(fn), groups_of(fn)
    out = []
    for name, param in inspect.signature(fn).parameters.items():
        if name not in groups:
            out.append((name, hints.get(name), param.default is inspect.Parameter.empty))
            continue
        field_hints = typing.get_type_hints(groups[name])
        for field in dataclasses.fields(groups[name]):
            required = field.default is dataclasses.MISSING
            required = required and field.default_factory is dataclasses.MISSING
            out.append((field.name, field_hints[field.name], required))
    return out


def _kind(annotation: Any) -> str:
    """``bool`` (also ``bool | None``: unset = the tool's default), ``numbers`` (a list of
    int/float), ``list`` or ``other``."""
    text = str(annotation)
    listy = any(word in text.lower() for word in ("list[", "sequence[", "tuple["))
    if annotation is bool or annotation == bool | None:
        return "bool"
    if listy:
        return "numbers" if any(word in text for word in ("[int]", "[float]")) else "list"
    return "other"


def normalise_flags(argv: Sequence[str], fn: Any) -> list[str]:
    """The shell habits jsonargparse has no form for, rewritten into the forms it reads.

    jsonargparse reads ``--seq_len 8``, ``--force true``, a JSON list ``--files '["a","b"]'``
    and named parameters only; the README's commands use the shell's habits:

    * ``--seq-len 8`` -> ``--seq_len 8`` (dashes in flag names);
    * a bare bool flag -> ``--force=true``; ``--no-progress`` -> ``--progress=false``;
    * ``--files a b`` or ``--lengths 4096,8192`` -> one list;
    * leading bare words fill the required parameters in order (``longred export CKPT
      OUT``), a list parameter taking all that remain.
    """
    params = tool_parameters(fn)
    kinds = {name: _kind(annotation) for name, annotation, _ in params}
    required = [name for name, _, needed in params if needed]
    out: list[str] = []
    args = list(argv)
    n = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    words, args = args[:n], args[n:]
    for name in required:
        if not words:
            break
        listy = kinds[name] in ("list", "numbers")
        taken, words = (words, []) if listy else (words[:1], words[1:])
        out.append(f"--{name}=" + (_as_list(taken, kinds[name]) if listy else taken[0]))
    out.extend(words)  # too many: jsonargparse names the surplus
    i = 0
    while i < len(args):
        arg, i = args[i], i + 1
        if not arg.startswith("--") or arg in ("--help", "--print_config"):
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if not eq and name.startswith("no_") and kinds.get(name[3:]) == "bool":
            out.append(f"--{name[3:]}=false")
            continue
        if eq and kinds.get(name) in ("list", "numbers") and not value.startswith("["):
            value = _as_list([value], kinds[name])
        values = []
        while not eq and i < len(args) and not args[i].startswith("--"):
            values.append(args[i])
            i += 1
        if not eq and kinds.get(name) == "bool" and not values:
            values = ["true"]
        if kinds.get(name) in ("list", "numbers") and values and not values[0].startswith("["):
            values = [_as_list(values, kinds[name])]
        out.extend([f"--{name}{eq}{value}"] if eq else [f"--{name}", *values])
    return out


def _as_list(values: list[str], kind: str) -> str:
    """Shell words (``a b`` or ``0,4,16``) as one list value jsonargparse reads."""
    import json

    items = [part for value in values for part in value.split(",") if part.strip()]
    return "[" + ",".join(items) + "]" if kind == "numbers" else json.dumps(items)


def positional_usage(name: str, fn: Any) -> str:
    """``longred eval MODELS... --short-data SHORT_DATA --out OUT [options]``: the README's form."""
    parts, positional = [f"longred {name}"], True
    for param, annotation, required in tool_parameters(fn):
        if not required:
            continue
        listy = _kind(annotation) in ("list", "numbers")
        if positional:
            parts.append(param.upper() + ("..." if listy else ""))
            positional = not listy
        else:
            parts.append(f"--{param.replace('_', '-')} {param.upper()}")
    return " ".join([*parts, "[options]"])


def tool_parser(name: str, fn: Any) -> Any:
    """The tool's parser: its own parameters, then each argument group's fields, as flags."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    usage = (
        f"{positional_usage(name, fn)}\n"
        f"       (leading words fill the required parameters in order; each flag is also "
        f"accepted as --name_with_underscores, a bool bare or as --no-name)"
    )
    parser = ArgumentParser(prog=f"longred {name}", usage=usage)
    names = {param for param, _, _ in tool_parameters(fn)}
    if "config" not in names:  # `longred demo --config` is the demo's own (a fit config)
        parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these flags")
    groups = groups_of(fn)
    parser.add_function_arguments(fn, nested_key=None, skip=set(groups))
    for cls in groups.values():
        parser.add_class_arguments(cls, nested_key=None)
    return parser


def run_tool(name: str, argv: Sequence[str]) -> Any:
    """Parse ``argv`` against the tool's typed function and its argument groups; call it."""
    import dataclasses
    import inspect

    module, fn_name = TOOLS[name]
    fn = getattr(importlib.import_module(module), fn_name)
    values = tool_parser(name, fn).parse_args(normalise_flags(argv, fn)).as_dict()
    groups = groups_of(fn)
    kwargs = {}
    for param in inspect.signature(fn).parameters:
        if param in groups:
            fields = dataclasses.fields(groups[param])
            kwargs[param] = groups[param](**{f.name: values[f.name] for f in fields})
        elif param in values:
            kwargs[param] = values[param]
    return fn(**kwargs)


def usage() -> str:
    """Top-level help, printed without importing Lightning or transformers."""
    lines = [
        "usage: longred {fit,validate,test} [--config CONFIG.yaml] [--help]",
        "       longred --version",
        "       longred {" + ",".join(TOOLS) + "} [--help]",
        "",
        "Extend an LLM's context window with LongReD restoration distillation.",
        "",
        "training (LightningCLI; `longred fit --help` lists every key):",
        "  fit           train LongReDModule on MixedLengthDataModule",
        "  validate      validation perplexities (student, teacher, retention)",
        "  test          the same metrics as test/...",
        "",
        "tools (`longred TOOL --help`):",
    ]
    for name, (module, fn) in TOOLS.items():
        lines.append(f"  {name:13s} {_first_line_of(module, fn)}")
    lines += ["", "errors print one line; add --debug (or LONGRED_DEBUG=1) for the traceback"]
    return "\n".join(lines)


def _first_line_of(module: str, function: str) -> str:
    """The first docstring line of ``module.function`` (else of the module), not imported."""
    import ast

    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    docs = [
        ast.get_docstring(n)
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == function
    ]
    doc = (docs[0] if docs and docs[0] else None) or ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0].rstrip(".").strip("`") if doc.strip() else ""


def version_line() -> str:
    """``longred_pl X (torch Y, lightning Z, transformers W)``, read without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    from longred_pl import __version__

    parts = []
    for package in ("torch", "lightning", "transformers"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return f"longred_pl {__version__} ({', '.join(parts)})"


def main(args: Sequence[str] | None = None) -> Any:
    """Entry point of the ``longred`` console script; ``args`` defaults to ``sys.argv[1:]``."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    if argv[0] in ("--version", "-V"):
        print(version_line())
        return None
    if argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    if argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
        raise UserError(
            f"unknown command {argv[0]!r}; choose one of: {', '.join([*LIGHTNING_COMMANDS, *TOOLS])}"
        )
    return lightning_cli(argv)


def one_line(err: BaseException) -> str:
    """A user error's message on one line (a DataLoader worker wraps it in a traceback)."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = last.split("Error: ", 1)[-1]
    return " ".join(text.split())


def console() -> None:
    """The ``longred`` console script: user errors on one line, exit status 2."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("LONGRED_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        main(argv)
    except UserError as err:
        if debug:
            raise
        print(f"longred: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    console()
