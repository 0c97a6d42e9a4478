"""The three LongReD objectives as pure tensor functions.

Definitions checked against LONGRED.md ("The recipe"), i.e. Dong et al. 2025, Sec. 3:

* ``L_long``  next-token cross-entropy on long texts (:func:`chunked_next_token_loss`);
* ``L_short`` ``sum_l (1 - mean_tokens cos(h_s[l], h_t[l]))`` over the distilled
  hidden-state indices (:func:`hidden_cosine_loss`);
* ``L_s2l``   the same cosine term on the final hidden state only, the student reading
  the text at skipped positions (also :func:`hidden_cosine_loss`, with one index).

Shape legend: B batch, T tokens, D hidden size, V vocabulary, N = B * T.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def mean_cosine_distance(student_BTD: torch.Tensor, teacher_BTD: torch.Tensor) -> torch.Tensor:
    """``1 - mean over tokens of cos(student, teacher)``, computed in fp32."""
    if student_BTD.shape != teacher_BTD.shape:
        raise ValueError(
            f"student and teacher hidden states differ in shape: "
            f"{tuple(student_BTD.shape)} vs {tuple(teacher_BTD.shape)}"
        )
    cos_BT = F.cosine_similarity(student_BTD.float(), teacher_BTD.float(), dim=-1, eps=1e-8)
    return 1.0 - cos_BT.mean()


def hidden_cosine_loss(
    student_states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    teacher_states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
    layers: Sequence[int],
) -> torch.Tensor:
    """Sum over ``layers`` of the mean cosine distance between hidden states.

    Args:
        student_states: the student's hidden states, indexable by hidden-state index
            (0 = embedding output, n_layers = final normalised output), either the full
            ``hidden_states`` tuple of a Hugging Face model or a dict holding only the
            captured indices.
        teacher_states: the teacher's, indexed the same way.
        layers: hidden-state indices to distil; must be non-empty.

    Returns:
        A scalar tensor ``sum_l (1 - mean cos(h_s[l], h_t[l]))``.
    """
    if len(layers) == 0:
        raise ValueError("hidden_cosine_loss needs at least one layer index")
    terms = [mean_cosine_distance(student_states[i], teacher_states[i]) for i in layers]
    return torch.stack(terms).sum()


def _ce_sum(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    logits_NV = (hidden_ND @ weight_VD.t()).float()
    return F.cross_entropy(logits_NV, labels_N, reduction="sum", ignore_index=IGNORE_INDEX)


def shift_labels(input_ids_BT: torch.Tensor) -> torch.Tensor:
    """Next-token targets: ``labels[:, t] = input_ids[:, t + 1]``, last one ignored."""
    labels_BT = torch.full_like(input_ids_BT, IGNORE_INDEX)
    labels_BT[:, :-1] = input_ids_BT[:, 1:]
    return labels_BT


def chunked_next_token_loss(
    hidden_BTD: torch.Tensor,
    lm_head_weight_VD: torch.Tensor,
    labels_BT: torch.Tensor,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Mean next-token cross-entropy from final hidden states, without full logits.

    The ``[N, V]`` logits are produced ``chunk_size`` tokens at a time, and each chunk is
    recomputed in the backward pass (activation checkpointing), so at most one chunk of
    fp32 logits is alive at any time. Value and gradients equal the unchunked loss.

    Args:
        hidden_BTD: final (normalised) hidden states.
        lm_head_weight_VD: the output projection's weight.
        labels_BT: target ids, already shifted (see :func:`shift_labels`); ``-100`` is ignored.
        chunk_size: tokens per chunk; ``<= 0`` computes all logits at once.

    Returns:
        Scalar mean cross-entropy over non-ignored targets.
    """
    hidden_ND = hidden_BTD.reshape(-1, hidden_BTD.shape[-1])
    labels_N = labels_BT.reshape(-1)
    count = (labels_N != IGNORE_INDEX).sum().clamp(min=1)
    if chunk_size <= 0 or hidden_ND.shape[0] <= chunk_size:
        return _ce_sum(hidden_ND, lm_head_weight_VD, labels_N) / count
    total = hidden_ND.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden_ND.shape[0], chunk_size):
        stop = start + chunk_size
        total = total + checkpoint(
            _ce_sum,
            hidden_ND[start:stop],
            lm_head_weight_VD,
            labels_N[start:stop],
            use_reentrant=False,
        )
    return total / count


@torch.no_grad()
def chunked_token_nll(
    hidden_BTD: torch.Tensor, lm_head_weight_VD: torch.Tensor, input_ids_BT: torch.Tensor, chunk_size: int = 4096
) -> torch.Tensor:
    """Per-token next-token NLL ``[B, T-1]`` in fp32, logits ``chunk_size`` positions at a time."""
    length = input_ids_BT.shape[1]
    step = chunk_size if chunk_size > 0 else length
    pieces = []
    for start in range(0, length - 1, step):
        stop = min(start + step, length - 1)
        logits_BCV = (hidden_BTD[:, start:stop] @ lm_head_weight_VD.t()).float()
        targets_BC = input_ids_BT[:, start + 1 : stop + 1]
        pieces.append(F.cross_entropy(logits_BCV.transpose(1, 2), targets_BC, reduction="none"))
    return torch.cat(pieces, dim=1)
