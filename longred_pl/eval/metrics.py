"""Evaluation metrics as torchmetrics ``Metric`` classes, plus the pure math they use.

* :class:`TokenPerplexity`: ``exp(mean next-token cross-entropy)`` over all tokens seen.
* :class:`HiddenStateCosine`: per hidden-state index, the mean over tokens of
  ``cos(h_student[i], h_teacher[i])`` (the drift measure of docs/method.md, "The problem";
  index 0 = embedding output, ``n_layers`` = final normalised output).
* :class:`AttentionKL`: per decoder layer, the mean over heads and query positions of
  ``KL(teacher || student)`` between attention distributions (the paper's second drift
  measure; Dong et al. 2025, Sec. 2).

Every state is a sum (``dist_reduce_fx="sum"``), so ``compute`` after a DDP sync equals
the value over the union of all ranks' tokens, and many small updates equal one big one.

Shape legend: B batch, T tokens, V vocabulary, D hidden size, H heads, Q query
positions, K key positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric

__all__ = [
    "AttentionKL",
    "HiddenStateCosine",
    "TokenPerplexity",
    "attention_kl",
    "next_token_nll",
    "token_cosine",
]

KL_EPS = 1e-12


def next_token_nll(logits_BTV: torch.Tensor, input_ids_BT: torch.Tensor) -> torch.Tensor:
    """Per-token next-token negative log-likelihood, ``[B, T-1]``, in fp32.

    Entry ``[b, t]`` is ``-log p(input_ids[b, t+1] | input_ids[b, :t+1])``, read from
    ``logits[b, t]``.
    """
    if logits_BTV.shape[:2] != input_ids_BT.shape:
        raise ValueError(
            f"logits {tuple(logits_BTV.shape)} and input_ids {tuple(input_ids_BT.shape)} "
            f"must agree on [B, T]"
        )
    logits_BTV = logits_BTV[:, :-1].float()
    targets_BT = input_ids_BT[:, 1:]
    return F.cross_entropy(logits_BTV.transpose(1, 2), targets_BT, reduction="none")


def token_cosine(
    student_BTD: torch.Tensor, teacher_BTD: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Cosine similarity of each token's hidden state, ``[B, T]``, in fp32."""
    if student_BTD.shape != teacher_BTD.shape:
        raise ValueError(
            f"student and teacher hidden states differ in shape: "
            f"{tuple(student_BTD.shape)} vs {tuple(teacher_BTD.shape)}"
        )
    return F.cosine_similarity(student_BTD.float(), teacher_BTD.float(), dim=-1, eps=eps)


def attention_kl(
    student_BHQK: torch.Tensor, teacher_BHQK: torch.Tensor, eps: float = KL_EPS
) -> torch.Tensor:
    """``KL(teacher || student)`` of each attention row, ``[B, H, Q]``, in fp32.

    ``sum_k p_k (log p_k - log q_k)`` with ``p`` the teacher's row and ``q`` the student's.
    Both are clamped to ``eps`` inside the logs, so masked keys (``p_k = q_k = 0``, the
    causal future) contribute ``0 * finite = 0`` and a student zero under a teacher mass
    gives a large finite value instead of ``inf``. Negative values from rounding are
    clipped to 0.
    """
    if student_BHQK.shape != teacher_BHQK.shape:
        raise ValueError(
            f"student and teacher attentions differ in shape: "
            f"{tuple(student_BHQK.shape)} vs {tuple(teacher_BHQK.shape)}"
        )
    p = teacher_BHQK.float()
    q = student_BHQK.float()
    kl_BHQ = (p * (p.clamp_min(eps).log() - q.clamp_min(eps).log())).sum(dim=-1)
    return kl_BHQ.clamp_min(0.0)


def _indexed(states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor], n: int, what: str):
    """Entries ``0..n-1`` of a tuple/list or dict of per-index tensors."""
    if len(states) != n:
        raise ValueError(f"expected {n} {what}, got {len(states)}")
    return [states[i] for i in range(n)]


class TokenPerplexity(Metric):
    """Perplexity ``exp(sum NLL / tokens)`` accumulated over updates (and ranks).

    ``update`` takes per-token negative log-likelihoods (e.g. :func:`next_token_nll`) so
    long sequences never need full ``[B, T, V]`` logits in one piece.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False
    nll_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor) -> None:
        """Add per-token NLLs (any shape)."""
        self.nll_sum += nll.detach().double().sum()
        self.count += nll.numel()

    def compute_loss(self) -> torch.Tensor:
        """The mean NLL (cross-entropy) over all tokens seen, on every rank.

        Summed over ranks first, as ``compute`` is: torchmetrics syncs only ``compute``, so
        a plain method would return this rank's share alone (nested in ``compute`` the
        states are synced already and are read as they are).
        """
        synced = self._is_synced
        with self.sync_context(should_sync=not synced, should_unsync=not synced):
            return (self.nll_sum / self.count.clamp_min(1)).float()

    def compute(self) -> torch.Tensor:
        return self.compute_loss().exp()


class HiddenStateCosine(Metric):
    """Mean cosine similarity of student vs teacher hidden states, per hidden-state index.

    Args:
        num_states: number of hidden states (``n_layers + 1`` for a full
            ``hidden_states`` tuple).

    ``compute`` returns a ``[num_states]`` tensor of means over all tokens seen.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    cos_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, num_states: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        self.num_states = num_states
        zeros = torch.zeros(num_states, dtype=torch.float64)
        self.add_state("cos_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        student_states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
        teacher_states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    ) -> None:
        """Add one batch: ``num_states`` tensors ``[B, T, D]`` from each model."""
        student = _indexed(student_states, self.num_states, "student hidden states")
        teacher = _indexed(teacher_states, self.num_states, "teacher hidden states")
        sums = [token_cosine(s, t).double().sum() for s, t in zip(student, teacher, strict=True)]
        self.cos_sum += torch.stack(sums).to(self.cos_sum.device)
        self.count += student[0].shape[0] * student[0].shape[1]

    def compute(self) -> torch.Tensor:
        return (self.cos_sum / self.count.clamp_min(1)).float()


class AttentionKL(Metric):
    """Mean ``KL(teacher || student)`` of attention distributions, per decoder layer.

    Args:
        num_layers: number of decoder layers (length of a model's ``attentions`` tuple).

    The mean runs over batch, heads and query positions (every query row counts once,
    including position 0 whose single-key row always gives 0). ``compute`` returns a
    ``[num_layers]`` tensor.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False
    kl_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, num_layers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        zeros = torch.zeros(num_layers, dtype=torch.float64)
        self.add_state("kl_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", zeros.clone(), dist_reduce_fx="sum")

    def update(
        self,
        student_attentions: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
        teacher_attentions: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    ) -> None:
        """Add one batch: ``num_layers`` tensors ``[B, H, Q, K]`` (rows sum to 1) per model."""
        student = _indexed(student_attentions, self.num_layers, "student attention maps")
        teacher = _indexed(teacher_attentions, self.num_layers, "teacher attention maps")
        for layer, (s, t) in enumerate(zip(student, teacher, strict=True)):
            kl_BHQ = attention_kl(s, t)
            self.kl_sum[layer] += kl_BHQ.double().sum().to(self.kl_sum.device)
            self.count[layer] += kl_BHQ.numel()

    def compute(self) -> torch.Tensor:
        return (self.kl_sum / self.count.clamp_min(1)).float()
