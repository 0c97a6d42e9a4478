"""Writing the trained student as a Hugging Face directory.

The directory holds the student's weights (safetensors), its config (with the extended
``rope_parameters`` and ``max_position_embeddings``) and the teacher's tokenizer files,
so ``AutoModelForCausalLM.from_pretrained(out_dir)`` gives the long-context model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


def copy_tokenizer(src_dir: str, out_dir: str) -> list[str]:
    """Copy the tokenizer files that exist in ``src_dir``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(out_dir, name))
            copied.append(name)
    return copied


def save_student(
    module: Any, out_dir: str | os.PathLike, state: dict[str, torch.Tensor] | None = None
) -> Path:
    """Save the student with the teacher's tokenizer.

    Args:
        module: a configured ``LongReDModule``.
        out_dir: output directory (created).
        state: the student's full weights when its parameters are sharded (see
            :func:`full_student_state`); they are written through a fresh, unsharded copy.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = module.student
    if state is not None:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(module.student.config)
        model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    copy_tokenizer(module.hparams.teacher_path, str(out))
    return out


def student_state_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The student's weights in a Lightning checkpoint, keys relative to the student."""
    prefix = "student."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(
            "the checkpoint holds no 'student.' weights; is it a LongReDModule checkpoint?"
        )
    return state


def load_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning checkpoint as one dict, consolidating sharded (FSDP2/DCP) directories.

    Loads with ``weights_only=True``: no pickled code runs, whatever the file holds.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if not os.path.isdir(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    meta = os.path.join(path, "meta.pt")
    ckpt = torch.load(meta, map_location="cpu", weights_only=True) if os.path.exists(meta) else {}
    with tempfile.TemporaryDirectory() as tmp:
        merged = os.path.join(tmp, "consolidated.pt")
        dcp_to_torch_save(path, merged)
        ckpt.update(torch.load(merged, map_location="cpu", weights_only=True))
    return ckpt


def export_checkpoint(ckpt_path: str, out_dir: str) -> Path:
    """``longred export``: a LongReD checkpoint to a Hugging Face directory of the student."""
    from longred_pl.module import LongReDModule

    ckpt = load_checkpoint(ckpt_path)
    hparams = dict(ckpt["hyper_parameters"])
    hparams["method"] = "long_cpt"  # the export needs the student only: skip loading a teacher
    module = LongReDModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    module.configure_model()
    module.student.load_state_dict(student_state_from_checkpoint(ckpt), strict=True)
    return save_student(module, out_dir)


def full_student_state(module: Any) -> dict[str, torch.Tensor] | None:
    """The student's full state dict when its parameters are sharded (FSDP2), else None.

    A collective: every rank must call it. Tensors are gathered to CPU.
    """
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in module.student.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module.student, options=options)


class ExportStudent(L.Callback):
    """At the end of ``fit``, write the student as a Hugging Face directory.

    Works on one device, DDP and FSDP2 (sharded weights are gathered first; rank 0 writes).

    Args:
        dirpath: output directory (created).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = full_student_state(pl_module)
        if trainer.is_global_zero:
            out = save_student(pl_module, self.dirpath, state)
            print(f"[longred] student exported to {out}")
        trainer.strategy.barrier("export_student")
