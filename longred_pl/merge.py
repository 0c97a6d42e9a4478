"""Weight interpolation between a trained student and the original model (the teacher).

Every tensor of the output is ``alpha * student + (1 - alpha) * teacher``, computed in
float32 and saved in the student's dtype; the config (with the student's extended
``rope_parameters``) is the student's, so ``alpha`` trades the student's long-context gains
against the original's short-text quality. Integer buffers must be equal in both; RoPE
buffers (``inv_freq``) are derived from the config and taken from the student (in Hugging
Face models they are non-persistent, so not in the state dict at all). The tokenizer is the
student directory's if it has one, else the teacher's; ``merge.json`` records the inputs.
Like ``longred export``, the output is ready for the Hub: ``use_cache: true``, a
``generation_config.json`` (the student's, else the teacher's, else derived from the config),
the tokenizer's ``model_max_length`` = the student's window, the base model's license files,
and ``README.md``, a model card naming both parents and alpha, with ``base_model`` in its
front matter when the teacher's Hub id can be known
(:func:`longred_pl.eval.model_card.base_model_of`).

Usage: ``longred merge STUDENT_DIR TEACHER_DIR OUT_DIR --alpha 0.5``
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from longred_pl.errors import UserError

# config keys that must agree for two checkpoints to be one architecture
ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "tie_word_embeddings",
)
# buffers computed from the config (RoPE frequencies): the student's, never interpolated
DERIVED_SUFFIXES = ("inv_freq",)


def _derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1].endswith(DERIVED_SUFFIXES)


def interpolate_state_dicts(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``alpha * student + (1 - alpha) * teacher`` for every tensor, in the student's dtype.

    Float tensors are interpolated in float32 (``alpha=1`` returns the student's values,
    ``alpha=0`` the teacher's, cast to the student's dtype). Non-float tensors must be equal
    in both and are kept; RoPE frequency buffers (``*inv_freq``) are taken from the student.

    Args:
        student: the student's state dict.
        teacher: the teacher's state dict (same keys and shapes).
        alpha: the student's share, in [0, 1].

    Raises:
        UserError: alpha outside [0, 1]; keys, shapes or integer tensors that differ.
    """
    check_alpha(alpha)
    s_keys = {k for k in student if not _derived(k)}
    t_keys = {k for k in teacher if not _derived(k)}
    if s_keys != t_keys:
        only_s, only_t = sorted(s_keys - t_keys), sorted(t_keys - s_keys)
        key, where = (only_s[0], "STUDENT") if only_s else (only_t[0], "TEACHER")
        raise UserError(
            f"state dict keys differ: {key!r} is in {where} only ({len(only_s)} keys in the "
            f"student only, {len(only_t)} in the teacher only); merge models of one architecture"
        )
    merged = {}
    for key, s in student.items():
        if _derived(key):
            merged[key] = s.detach().clone()
            continue
        t = teacher[key]
        if s.shape != t.shape:
            raise UserError(
                f"state dict shapes differ: {key!r} is {tuple(s.shape)} in STUDENT and "
                f"{tuple(t.shape)} in TEACHER; merge models of one architecture"
            )
        if not (s.is_floating_point() and t.is_floating_point()):
            if s.dtype != t.dtype or not torch.equal(s, t):
                raise UserError(
                    f"non-float tensor {key!r} ({s.dtype} / {t.dtype}) differs between STUDENT "
                    "and TEACHER; integer buffers cannot be interpolated, so they must be equal"
                )
            merged[key] = s.detach().clone()
            continue
        mixed = alpha * s.detach().float() + (1.0 - alpha) * t.detach().float()
        merged[key] = mixed.to(s.dtype)
    return merged


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float in [0, 1], else a :class:`UserError` naming ``--alpha``."""
    value = float(alpha)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UserError(
            f"--alpha: {alpha!r} is outside [0, 1]; it is the student's share (1: the student, "
            "0: the teacher's weights), e.g. --alpha 0.5"
        )
    return value


def check_same_architecture(student: Any, teacher: Any) -> None:
    """The first of :data:`ARCHITECTURE_KEYS` on which the two configs differ is an error."""
    for key in ARCHITECTURE_KEYS:
        s, t = getattr(student, key, None), getattr(teacher, key, None)
        if s != t:
            raise UserError(
                f"{key}: the architectures differ ({key}={s!r} in STUDENT, {t!r} in TEACHER); "
                "pass the model the student was trained from as TEACHER"
            )


def _student_dtype(config: Any, path: str) -> str:
    from longred_pl.models import DTYPES

    dtype = getattr(config, "dtype", None)
    if dtype is None:
        return "float32"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise UserError(
            f"STUDENT: {path!r} has dtype {name}; the merge supports {', '.join(DTYPES)} "
            "(save the student in one of them)"
        )
    return name


def _write_tokenizer(student: str, teacher: str, out: Path) -> dict[str, Any] | None:
    from longred_pl.export import VOCABULARY_FILES, copy_tokenizer, has_tokenizer

    source = next((d for d in (student, teacher) if has_tokenizer(d)), None)
    if source is None:
        print(
            f"[longred merge] warning: neither STUDENT nor TEACHER has a tokenizer (none of "
            f"{', '.join(VOCABULARY_FILES)}): {out} has weights and config only; copy the base "
            "model's tokenizer files there",
            file=sys.stderr,
        )
        return None
    return {"source": source, "files": copy_tokenizer(source, str(out))}


def write_merge_card(
    out: Path,
    student: str,
    teacher: str,
    configs: tuple[Any, Any],
    alpha: float,
    dtype: str,
    written: dict[str, Any],
    base_model: str | None = None,
) -> Path:
    """``OUT/README.md``, the model card (``model_card.render_merge_card``)."""
    from longred_pl.eval import model_card as mc

    base, where = mc.base_model_of(base_model, teacher, student)
    print(
        f"[longred merge] model card: base_model {base} (from {where})"
        if base
        else "[longred merge] model card: no base_model (the teacher's Hub id is not known: "
        "neither TEACHER nor STUDENT's card names it: merge with --base-model owner/name to add it)"
    )
    s_config, t_config = configs
    facts = {
        "name": out.name,
        "student": {
            "path": os.path.abspath(student),
            "window": int(s_config.max_position_embeddings),
            "rope": mc.rope_of(s_config),
            "card": os.path.isfile(os.path.join(student, "README.md")),
        },
        "teacher": {
            "path": os.path.abspath(teacher),
            "window": int(t_config.max_position_embeddings),
            "rope": mc.rope_of(t_config),
        },
        "alpha": alpha,
        "dtype": dtype,
        "base_model": base,
        "license": mc.license_of(teacher, student),
        **written,
    }
    card = out / "README.md"
    card.write_text(mc.render_merge_card(facts))
    return card


def _write_model(
    model: Any, student: str, teacher: str, t_config: Any, out_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """Weights with inference defaults, tokenizer, generation config and license files."""
    from longred_pl.eval.model_card import license_files
    from longred_pl.export import finish_directory, inference_config

    with inference_config(model):
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = _write_tokenizer(student, teacher, out_dir)
    license_dir = next((d for d in (teacher, student) if license_files(d)), None)
    old_window = int(t_config.max_position_embeddings)
    written = finish_directory(
        out_dir, model.config, tokenizer, [student, teacher], old_window, license_dir
    )
    return tokenizer, written


def merge_models(
    student: str,
    teacher: str,
    out: str,
    alpha: float = 0.5,
    overwrite: bool = False,
    base_model: str | None = None,
) -> Path:
    """Interpolate a trained student's weights with the original model's, as a new HF directory.

    Each tensor is ``alpha * student + (1 - alpha) * teacher`` (in float32, saved in the
    student's dtype); the config, with its RoPE settings, is the student's; the tokenizer is
    the student's, else the teacher's. ``OUT/merge.json`` records student, teacher and alpha;
    ``OUT/README.md`` is the model card. Everything is checked before anything is written.

    Args:
        student: the trained student, a Hugging Face causal-LM directory (``longred export``).
        teacher: the original model the student was trained from (its teacher_path).
        out: output directory (created; must be new or empty unless --overwrite).
        alpha: the student's share in [0, 1]: 1 gives the student, 0 the teacher's weights
            under the student's config.
        overwrite: replace a non-empty OUT whole (refused without it).
        base_model: Hub id of the base model for the card's ``base_model`` field (default:
            the teacher's, where it can be known).
    """
    from longred_pl.eval.model_card import check_base_model
    from longred_pl.models import load_causal_lm, load_config
    from longred_pl.outputs import check_output, replace_output

    alpha = check_alpha(alpha)
    check_base_model(base_model)
    s_config = load_config(student, field="STUDENT")
    t_config = load_config(teacher, field="TEACHER")
    check_same_architecture(s_config, t_config)
    out_dir = Path(out)
    check_output(out_dir, overwrite, "OUT", {"STUDENT": student, "TEACHER": teacher})
    dtype = _student_dtype(s_config, student)

    model = load_causal_lm(student, s_config, attn_implementation="eager", dtype=dtype)
    original = load_causal_lm(teacher, t_config, attn_implementation="eager", dtype="float32")
    merged = interpolate_state_dicts(model.state_dict(), original.state_dict(), alpha)
    del original
    model.load_state_dict(merged, strict=True)
    del merged

    replace_output(out_dir)  # --overwrite: nothing of what OUT held stays
    tokenizer, written = _write_model(model, student, teacher, t_config, out_dir)
    record = {
        "student": os.path.abspath(student),
        "teacher": os.path.abspath(teacher),
        "alpha": alpha,
        "dtype": dtype,
        "tokenizer": os.path.abspath(tokenizer["source"]) if tokenizer else None,
    }
    (out_dir / "merge.json").write_text(json.dumps(record, indent=2) + "\n")
    configs = (s_config, t_config)
    write_merge_card(out_dir, student, teacher, configs, alpha, dtype, written, base_model)
    print(f"[longred] merged (alpha={alpha}: student share) to {out_dir}")
    return out_dir
