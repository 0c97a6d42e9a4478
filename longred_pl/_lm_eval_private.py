"""Every private lm-evaluation-harness API the library uses, in one place.

Read against lm-eval 0.4.13 (:data:`CHECKED_LM_EVAL`); ``tests/unit/test_private_guards.py``
checks the name on the installed version (skipped without the ``[eval]`` extra).

* ``lm_eval.tasks._yaml_loader._import_func_in_yml``: how lm-eval loads a task's
  ``custom_dataset`` function from its YAML. RULER's prompt generators build 500 prompts per
  task and length whatever ``--limit`` says; :func:`bounded_build` caps them through this
  loader. Without it (another lm-eval) nothing is capped and the prompts are built in full.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

CHECKED_LM_EVAL = ("0.4.13", "0.4.13")  # inclusive range read


@contextlib.contextmanager
def bounded_build(limit: int | None, builders: tuple[str, ...]) -> Iterator[None]:
    """lm-eval's generators build 500 prompts per task and length: make them build ``limit``.

    lm-eval loads each task's ``custom_dataset`` function from its YAML through
    ``lm_eval.tasks._yaml_loader._import_func_in_yml`` (a module it keeps in ``sys.modules``
    and may reload); the generators it calls (``builders``, by name) are capped in that function's
    own namespace while the block runs, and restored after. Without that loader (another
    lm-eval), nothing is capped: the prompts are built in full, as before.
    """
    try:
        from lm_eval.tasks import _yaml_loader
    except ImportError:
        _yaml_loader = None
    resolve = getattr(_yaml_loader, "_import_func_in_yml", None)
    if limit is None or resolve is None:
        yield
        return
    patched: list[tuple[dict[str, Any], str, Any]] = []

    def capped_resolve(qual: str, base_dir: Any) -> Any:
        function = resolve(qual, base_dir)
        _cap_builders(getattr(function, "__globals__", {}), builders, int(limit), patched)
        return function

    _yaml_loader._import_func_in_yml = capped_resolve
    try:
        yield
    finally:
        _yaml_loader._import_func_in_yml = resolve
        for namespace, name, build in reversed(patched):
            namespace[name] = build


def _cap_builders(
    namespace: dict[str, Any], builders: tuple[str, ...], limit: int, patched: list
) -> None:
    """Each generator named in ``builders`` found in ``namespace`` capped at ``limit`` prompts."""
    for name in builders:
        build = namespace.get(name)
        if not callable(build) or getattr(build, "capped_at", None) is not None:
            continue
        if "num_samples" in inspect.signature(build).parameters:
            namespace[name] = _at_most(build, limit)
            patched.append((namespace, name, build))


def _at_most(build: Any, limit: int) -> Any:
    """``build`` with its ``num_samples`` argument (given or default) capped at ``limit``."""
    signature = inspect.signature(build)

    @functools.wraps(build)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        bound.arguments["num_samples"] = min(int(bound.arguments["num_samples"]), limit)
        return build(*bound.args, **bound.kwargs)

    bounded.capped_at = limit  # type: ignore[attr-defined]
    return bounded
