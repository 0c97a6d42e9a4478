"""``LongReDModule``: restoration distillation while extending the context window.

Reads like the objective of docs/method.md (Dong et al. 2025, Sec. 3)::

    L = L_long + short_weight * L_short + s2l_weight * L_s2l

Each micro-batch comes from one stream (the data module's schedule), so one
``training_step`` computes one weighted term, chosen by the objective's registry entry
(``methods.METHODS``: ``longred`` and the baselines ``long_cpt`` / ``mix_cpt``); Lightning
accumulates the micro-steps of an optimizer step. The three terms are the methods
:meth:`L_long`, :meth:`L_short` and :meth:`L_s2l`.

Each concern has a room of its own: :mod:`teacher`, :mod:`forward` (the one forward
path), :mod:`checks`, :mod:`batches` (the batch contract of a user's own DataLoader, checked at
every batch; the batches read, counted for the model card), :mod:`callbacks` (metrics, NaN guard,
bar), :mod:`sequence` (context parallelism), :mod:`validation`, :mod:`models` (loading, sharding).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from longred_pl import _lightning_private, checks, positions, rope
from longred_pl.batches import CHECKPOINT_KEY, BatchContract
from longred_pl.forward import logit_head, run_model
from longred_pl.fsdp import (
    clip_grad_norm,
    matrix_parameter_names,
    placement,
    prepare_strategy,
    wrap_teacher,
)
from longred_pl.losses import (
    chunked_label_nll,
    chunked_next_token_loss,
    chunked_token_nll,
    hidden_cosine_loss,
)
from longred_pl.methods import default_distill_layers, get_method, param_groups, published_adamw
from longred_pl.models import load_config, load_student
from longred_pl.parallel.document_attention import set_document_ids
from longred_pl.parallel.microbatch import Layout, layout_of, rank_view, token_mean, unsharded
from longred_pl.stats import StepStats
from longred_pl.teacher import FrozenTeacher
from longred_pl.validation import HeldOutPerplexity

DType = Literal["float32", "bfloat16", "float16"]

# The frozen teacher is in eval mode by design: Lightning would warn at every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# Under FSDPStrategy configure_model wraps student and teacher with the strategy's own wrap
# policy (fsdp.py); Lightning then warns that the policy "will be ignored", which it is not.
warnings.filterwarnings(
    "ignore", message=r"A FSDP `auto_wrap_policy` is set, but the model is already wrapped"
)


class LongReDModule(L.LightningModule):
    """Student + frozen teacher, trained with the LongReD objective.

    Args:
        teacher_path: local Hugging Face directory of the original (short-window) model.
        method: the objective (``methods.METHODS``): ``longred`` (the paper's), or the
            baselines ``long_cpt`` / ``mix_cpt``.
        rope_method: how the student's RoPE is extended (``rope.ROPE_METHODS``).
        target_length: the student's context window (must exceed the teacher's).
        rope_kwargs: extra parameters of the RoPE method, e.g. ``{"rope_theta": 2e7}``.
        distill_layers: hidden-state indices for ``L_short`` (0 = embeddings,
            n_layers = final normed output); default layer 1 and the final one.
        short_weight: ``a1``, weight of ``L_short`` (published 5).
        s2l_weight: ``a2``, weight of ``L_s2l`` (published 10).
        s2l_positions: skipped-position scheme for s2l samples (``positions.POSITION_SCHEMES``).
        position_kwargs: extra parameters of that scheme (checked against its signature).
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2`` (CUDA).
        dtype: the student's weights' dtype when loaded; keep ``float32`` with ``bf16-mixed``.
        teacher_dtype: the frozen teacher's dtype; default ``bfloat16`` under a bf16
            precision (the student computes in bf16; half the memory), else ``dtype``.
        loss_chunk_size: tokens per chunk of the next-token loss (logits never materialised
            for the whole sequence; under context parallelism each rank takes its 1/cp share
            of a chunk); ``0`` computes them at once.
        gradient_checkpointing: recompute the student's decoder layers in backward.
        trust_remote_code: allow custom modelling code in the model directory.
        seed: seeds the skipped position ids (per micro-step and rank, so resumes agree).
        max_skipped_steps: an optimizer step whose loss is NaN/Inf on any micro-step is
            skipped with a warning; this many in a row stop the run.
        optimizer: factory ``params -> Optimizer``; default the published AdamW.
        lr_scheduler: factory ``optimizer -> LRScheduler`` stepped every optimizer step;
            default constant learning rate (published).
    """

    def __init__(
        self,
        teacher_path: str,
        method: str = "longred",
        rope_method: str = "abf",
        target_length: int = 32768,
        rope_kwargs: dict[str, Any] | None = None,
        distill_layers: list[int] | None = None,
        short_weight: float = 5.0,
        s2l_weight: float = 10.0,
        s2l_positions: str = "cream",
        position_kwargs: dict[str, Any] | None = None,
        attn_implementation: str = "sdpa",
        dtype: DType = "float32",
        teacher_dtype: DType | None = None,
        loss_chunk_size: int = 1024,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        seed: int = 0,
        max_skipped_steps: int = 3,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.objective = get_method(method)
        checks.check_settings(short_weight, s2l_weight, max_skipped_steps, loss_chunk_size)
        self.weights = self.objective.weights(short_weight=short_weight, s2l_weight=s2l_weight)
        self.teacher_config = load_config(teacher_path, trust_remote_code)
        self.student_config = rope.extend_rope(
            self.teacher_config, rope_method, target_length, **(rope_kwargs or {})
        )
        self.n_layers = int(self.teacher_config.num_hidden_layers)
        self.distill_layers = checks.distill_layers(
            distill_layers, self.n_layers, default_distill_layers(self.n_layers)
        )
        self.position_scheme = positions.get_position_scheme(s2l_positions)
        positions.check_position_kwargs(s2l_positions, position_kwargs or {})
        self.optimizer_factory = optimizer or published_adamw
        self.scheduler_factory = lr_scheduler
        self.student: nn.Module | None = None
        self._hold_teacher(None)
        self.heldout = HeldOutPerplexity()
        self.step_stats = StepStats()
        self.layout = Layout()  # set in setup: data/context-parallel coordinates
        self.batch_contract = BatchContract()  # the batches read: checks and counts

    # ------------------------------------------------------------------ models
    @property
    def teacher(self) -> FrozenTeacher | None:
        """The frozen teacher, held but not registered (``longred_pl.teacher`` docstring)."""
        return self.__dict__["_frozen_teacher"]

    def _hold_teacher(self, teacher: FrozenTeacher | None) -> None:
        object.__setattr__(self, "_frozen_teacher", teacher)  # not a submodule, on purpose

    def _apply(self, fn: Any, recurse: bool = True) -> LongReDModule:
        """``to`` / ``cuda`` / ``float`` ... reach the held teacher too."""
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    def setup(self, stage: str) -> None:
        """Cross-check data, schedule and trainer against the models before loading them."""
        self.layout = layout_of(self.trainer)
        checks.check_run(self, getattr(self.trainer, "datamodule", None), self.trainer)
        self.batch_contract.start(self, self.trainer, stage)
        prepare_strategy(self.trainer.strategy)

    def configure_model(self) -> None:
        """Build student and teacher where the strategy wants them (``fsdp.placement``).

        Called by the Trainer inside the strategy's context. Under FSDP2 no rank ever holds
        a whole model: each is built without weights, sharded, and filled with this rank's
        rows (``loading``). Loading reads whole sequences even under context parallelism
        (the load-time logit check is a forward of 8 tokens on each model).
        """
        if self.student is not None:
            return
        hp, where = self.hparams, placement(self)
        with unsharded(self.layout):
            student = load_student(
                hp.teacher_path,
                self.student_config,
                hp.attn_implementation,
                hp.dtype,
                hp.trust_remote_code,
                hp.gradient_checkpointing,
                where,
            )
            teacher = None
            if self.objective.needs_teacher:
                teacher = FrozenTeacher.load(
                    hp.teacher_path,
                    self.teacher_config,
                    hp.attn_implementation,
                    self.teacher_dtype(),
                    hp.trust_remote_code,
                    where,
                )
        self.student_head = logit_head(student)
        self.matrix_names = matrix_parameter_names(student)  # weight decay; FSDP1 flattens
        self.student = student
        if teacher is not None:
            teacher.model = wrap_teacher(self, teacher.model)
            self._hold_teacher(teacher)  # moved by _apply, or already on its device

    def teacher_dtype(self) -> str:
        """``model.teacher_dtype``, else bf16 where the student computes in bf16, else ``dtype``.

        The teacher is never updated: under ``bf16-mixed`` its forward is bf16 anyway, and
        holding it in bf16 halves its memory.
        """
        if self.hparams.teacher_dtype:
            return self.hparams.teacher_dtype
        trainer = _lightning_private.attached_trainer(self)
        precision = str(getattr(trainer, "precision", "") or "")
        return "bfloat16" if precision.startswith("bf16") else self.hparams.dtype

    # ------------------------------------------------------------------- terms
    def L_long(self, batch: dict[str, Any]) -> torch.Tensor:  # noqa: N802 (the paper's name)
        """Next-token cross-entropy of the student at contiguous positions."""
        documents = batch.get("document_ids")  # packed samples read with document masks
        view = rank_view(batch["input_ids"], None, self.layout, documents)

        def loss(hidden_BTD, weight_VD, bias_V):
            return chunked_next_token_loss(
                hidden_BTD, weight_VD, view["labels"], self.loss_chunk(), bias_V, self.student_head
            )

        ids, pos = view["input_ids"], view["position_ids"]
        local = run_model(self.student, ids, (), pos, loss, packed=view["packed"])[1]
        return token_mean(local, view["targets"], self.layout)

    def L_short(self, batch: dict[str, Any]) -> torch.Tensor:  # noqa: N802
        """``sum_l (1 - cos)`` of the distilled layers' hidden states vs the teacher's."""
        documents = batch.get("document_ids")  # packed samples read with document masks
        return self.distill(batch["input_ids"], self.distill_layers, None, documents)

    def L_s2l(self, batch: dict[str, Any]) -> torch.Tensor:  # noqa: N802
        """``1 - cos`` of the final hidden state, the student reading skipped positions."""
        return self.distill(batch["input_ids"], [self.n_layers], self.s2l_position_ids(batch))

    def distill(
        self,
        input_ids_BT: torch.Tensor,
        layers: list[int],
        student_pos_BT: Any,
        document_ids_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The teacher reads contiguous positions; the student ``student_pos_BT`` (or contiguous).

        With ``document_ids`` both read each document of the packed sample on its own.
        """
        teacher, student = (
            rank_view(input_ids_BT, p, self.layout, document_ids_BT) for p in (None, student_pos_BT)
        )
        teacher_states = self.teacher.hidden_states(
            teacher["input_ids"], layers, teacher["position_ids"], packed=teacher["packed"]
        )
        student_states, _ = run_model(
            self.student,
            student["input_ids"],
            layers,
            student["position_ids"],
            packed=student["packed"],
        )
        local = hidden_cosine_loss(student_states, teacher_states, layers)
        return token_mean(local, student["input_ids"].numel(), self.layout)

    def loss_chunk(self) -> int:
        """Tokens per chunk of the LM-head loss on this rank: ``loss_chunk_size`` of the whole
        sequence, each of the ``cp`` ranks that share it taking its share (so the ``[chunk,
        vocab]`` logits buffer shrinks with ``cp`` like the activations)."""
        chunk = int(self.hparams.loss_chunk_size)
        return -(-chunk // self.layout.cp_size) if chunk > 0 else 0

    def s2l_position_ids(self, batch: dict[str, Any]) -> torch.Tensor:
        """Skipped ids for an s2l micro-batch from (seed, micro-step, data-parallel rank).

        The ranks of one context-parallel group share the sequence, hence its ids.
        """
        hp = self.hparams
        return positions.batch_position_ids(
            batch,
            self.position_scheme,
            hp.target_length,
            hp.seed,
            self.layout.dp_rank,
            hp.position_kwargs or {},
        )

    # ---------------------------------------------------------------- training
    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weighted term, unweighted term)`` of one micro-batch, per the objective."""
        kind = batch["kind"]
        term_name = self.objective.term_for(kind, self.hparams.method)
        term = getattr(self, term_name)(batch)  # L_long | L_short | L_s2l
        return self.weights[kind] * term, term

    def check_batch(self, batch: Any, split: str = "train") -> str:
        """The batch contract (``batches.BatchContract``): its kind, else a one-line UserError."""
        if not self.batch_contract.started:  # a hook called outside a Trainer's setup
            trainer = _lightning_private.attached_trainer(self)
            self.batch_contract.start(self, trainer, "")
        return self.batch_contract.check(batch, split)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Check the batch before ``training_step`` (``StreamMetrics`` leaves a bad one to it)."""
        self.check_batch(batch, "train")

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.check_batch(batch, "validation")

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.check_batch(batch, "test")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # the micro-batch's document ids (None: no masks) for the CP attention; they hold
        # until the next micro-step, so activation recomputation in backward sees them too
        set_document_ids(batch.get("document_ids"))
        loss, term = self.compute_loss(batch)
        self.step_stats.add(batch["kind"], loss.detach(), term.detach(), batch["input_ids"].numel())
        self.batch_contract.add(batch["kind"], batch["input_ids"])
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Without ``MixedLengthDataModule``: the step's mix of streams, checked (warnings)."""
        self.batch_contract.step_done(int(self.trainer.global_step))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The batches trained, per stream, and where they came from (the model card reads it)."""
        checkpoint[CHECKPOINT_KEY] = self.batch_contract.record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.batch_contract.restore(checkpoint.get(CHECKPOINT_KEY))

    def configure_callbacks(self) -> list[L.Callback]:
        """Per-stream metrics, the non-finite-step guard and (if a bar is shown) the step bar."""
        from longred_pl.callbacks import callbacks_for

        return callbacks_for(self, self.trainer)

    # -------------------------------------------------------------- validation
    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Token-weighted perplexity of the student (and, on short text, the teacher).

        Under context parallelism each rank reads its head-tail shard of the sequence, as in
        training: summed over the group's ranks, every token counts once.
        """
        input_ids, kind, documents = batch["input_ids"], batch["kind"], batch.get("document_ids")
        set_document_ids(documents)
        self.heldout.update(kind, self.token_nll(input_ids, documents=documents))
        if kind == "short" and self.teacher is not None:
            nll = self.token_nll(input_ids, teacher=True, documents=documents)
            self.heldout.update("short_teacher", nll)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """``longred test``: the validation metrics on the held-out streams, as ``test/``."""
        self.validation_step(batch, batch_idx, dataloader_idx)

    @torch.no_grad()
    def token_nll(
        self,
        input_ids_BT: torch.Tensor,
        teacher: bool = False,
        documents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token NLLs of the student (or the teacher), computed inside its forward.

        ``[B, T-1]`` for whole sequences; under context parallelism, or with ``documents``
        (packed samples: no label crosses a document), the ``N`` NLLs of the labels that
        count in this rank's view (``parallel.microbatch.rank_view``).
        """
        model, head = (
            (self.teacher.model, self.teacher.head)
            if teacher
            else (self.student, self.student_head)
        )
        chunk = self.loss_chunk()
        if self.layout.cp_size == 1 and documents is None:

            def nll(hidden_BTD, weight_VD, bias_V):
                return chunked_token_nll(hidden_BTD, weight_VD, input_ids_BT, chunk, bias_V, head)

            out = run_model(model, input_ids_BT, (), None, nll)[1]
        else:
            view = rank_view(input_ids_BT, None, self.layout, documents)

            def nll(hidden_BTD, weight_VD, bias_V):
                return chunked_label_nll(hidden_BTD, weight_VD, view["labels"], chunk, bias_V, head)

            ids, pos = view["input_ids"], view["position_ids"]
            out = run_model(model, ids, (), pos, nll, packed=view["packed"])[1]
        if teacher:
            self.teacher.reshard()
        return out

    def teardown(self, stage: str) -> None:
        """Clear the last micro-batch's document ids (a later generate reads no stale ones)."""
        set_document_ids(None)

    def on_validation_epoch_end(self) -> None:
        self.heldout.log_and_reset(self, "val")

    def on_test_epoch_end(self) -> None:
        self.heldout.log_and_reset(self, "test")

    # --------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        """The optimizer over the student only (no weight decay on norms and biases)."""
        optimizer = self.optimizer_factory(param_groups(self.student, self.matrix_names))
        if self.scheduler_factory is None:
            return optimizer
        schedule = {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by norm with the sharding's own norm (FSDP1, FSDP2); log ``train/grad_norm``.

        The logged norm is the student's whole gradient before clipping, over all ranks.
        ``gradient_clip_algorithm: value`` is left to Lightning.
        """
        if gradient_clip_algorithm == "value":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        norm = clip_grad_norm(self, gradient_clip_val or None)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
