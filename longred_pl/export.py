"""Writing the trained student as a Hugging Face directory, with its model card.

The directory holds the student's weights (safetensors), its config (with the extended
``rope_parameters`` and ``max_position_embeddings``), the tokenizer files (the teacher's, or
``--tokenizer DIR``'s) and ``README.md``, the model card (:mod:`longred_pl.eval.model_card`),
so ``AutoModelForCausalLM.from_pretrained(out_dir)`` gives the long-context model and the
Hub shows how it was made. Inference defaults are restored (:func:`finish_directory`):
``use_cache: true`` in ``config.json`` (training turns the KV cache off), a
``generation_config.json`` (the teacher's, else derived from the config's token ids), the
tokenizer's ``model_max_length`` = the new window, and the teacher's license files.

Nothing is silent: a teacher directory without tokenizer files gives a one-line warning
naming it and the fix (the weights are still written: they are what the run paid for, and
the end-of-fit export must not fail a finished run); ``--tokenizer DIR`` without one is an
error. A checkpoint that cannot be read (truncated by an interrupted save, not a checkpoint)
is a :class:`UserError` naming the file and the run's other checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from longred_pl import _lightning_private
from longred_pl.batches import CHECKPOINT_KEY
from longred_pl.errors import UserError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# any one of these makes a tokenizer (the others only configure one)
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def has_tokenizer(directory: str) -> bool:
    """Whether ``directory`` holds a tokenizer's vocabulary (not just its settings)."""
    return any(os.path.isfile(os.path.join(directory, n)) for n in VOCABULARY_FILES)


def copy_tokenizer(src_dir: str, out_dir: str) -> list[str]:
    """Copy the tokenizer files that exist in ``src_dir``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(out_dir, name))
            copied.append(name)
    return copied


def check_tokenizer_dir(directory: str, vocab_size: int) -> None:
    """``--tokenizer DIR``: a tokenizer is there and its ids fit the model's embeddings."""
    if not has_tokenizer(directory):
        raise UserError(
            f"--tokenizer: {directory!r} has no tokenizer ({', '.join(VOCABULARY_FILES)}); "
            "point it at the base model's directory"
        )
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(directory, local_files_only=True))
    if size > vocab_size:
        raise UserError(
            f"--tokenizer: {directory!r} has {size} tokens, more than the model's vocab_size "
            f"{vocab_size}; it is not this model's tokenizer"
        )


def set_tokenizer_window(out: str | os.PathLike, window: int) -> bool:
    """``model_max_length`` = ``window`` in ``out/tokenizer_config.json`` (created with that key
    alone when the tokenizer has none); ``False`` when ``out`` holds no tokenizer."""
    if not has_tokenizer(str(out)):
        return False
    path = Path(out) / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config["model_max_length"] = int(window)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return True


@contextmanager
def inference_config(model: Any) -> Iterator[Any]:
    """``model.config.use_cache = True`` while the model is saved (training turns it off)."""
    before = getattr(model.config, "use_cache", None)
    model.config.use_cache = True
    try:
        yield model
    finally:
        model.config.use_cache = before


def write_generation_config(
    out: str | os.PathLike,
    config: Any,
    sources: Sequence[str | None],
    old_window: int | None = None,
) -> str:
    """``out/generation_config.json``: the first of ``sources`` that has one, else derived
    from ``config`` (its bos/eos/pad token ids); returns where it came from, in words.

    A copied ``max_length`` equal to ``old_window`` (the base model's window) becomes the new
    one (``config.max_position_embeddings``); any other value is kept.
    """
    target = Path(out) / "generation_config.json"
    for source in sources:
        path = Path(source) / "generation_config.json" if source else None
        if path is None or not path.is_file():
            continue
        settings = json.loads(path.read_text())
        if old_window is not None and settings.get("max_length") == old_window:
            settings["max_length"] = int(config.max_position_embeddings)
        target.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return f"copied from `{Path(source).name}`"
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(config).save_pretrained(out)
    ids = ", ".join(
        f"{key} {getattr(config, key, None)}"
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    )
    return f"derived from `config.json` ({ids})"


def copy_license_files(source: str | os.PathLike | None, out: str | os.PathLike) -> list[str]:
    """Copy ``source``'s license files (``LICENSE*``, ``NOTICE*``, ``USE_POLICY*``) to ``out``."""
    from longred_pl.eval.model_card import license_files

    names = license_files(source) if source else []
    for name in names:
        shutil.copy2(os.path.join(source, name), os.path.join(out, name))
    return names


def finish_directory(
    out: Path,
    config: Any,
    tokenizer: dict[str, Any] | None,
    generation_sources: Sequence[str | None],
    old_window: int | None,
    license_source: str | None,
) -> dict[str, Any]:
    """The inference defaults and license files of a written model directory (export, merge):
    the tokenizer's window, ``generation_config.json``, the base model's license files.

    Returns ``{"tokenizer", "generation", "license_files"}`` for the model card. (``use_cache``
    is set in ``config.json`` by saving under :func:`inference_config`.)
    """
    window = int(config.max_position_embeddings)
    if tokenizer is not None and set_tokenizer_window(out, window):
        files = list(dict.fromkeys([*tokenizer["files"], "tokenizer_config.json"]))
        tokenizer = {**tokenizer, "files": files, "max_length": window}
    return {
        "tokenizer": tokenizer,
        "generation": write_generation_config(out, config, generation_sources, old_window),
        "license_files": copy_license_files(license_source, out),
    }


def _write_tokenizer(source: str, out: Path) -> dict[str, Any] | None:
    if not has_tokenizer(source):
        print(
            f"[longred export] warning: no tokenizer in {source!r} (the run's teacher_path; none "
            f"of {', '.join(VOCABULARY_FILES)}): {out} has weights and config only; export "
            f"with --tokenizer DIR (the base model's tokenizer) or copy its files there",
            file=sys.stderr,
        )
        return None
    return {"source": str(source), "files": copy_tokenizer(source, str(out))}


def save_student(
    module: Any,
    out_dir: str | os.PathLike,
    state: dict[str, torch.Tensor] | None = None,
    tokenizer: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Save the student with a tokenizer and inference defaults (:func:`finish_directory`).

    Returns the directory and ``{"tokenizer": {"source", "files", "max_length"} | None,
    "generation": where generation_config.json came from, "license_files": [...]}``.

    Args:
        module: a configured ``LongReDModule``.
        out_dir: output directory (created).
        state: the student's full weights when its parameters are sharded (see
            :func:`full_student_state`); they are written through a fresh, unsharded copy.
        tokenizer: directory to copy the tokenizer from (default the teacher's).
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
    with inference_config(model):
        model.save_pretrained(out, safe_serialization=True)
    teacher = str(module.hparams.teacher_path)
    written = _write_tokenizer(tokenizer or teacher, out)
    old_window = int(module.teacher_config.max_position_embeddings)
    sources = [teacher, tokenizer]
    return out, finish_directory(out, model.config, written, sources, old_window, teacher)


def student_state_from_checkpoint(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The student's weights in a Lightning checkpoint, keys relative to the student."""
    prefix = "student."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise UserError(
            "the checkpoint holds no 'student.' weights; is it a LongReDModule checkpoint?"
        )
    return state


def _others(path: str) -> str:
    """The run's other checkpoints, ``last.ckpt`` first, for an error message."""
    folder = Path(path).resolve().parent
    here = Path(path).resolve()
    others = sorted(
        (p for p in folder.glob("*.ckpt") if p.resolve() != here and p.stat().st_size > 0),
        key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime),
    )
    if not others:
        return f"no other .ckpt in {folder}: use a checkpoint of another run or re-train"
    return "use another checkpoint of the run, e.g. " + ", ".join(str(p) for p in others[:3])


def load_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning checkpoint as one dict, consolidating sharded (FSDP1/FSDP2, DCP) directories.

    Loads with ``weights_only=True``: no pickled code runs, whatever the file holds. A file
    that is not a readable checkpoint is a :class:`UserError` naming it and the fix.
    """
    if not os.path.exists(path):
        raise UserError(f"CKPT: {path!r} does not exist; pass a .ckpt file or sharded directory")
    try:
        ckpt = _load(path)
    except Exception as err:  # noqa: BLE001  (truncated zip, bad pickle, short read: all alike)
        detail = str(err).splitlines()[0][:120] if str(err) else "ended early"
        raise UserError(
            f"CKPT: {path} is not a readable checkpoint: truncated (an interrupted save or "
            f"copy) or not a checkpoint at all ({type(err).__name__}: {detail}); {_others(path)}"
        ) from err
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise UserError(
            f"CKPT: {path} is not a LongReDModule checkpoint (no hyper_parameters/state_dict); "
            "pass a checkpoint written by `longred fit`"
        )
    return ckpt


def _load(path: str) -> dict[str, Any]:
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
    if "state_dict" not in ckpt and isinstance(ckpt.get("model"), dict):
        ckpt["state_dict"] = ckpt.pop("model")  # FSDPStrategy (FSDP1) names the weights "model"
    return ckpt


def _run_from_checkpoint(ckpt: dict[str, Any], path: str, run_config: str | None) -> dict:
    from longred_pl.eval import model_card as mc
    from longred_pl.eval.model_card import find_run_config, streams_from

    teacher = ckpt["hyper_parameters"].get("teacher_path")
    config = run_config or find_run_config(path, teacher)
    if run_config is not None and not os.path.isfile(run_config):
        raise UserError(f"--run-config: {run_config!r} is not a file; pass the run's config.yaml")
    data = next(
        (v for k, v in ckpt.items() if k.endswith("DataModule") and isinstance(v, dict)), {}
    )
    streams = streams_from(ckpt, config)
    where = "the checkpoint" if ckpt.get("datamodule_hyper_parameters") else config
    seen = ckpt.get(CHECKPOINT_KEY)
    if seen and not seen.get("library", True):
        print(
            f"[longred export] model card: data from {seen.get('source')} (not "
            f"MixedLengthDataModule): streams and tokens as the module counted them"
        )
    else:
        print(f"[longred export] model card: stream settings from {where or 'nowhere (not found)'}")
    steps = ckpt.get("global_step")
    validation = None
    if config:
        validation = mc.validation_from_csv(Path(config).parent / "metrics.csv", steps)
    return {
        "steps": steps,
        "micro_steps": data.get("consumed"),
        "world_size": data.get("world_size"),
        "schedule": data.get("schedule"),
        "streams": streams,
        "streams_from": where,
        "seen": seen,
        "checkpoint": str(path),
        "root": mc.run_root(path),
        "config": config,
        "optimization": mc.optimization_from_config(mc.read_run_config(config)),
        "validation": validation or mc.validation_from_checkpoint(ckpt),
    }


def write_card(
    module: Any,
    out: Path,
    run: dict[str, Any],
    written: dict[str, Any],
    eval_results: Sequence[str] | None = None,
    base_model: str | None = None,
) -> Path:
    """``out/README.md``: the model card (:func:`longred_pl.eval.model_card.render_card`).

    ``written``: what :func:`save_student` returns beside the directory.
    """
    from longred_pl.eval import model_card as mc

    teacher = str(module.hparams.teacher_path)
    base, where = mc.base_model_of(base_model, teacher)
    print(
        f"[longred export] model card: base_model {base} (from {where})"
        if base
        else "[longred export] model card: no base_model (the teacher's Hub id is not known: "
        "export with --base-model owner/name to add it)"
    )
    paths = list(eval_results or []) or mc.find_eval_results(str(out))
    for path in paths:
        print(f"[longred export] model card: evaluation from {path}")
    facts = mc.card_facts(module, run)
    facts.update(name=out.name, base_model=base)
    names = {
        str(out.resolve()): f"{out.name} (this model)",
        str(Path(teacher).resolve()): f"{mc.base_name(facts)} (base model)",
    }
    facts.update(
        license=mc.license_of(teacher),
        evaluation=[(p, mc.eval_markdown(p, names)) for p in paths],
        out=str(out),
        **written,
    )
    card = out / "README.md"
    card.write_text(mc.render_card(facts))
    return card


EXPORT_RECORD = "export.json"


def checkpoint_identity(ckpt_path: str) -> dict[str, Any]:
    """What makes a checkpoint this one: its absolute path, size and modification time
    (of ``.metadata`` for a sharded checkpoint directory)."""
    path = Path(ckpt_path).resolve()
    stamp = path / ".metadata" if path.is_dir() else path
    if not stamp.exists():
        return {"checkpoint": str(path)}
    stat = stamp.stat()
    return {"checkpoint": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _recorded_source(out_dir: str) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out_dir) / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return None


def export_checkpoint(
    ckpt_path: str,
    out_dir: str,
    tokenizer: str | None = None,
    eval_results: list[str] | None = None,
    run_config: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A LongReD checkpoint to a Hugging Face directory of the student, with its model card.

    ``OUT/export.json`` records which checkpoint the directory holds. Exporting the same
    checkpoint again updates OUT in place (e.g. to add ``OUT/eval`` results to the card);
    a non-empty OUT of anything else is refused unless ``--overwrite``, which replaces it
    whole (its evaluations scored other weights).

    Args:
        ckpt_path: Lightning checkpoint (.ckpt) or sharded checkpoint directory of a run.
        out_dir: output directory (created).
        tokenizer: directory of the tokenizer to ship (default the run's teacher_path).
        eval_results: ``longred eval`` results.json / ``longred lm-eval`` lm_eval.json or
            ruler.json for the card (default: those found beside ``out_dir`` that scored it).
        run_config: the run's config.yaml, for the card's data section (default: found near
            the checkpoint).
        base_model: Hub id of the base model for the card's ``base_model`` field.
        overwrite: replace a non-empty OUT that holds another export (or anything else).
    """
    from longred_pl.eval.model_card import check_base_model, eval_markdown
    from longred_pl.module import LongReDModule
    from longred_pl.outputs import check_output, replace_output

    check_base_model(base_model)
    source = checkpoint_identity(ckpt_path)
    same = _recorded_source(out_dir) == source
    target = check_output(out_dir, overwrite or same, "OUT", {"the checkpoint": ckpt_path})

    for path in eval_results or []:  # checked before any weights load
        if not os.path.isfile(path):
            raise UserError(f"--eval-results: {path!r} is not a file")
        eval_markdown(path)
    ckpt = load_checkpoint(ckpt_path)
    hparams = dict(ckpt["hyper_parameters"])
    method = hparams.get("method", "longred")
    hparams["method"] = "long_cpt"  # the export needs the student only: skip loading a teacher
    module = LongReDModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    if tokenizer is not None:
        check_tokenizer_dir(tokenizer, int(module.student_config.vocab_size))
    run = _run_from_checkpoint(ckpt, ckpt_path, run_config)
    module.configure_model()
    module.student.load_state_dict(student_state_from_checkpoint(ckpt), strict=True)
    if not same:
        replace_output(target)
    out, written = save_student(module, target, tokenizer=tokenizer)
    (out / EXPORT_RECORD).write_text(json.dumps(source, indent=1) + "\n")
    module.hparams["method"] = method  # the card describes the run's recipe
    write_card(module, out, run, written, eval_results, base_model)
    print(f"[longred] exported to {out} (model card: {out / 'README.md'})")
    return out


def full_student_state(module: Any) -> dict[str, torch.Tensor] | None:
    """The student's full state dict when its parameters are sharded (FSDP1, FSDP2), else None.

    A collective: every rank must call it. Tensors are gathered to CPU (under FSDP1 on
    rank 0 only: the other ranks get an empty dict).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.tensor import DTensor

    trainer = _lightning_private.attached_trainer(module)
    root = getattr(getattr(trainer, "strategy", None), "model", None)
    if isinstance(root, FSDP):  # FSDPStrategy: one root unit over the LightningModule
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType

        # on a CPU run, "offloading" frees the gathered weights under the clone (segfault)
        on_gpu = next(root.parameters()).device.type != "cpu"
        config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
        with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
            state = root.state_dict()
        prefix = "student."
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not any(isinstance(p, DTensor) for p in module.student.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module.student, options=options)


def _run_from_trainer(trainer: L.Trainer, log_dir: str | None) -> dict[str, Any]:
    """The card's run record from a live trainer, its data module and its log directory
    (``trainer.log_dir``: a collective, so read on every rank by the caller)."""
    from longred_pl.eval import model_card as mc

    data = getattr(trainer, "datamodule", None)
    streams = {
        k: {name: getattr(c, name) for name in ("urls", "seq_len", "batch_size")}
        for k, c in (getattr(data, "streams", None) or {}).items()
    }
    logs = Path(log_dir) if log_dir else None
    config = logs / "config.yaml" if logs and (logs / "config.yaml").is_file() else None
    validation = mc.validation_from_csv(logs / "metrics.csv", None) if logs else None
    contract = getattr(trainer.lightning_module, "batch_contract", None)
    return {
        "steps": trainer.global_step,
        "micro_steps": getattr(data, "consumed", None),
        "world_size": trainer.world_size,
        "schedule": list(getattr(data, "schedule", [])),
        "streams": streams,
        "streams_from": "the run's data module" if streams else None,
        "seen": contract.record() if contract is not None and contract.started else None,
        "root": trainer.default_root_dir,
        "config": str(config) if config else None,
        "optimization": mc.optimization_from_config(mc.read_run_config(config))
        or mc.optimization_from_trainer(trainer),
        "validation": validation or mc.validation_from_metrics(trainer.callback_metrics),
    }


class ExportStudent(L.Callback):
    """At the end of ``fit``, write the student as a Hugging Face directory with its card.

    Works on one device, DDP, FSDP1 and FSDP2 (sharded weights are gathered first; rank 0
    writes).

    Args:
        dirpath: output directory (created).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = full_student_state(pl_module)
        log_dir = trainer.log_dir  # a broadcast: every rank
        if trainer.is_global_zero:
            out, written = save_student(pl_module, self.dirpath, state)
            write_card(pl_module, out, _run_from_trainer(trainer, log_dir), written)
            print(f"[longred] student exported to {out}")
        trainer.strategy.barrier("export_student")
