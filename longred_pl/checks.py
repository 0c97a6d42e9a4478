"""Checks of a run's settings, made before any model weight is loaded.

``LongReDModule.__init__`` checks its own settings (:func:`check_settings`,
:func:`distill_layers`); ``LongReDModule.setup`` calls :func:`check_run`, which compares
the module with the data module and the trainer: the precision, stream lengths and vocabulary
(the data module's ``check_model``), the streams the objective consumes, the accumulation against
the schedule's period, and the skipped-position scheme against the s2l length. Every
failure is a :class:`~longred_pl.errors.UserError` naming the field and the fix. Without
``MixedLengthDataModule`` (a user's own DataLoader) the checks that need its settings run
from the batches instead (:mod:`longred_pl.batches`).
"""

from __future__ import annotations

from typing import Any

from longred_pl import positions
from longred_pl.errors import UserError


def check_settings(
    short_weight: float, s2l_weight: float, max_skipped_steps: int, loss_chunk_size: int
) -> None:
    """Single-field checks of ``LongReDModule``'s numbers."""
    for name, value in (("short_weight", short_weight), ("s2l_weight", s2l_weight)):
        if value < 0:
            raise UserError(f"model.{name} must be >= 0, got {value}")
    if max_skipped_steps < 1:
        raise UserError(f"model.max_skipped_steps must be >= 1, got {max_skipped_steps}")
    if loss_chunk_size < 0:
        raise UserError(
            f"model.loss_chunk_size must be >= 0 (0 = no chunking), got {loss_chunk_size}"
        )


def distill_layers(layers: list[int] | None, n_layers: int, default: list[int]) -> list[int]:
    """The sorted distilled hidden-state indices, each in ``[0, n_layers]``."""
    chosen = default if layers is None else sorted(set(layers))
    bad = [i for i in chosen if not 0 <= i <= n_layers]
    if bad or not chosen:
        raise UserError(
            f"model.distill_layers: indices {bad or chosen} are outside [0, {n_layers}] "
            f"(0 = embeddings, {n_layers} = final normed output of this {n_layers}-layer teacher)"
        )
    return chosen


def check_run(module: Any, datamodule: Any, trainer: Any) -> None:
    """Cross-checks of module, data module and trainer (see the module docstring)."""
    hp = module.hparams
    check_precision(str(getattr(trainer, "precision", "32-true")))
    check_mesh(getattr(module, "device_mesh", None))
    if datamodule is not None and hasattr(datamodule, "check_model"):
        datamodule.check_model(
            teacher_window=int(module.teacher_config.max_position_embeddings),
            target_length=int(hp.target_length),
            vocab_size=int(module.teacher_config.vocab_size),
            method=hp.method,
        )
    check_context_parallel(module.layout, hp.attn_implementation, datamodule)
    schedule = list(getattr(datamodule, "schedule", None) or [])
    if not schedule:
        return
    check_streams(hp.method, module.objective.streams, schedule)
    check_accumulation(int(getattr(trainer, "accumulate_grad_batches", 1)), schedule)
    uses_s2l = module.objective.terms.get("s2l", ("",))[0] == "L_s2l"
    if uses_s2l and "s2l" in schedule:
        seq_len = int(datamodule.streams["s2l"].seq_len)
        positions.check_scheme_fits(
            hp.s2l_positions, seq_len, int(hp.target_length), hp.position_kwargs or {}
        )


def check_streams(method: str, consumed: frozenset[str], schedule: list[str]) -> None:
    """Every stream in the schedule must be one the objective consumes."""
    extra = sorted(set(schedule) - consumed)
    if extra:
        keep = [k for k in schedule if k in consumed]
        raise UserError(
            f"model.method={method!r} trains on the streams {sorted(consumed)} only, but "
            f"data.schedule has {extra} micro-steps; use data.schedule: {keep or ['long']} "
            f"or another model.method"
        )


def check_accumulation(accumulate: int, schedule: list[str]) -> None:
    """One optimizer step must cover whole periods of the schedule.

    Otherwise steps see different mixes of the streams (the published weights assume the
    16-step period), and a step without an s2l micro-step would have no ``train/loss_s2l``.
    """
    period = len(schedule)
    if accumulate % period:
        raise UserError(
            f"trainer.accumulate_grad_batches={accumulate} does not cover whole periods of "
            f"data.schedule ({period} micro-steps: {schedule}); set "
            f"trainer.accumulate_grad_batches: {period} (or a multiple of it)"
        )


def check_precision(precision: str) -> None:
    """Refuse 16-bit "true" precision: no fp32 master weights, RoPE frequencies in 16 bits.

    Lightning's ``bf16-true`` / ``16-true`` cast the whole module, buffers included. RoPE
    ``inv_freq`` keeps 8 significant bits, so the rotation angle ``p * inv_freq`` drifts:
    for Llama-3's frequencies (theta 500000, head dim 128) by up to 59 rad at position
    32768 and 15 rad at 8192 (computed). AdamW moves a weight by about ``lr`` per step, and
    in bf16 ``0.01 + 2e-5 == 0.01``: the published lr's updates round away. ``bf16-mixed``
    keeps fp32 weights (bf16 compute); ``model.teacher_dtype: bfloat16`` halves the teacher.
    """
    if precision in ("bf16-true", "16-true"):
        raise UserError(
            f"trainer.precision={precision} casts the student's weights and RoPE inv_freq to "
            f"16 bits (no fp32 master weights: small AdamW updates round away; rotation angles "
            f"at long positions off by radians); use trainer.precision: bf16-mixed, and "
            f"model.teacher_dtype: bfloat16 for a 16-bit teacher"
        )


def check_mesh(mesh: Any) -> None:
    """Under ``ModelParallelStrategy`` every rank must be on the data-parallel dimension.

    Its defaults (``data_parallel_size`` = nodes, ``tensor_parallel_size`` = devices per
    node) put the GPUs of a node on ``tensor_parallel``; the library applies no tensor
    parallelism, so those ranks would each train their own unsynchronised copy.
    """
    if mesh is None or "tensor_parallel" not in (mesh.mesh_dim_names or ()):
        return
    tp = int(mesh["tensor_parallel"].size())
    if tp > 1:
        dp = int(mesh["data_parallel"].size())
        raise UserError(
            f"trainer.strategy: the ModelParallelStrategy mesh is data_parallel={dp} x "
            f"tensor_parallel={tp}, but longred_pl shards with FSDP2 over data_parallel only: "
            f"the tensor_parallel ranks would train separate, unsynchronised copies; set "
            f"trainer.strategy.init_args.data_parallel_size: {dp * tp} and tensor_parallel_size: 1"
        )


def check_context_parallel(layout: Any, attn_implementation: str, datamodule: Any) -> None:
    """Under CP: the ring attention, and every training stream's length splittable."""
    if layout.cp_size == 1:
        return
    if attn_implementation != "longred_ring":
        raise UserError(
            f"model.attn_implementation={attn_implementation!r} attends within one shard only "
            f"under context parallelism ({layout.cp_size} ranks share each sequence); set "
            f"model.attn_implementation: longred_ring"
        )
    from longred_pl.parallel import check_cp_length

    for kind, cfg in (getattr(datamodule, "streams", None) or {}).items():
        check_cp_length(int(cfg.seq_len), layout.cp_size, field=f"data.{kind}.seq_len")
