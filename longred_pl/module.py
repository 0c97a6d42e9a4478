"""``LongReDModule``: restoration distillation while extending the context window.

Reads like the objective of LONGRED.md (Dong et al. 2025, Sec. 3)::

    L = L_long + short_weight * L_short + s2l_weight * L_s2l

Each micro-batch comes from one stream (the data module's schedule), so one
``training_step`` computes one of the three terms; Lightning accumulates them over the
micro-steps of an optimizer step. Baselines: ``long_cpt`` (only ``L_long``) and
``mix_cpt`` (next-token loss on every stream, contiguous positions).

The teacher is loaded from ``teacher_path`` in ``configure_model``, frozen, kept in eval
mode, left out of the optimizer, and left out of checkpoints (it is re-loaded from its
path). It never runs its LM head during training. The baselines load no teacher.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from longred_pl import positions, rope
from longred_pl.eval.metrics import TokenPerplexity
from longred_pl.models import (
    capture_hidden_states,
    freeze,
    load_causal_lm,
    load_config,
    shard_fsdp2,
)
from longred_pl.objectives import (
    chunked_next_token_loss,
    chunked_token_nll,
    hidden_cosine_loss,
    shift_labels,
)
from longred_pl.stats import StepStats

Method = Literal["longred", "long_cpt", "mix_cpt"]

# The frozen teacher is in eval mode by design; Lightning warns about it at every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def default_distill_layers(n_layers: int) -> list[int]:
    """Layer 1 and the final state: the two ends the paper always distils (LONGRED.md)."""
    return sorted({1, n_layers}) if n_layers > 1 else [n_layers]


def published_adamw(params: Iterable[Any]) -> torch.optim.Optimizer:
    """The published optimizer: AdamW, lr 2e-5, betas (0.9, 0.95), weight decay 0.1."""
    return torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1)


class LongReDModule(L.LightningModule):
    """Student + frozen teacher, trained with the LongReD objective.

    Args:
        teacher_path: local Hugging Face directory of the original (short-window) model.
        method: ``longred`` (the paper's), or the baselines ``long_cpt`` / ``mix_cpt``.
        rope_method: how the student's RoPE is extended (``rope.ROPE_METHODS``).
        target_length: the student's context window (must exceed the teacher's).
        rope_kwargs: extra parameters of the RoPE method, e.g. ``{"rope_theta": 2e7}``.
        distill_layers: hidden-state indices for ``L_short`` (0 = embeddings,
            n_layers = final normed output); default layer 1 and the final one.
        short_weight: ``a1``, weight of ``L_short`` (published 5).
        s2l_weight: ``a2``, weight of ``L_s2l`` (published 10).
        s2l_positions: skipped-position scheme for s2l samples (``positions.POSITION_SCHEMES``).
        position_kwargs: extra parameters of that scheme.
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2`` (CUDA).
        dtype: the student's weights' dtype when loaded; keep ``float32`` with ``bf16-mixed``.
        teacher_dtype: the frozen teacher's dtype (default: ``dtype``); ``bfloat16`` halves
            its memory, it is never updated.
        loss_chunk_size: tokens per chunk of the next-token loss (logits never materialised
            for the whole sequence); ``0`` computes them at once.
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
        method: Method = "longred",
        rope_method: str = "abf",
        target_length: int = 32768,
        rope_kwargs: dict[str, Any] | None = None,
        distill_layers: list[int] | None = None,
        short_weight: float = 5.0,
        s2l_weight: float = 10.0,
        s2l_positions: str = "cream",
        position_kwargs: dict[str, Any] | None = None,
        attn_implementation: str = "sdpa",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        teacher_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
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
        if method not in ("longred", "long_cpt", "mix_cpt"):
            raise ValueError(f"model.method must be longred, long_cpt or mix_cpt, got {method!r}")
        if max_skipped_steps < 1:
            raise ValueError(f"model.max_skipped_steps must be >= 1, got {max_skipped_steps}")
        for name, value in (("short_weight", short_weight), ("s2l_weight", s2l_weight)):
            if value < 0:
                raise ValueError(f"model.{name} must be >= 0, got {value}")
        self.teacher_config = load_config(teacher_path, trust_remote_code)
        self.student_config = rope.extend_rope(
            self.teacher_config, rope_method, target_length, **(rope_kwargs or {})
        )
        self.n_layers = int(self.teacher_config.num_hidden_layers)
        self.distill_layers = self._check_layers(distill_layers)
        self.position_scheme = positions.get_position_scheme(s2l_positions)
        self.optimizer_factory = optimizer or published_adamw
        self.scheduler_factory = lr_scheduler
        self.student: nn.Module | None = None
        self.teacher: nn.Module | None = None
        self.val_ppl = nn.ModuleDict(
            {k: TokenPerplexity() for k in ("short", "short_teacher", "long")}
        )
        self.step_stats = StepStats()
        self.skipped_steps = 0
        self.nonfinite_streak = 0

    def _check_layers(self, layers: list[int] | None) -> list[int]:
        chosen = default_distill_layers(self.n_layers) if layers is None else sorted(set(layers))
        bad = [i for i in chosen if not 0 <= i <= self.n_layers]
        if bad or not chosen:
            raise ValueError(
                f"model.distill_layers: indices {bad or chosen} are outside [0, {self.n_layers}] "
                f"(0 = embeddings, {self.n_layers} = final normed output of this "
                f"{self.n_layers}-layer teacher)"
            )
        return chosen

    # ------------------------------------------------------------------ models
    def setup(self, stage: str) -> None:
        """Cross-check the data against the models before any weights are loaded."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "check_model"):
            datamodule.check_model(
                teacher_window=int(self.teacher_config.max_position_embeddings),
                target_length=int(self.hparams.target_length),
                vocab_size=int(self.teacher_config.vocab_size),
                method=self.hparams.method,
            )

    def configure_model(self) -> None:
        """Load teacher and student (called by the Trainer, inside the strategy's context)."""
        if self.student is not None:
            return
        hp = self.hparams
        self.student = load_causal_lm(
            hp.teacher_path,
            self.student_config,
            hp.attn_implementation,
            hp.dtype,
            hp.trust_remote_code,
        )
        if hp.gradient_checkpointing:
            self.student.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.student.config.use_cache = False
        if hp.method == "longred":
            teacher_dtype = hp.teacher_dtype or hp.dtype
            teacher = load_causal_lm(
                hp.teacher_path,
                self.teacher_config,
                hp.attn_implementation,
                teacher_dtype,
                hp.trust_remote_code,
            )
            self.teacher = freeze(teacher)
            self.teacher.register_state_dict_post_hook(_drop_own_keys)
            self.teacher.register_load_state_dict_post_hook(_forgive_own_missing_keys)
        mesh = self._data_parallel_mesh()
        if mesh is not None:
            param_dtype = torch.bfloat16 if str(self.trainer.precision).startswith("bf16") else None
            for model in (self.student, self.teacher):
                if model is not None:
                    shard_fsdp2(model, mesh, param_dtype)

    def _data_parallel_mesh(self) -> Any:
        """The data-parallel mesh under ``ModelParallelStrategy`` (FSDP2), else None."""
        try:
            mesh = self.device_mesh
        except (AttributeError, RuntimeError):
            return None
        if mesh is None:
            return None
        return mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh

    def train(self, mode: bool = True) -> LongReDModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # -------------------------------------------------------------- objectives
    def next_token_loss(
        self,
        model: nn.Module,
        input_ids_BT: torch.Tensor,
        position_ids_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``L_long``: next-token cross-entropy, chunked over the vocabulary projection."""
        hidden_BTD = self.hidden_states(model, input_ids_BT, [self.n_layers], position_ids_BT)[
            self.n_layers
        ]
        head = model.get_output_embeddings()
        return chunked_next_token_loss(
            hidden_BTD, head.weight, shift_labels(input_ids_BT), self.hparams.loss_chunk_size
        )

    def distill_loss(
        self,
        input_ids_BT: torch.Tensor,
        layers: list[int],
        student_position_ids_BT: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sum_l (1 - cos)`` between student and teacher hidden states ``layers``.

        The teacher always reads contiguous positions; the student reads
        ``student_position_ids_BT`` (skipped positions for ``L_s2l``) or contiguous ones.
        """
        with torch.no_grad():
            teacher_states = self.hidden_states(self.teacher, input_ids_BT, layers)
        student_states = self.hidden_states(
            self.student, input_ids_BT, layers, student_position_ids_BT
        )
        return hidden_cosine_loss(student_states, teacher_states, layers)

    @staticmethod
    def hidden_states(
        model: nn.Module,
        input_ids_BT: torch.Tensor,
        indices: list[int],
        position_ids_BT: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Hidden states ``indices`` of ``model`` (see ``models.capture_hidden_states``).

        The model's own forward runs, so that sharding wrappers (FSDP2 ``fully_shard``) see
        their hooks, but with ``logits_to_keep=1``: the LM head projects one position only.
        """
        # An explicit all-ones mask: without it transformers reads any gap in position_ids
        # as the start of a new packed sequence and blocks attention across it (NOTES.md).
        mask_BT = torch.ones_like(input_ids_BT) if position_ids_BT is not None else None
        with capture_hidden_states(model, indices) as states:
            model(
                input_ids=input_ids_BT,
                position_ids=position_ids_BT,
                attention_mask=mask_BT,
                use_cache=False,
                logits_to_keep=1,
            )
        if not torch.is_grad_enabled():
            _reshard(model)
        return states

    def s2l_position_ids(self, batch: dict[str, Any]) -> torch.Tensor:
        """Skipped ids for an s2l micro-batch, drawn from (seed, micro-step, rank)."""
        if batch.get("position_ids") is not None:
            return batch["position_ids"]
        input_ids = batch["input_ids"]
        gen = torch.Generator().manual_seed(
            _mix(self.hparams.seed, int(batch.get("index", 0)), self.global_rank)
        )
        ids = self.position_scheme(
            input_ids.shape[0],
            input_ids.shape[1],
            self.hparams.target_length,
            generator=gen,
            **(self.hparams.position_kwargs or {}),
        )
        return ids.to(input_ids.device)

    def compute_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weighted loss to optimise, unweighted term for logging)`` of one micro-batch."""
        kind, input_ids = batch["kind"], batch["input_ids"]
        if kind == "long" or self.hparams.method == "mix_cpt":
            term = self.next_token_loss(self.student, input_ids)
            return term, term
        if self.hparams.method == "long_cpt":
            raise ValueError(
                f"model.method=long_cpt trains on the long stream only, got a {kind!r} batch; use a long-only data.schedule"
            )
        if kind == "short":
            term = self.distill_loss(input_ids, self.distill_layers)
            return self.hparams.short_weight * term, term
        if kind == "s2l":
            term = self.distill_loss(input_ids, [self.n_layers], self.s2l_position_ids(batch))
            return self.hparams.s2l_weight * term, term
        raise ValueError(f"unknown batch kind {kind!r}; expected long, short or s2l")

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, term = self.compute_loss(batch)
        self.step_stats.add(batch["kind"], loss.detach(), term.detach(), batch["input_ids"].numel())
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.step_stats.start(self.device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_stats.stop(batch["kind"])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the step's means; skip the update if any micro-step's loss was not finite."""
        metrics = self.step_stats.metrics()
        bad = self.step_stats.nonfinite_kinds()
        self.step_stats.reset()
        if self.trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._skip_step(optimizer, bad)
        else:
            self.nonfinite_streak = 0
        metrics["train/skipped_steps"] = float(self.skipped_steps)
        metrics["train/bad_shards"] = float(getattr(self.trainer.datamodule, "bad_shards", 0))
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=True)
        if "train/loss" in metrics:
            self.log("loss", metrics["train/loss"], on_step=True, prog_bar=True, logger=False)

    def _skip_step(self, optimizer: torch.optim.Optimizer, kinds: list[str]) -> None:
        optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves weights alone
        self.skipped_steps += 1
        self.nonfinite_streak += 1
        where = f"stream(s) {kinds or ['(another rank)']} at optimizer step {self.global_step}"
        if self.nonfinite_streak >= self.hparams.max_skipped_steps:
            raise FloatingPointError(
                f"non-finite loss in {where}, {self.nonfinite_streak} steps in a row; stopping. "
                f"Lower the learning rate, check the data of that stream, or resume from the "
                f"last checkpoint (model.max_skipped_steps sets how many are tolerated)"
            )
        rank_zero_warn(f"non-finite loss in {where}: update skipped ({self.skipped_steps} so far)")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["longred"] = {
            "skipped_steps": self.skipped_steps,
            "nonfinite_streak": self.nonfinite_streak,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("longred", {})
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))

    # -------------------------------------------------------------- validation
    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Token-weighted perplexity of the student (and, on short text, the teacher)."""
        input_ids, kind = batch["input_ids"], batch["kind"]
        self.val_ppl[kind].update(self.token_nll(self.student, input_ids))
        if kind == "short" and self.teacher is not None:
            self.val_ppl["short_teacher"].update(self.token_nll(self.teacher, input_ids))

    @torch.no_grad()
    def token_nll(self, model: nn.Module, input_ids_BT: torch.Tensor) -> torch.Tensor:
        hidden_BTD = self.hidden_states(model, input_ids_BT, [self.n_layers])[self.n_layers]
        weight = model.get_output_embeddings().weight
        return chunked_token_nll(hidden_BTD, weight, input_ids_BT, self.hparams.loss_chunk_size)

    def on_validation_epoch_end(self) -> None:
        """``val/loss_*``, ``val/ppl_*`` and ``val/ppl_retention`` (teacher ppl / student ppl)."""
        losses = {}
        for name, metric in self.val_ppl.items():
            if metric.update_called:
                losses[name] = float(metric.compute_loss())
                self.log(f"val/loss_{name}", losses[name])
                self.log(f"val/ppl_{name}", math.exp(min(losses[name], 50.0)))
            metric.reset()
        if "short" in losses and "short_teacher" in losses:
            self.log("val/ppl_retention", math.exp(losses["short_teacher"] - losses["short"]))

    # --------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for param in self.student.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _reshard(model: nn.Module) -> None:
    """Free an FSDP2 root's gathered weights after a forward without backward.

    FSDP2 keeps the root unit (embeddings, final norm, LM head) gathered after forward,
    expecting a backward; the frozen teacher never has one, so without this its root
    stays unsharded for the whole run.
    """
    reshard = getattr(model, "reshard", None)
    if callable(reshard):
        reshard()


def _mix(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (no Python hash randomisation)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (
            (1 << 64) - 1
        )
    return value >> 1


def _drop_own_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook: the teacher writes nothing into checkpoints."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _forgive_own_missing_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """Load post-hook: the teacher's weights are absent from checkpoints by design."""
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith("teacher.")]
