"""Model settings on resume: the checkpoint's, the run's, and never a silent mix.

LightningCLI's own ``--ckpt_path`` handling puts the checkpoint's model hyperparameters
over the run's config, explicit flags included, without a word (and does nothing for a
sharded checkpoint directory). ``longred`` instead reconciles each setting:

* equal in both: nothing to say;
* a *runtime* setting (:data:`RUNTIME_SETTINGS`: where the teacher lives, the attention
  kernel, chunking, checkpointing, the teacher's dtype, the NaN tolerance) differs: the
  run's value is used, and a line says so (they do not change what is learnt);
* a *recipe* setting differs and the run left it at its default: the checkpoint's value
  is used, and a line says so;
* a recipe setting differs and the run set it: refused with a UserError listing every
  such setting, since the run would silently continue another recipe.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from typing import Any

from longred_pl.errors import UserError

RUNTIME_SETTINGS = frozenset(
    {
        "teacher_path",
        "attn_implementation",
        "loss_chunk_size",
        "gradient_checkpointing",
        "teacher_dtype",
        "max_skipped_steps",
        "trust_remote_code",
    }
)


def read_checkpoint_hparams(path: str) -> dict[str, Any]:
    """The model hyperparameters stored in a checkpoint file or sharded directory.

    Tensors are memory-mapped, not read, so this is cheap for an 8B checkpoint.
    """
    import torch

    meta = os.path.join(path, "meta.pt") if os.path.isdir(path) else path
    if not os.path.isfile(meta):
        raise UserError(
            f"ckpt_path: {path!r} is neither a checkpoint file nor a sharded checkpoint "
            f"directory (no meta.pt); pass a .ckpt or a directory written by the trainer"
        )
    try:
        ckpt = torch.load(meta, map_location="cpu", weights_only=True, mmap=not os.path.isdir(path))
    except Exception as err:  # noqa: BLE001  (truncated zip, bad pickle, short read: all the same to the user)
        raise UserError(
            f"ckpt_path: {meta} is not a readable checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); it may be truncated by an interrupted save: "
            f"resume from another checkpoint of the run (e.g. an earlier step) or omit --ckpt_path"
        ) from err
    hparams = dict(ckpt.get("hyper_parameters", {}) or {})
    for key in ("_instantiator", "_class_path"):
        hparams.pop(key, None)
    return hparams


def init_defaults(cls: type) -> dict[str, Any]:
    """The defaults of ``cls.__init__``'s parameters."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def same(a: Any, b: Any) -> bool:
    """Equality for config values: numbers with a relative 1e-12, containers by item."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def reconcile(
    saved: Mapping[str, Any], given: Mapping[str, Any], defaults: Mapping[str, Any], ckpt: str
) -> tuple[dict[str, Any], list[str]]:
    """``(settings to use, notes)`` for a resume; UserError on a conflicting recipe setting.

    Args:
        saved: the checkpoint's model hyperparameters.
        given: the run's model settings (config files and flags).
        defaults: the module's defaults (a setting equal to its default counts as unset).
        ckpt: the checkpoint path, for messages.
    """
    use, notes, conflicts = dict(given), [], []
    for key, old in saved.items():
        if key not in given or same(given[key], old):
            continue
        new = given[key]
        if key in RUNTIME_SETTINGS:
            notes.append(f"model.{key}: {new!r} (this run) instead of the checkpoint's {old!r}")
        elif key in defaults and same(new, defaults[key]):
            use[key] = old
            notes.append(f"model.{key}: {old!r} from the checkpoint (this run left the default)")
        else:
            conflicts.append(f"model.{key}={new!r} (checkpoint: {old!r})")
    if conflicts:
        raise UserError(
            f"resuming {ckpt} with other recipe settings: {'; '.join(conflicts)}. A resumed run "
            f"continues the checkpoint's recipe: drop these settings, or start a new run "
            f"without --ckpt_path"
        )
    return use, notes
