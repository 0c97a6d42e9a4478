"""The loss functions of LongReD's three terms, as pure tensor functions.

Definitions checked against docs/method.md ("The recipe"), i.e. Dong et al. 2025, Sec. 3:

* ``L_long``  next-token cross-entropy on long texts (:func:`chunked_next_token_loss`);
* ``L_short`` ``sum_l (1 - mean_tokens cos(h_s[l], h_t[l]))`` over the distilled
  hidden-state indices (:func:`hidden_cosine_loss`);
* ``L_s2l``   the same cosine term on the final hidden state only, the student reading
  the text at skipped positions (also :func:`hidden_cosine_loss`, with one index).

Shape legend: B batch, T tokens, D hidden size, V vocabulary, N = B * T.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longred_pl.errors import UserError

IGNORE_INDEX = -100


def mean_cosine_distance(student_BTD: torch.Tensor, teacher_BTD: torch.Tensor) -> torch.Tensor:
    """``1 - mean over tokens of cos(student, teacher)``, computed in fp32."""
    if student_BTD.shape != teacher_BTD.shape:
        raise UserError(
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
        raise UserError("hidden_cosine_loss needs at least one layer index")
    terms = [mean_cosine_distance(student_states[i], teacher_states[i]) for i in layers]
    return torch.stack(terms).sum()


def shift_labels(
    input_ids_BT: torch.Tensor, document_ids_BT: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token targets: ``labels[:, t] = input_ids[:, t + 1]``, last one ignored.

    With ``document_ids`` (packed samples) a label never crosses a document boundary: the
    first token of a document is not predicted from the previous document's last one.
    """
    labels_BT = torch.full_like(input_ids_BT, IGNORE_INDEX)
    labels_BT[:, :-1] = input_ids_BT[:, 1:]
    if document_ids_BT is not None:
        crossing_BT = document_ids_BT[:, 1:] != document_ids_BT[:, :-1]
        labels_BT[:, :-1] = labels_BT[:, :-1].masked_fill(crossing_BT, IGNORE_INDEX)
    return labels_BT


@dataclass(frozen=True)
class LogitHead:
    """How a model turns its final hidden state into logits.

    ``logits = softcap * tanh(scale * (h @ W.T + b) / softcap)`` (no tanh when ``softcap``
    is None). Llama/Mistral/Qwen: ``scale=1``, no bias, no cap; Cohere multiplies by
    ``logit_scale``; Granite divides by ``logits_scaling``; Gemma 2/3 soft-cap with
    ``final_logit_softcapping``. ``forward.logit_head`` reads these from a model and checks
    the result against the model's own logits.
    """

    scale: float = 1.0
    softcap: float | None = None

    def logits(self, z_CV: torch.Tensor) -> torch.Tensor:
        """Logits from the raw projection ``h @ W.T + b`` (fp32 in, fp32 out)."""
        if self.scale != 1.0:
            z_CV = z_CV * self.scale
        if self.softcap is not None:
            z_CV = torch.tanh(z_CV / self.softcap) * self.softcap
        return z_CV


PLAIN_HEAD = LogitHead()


def _project(h_CD, weight_VD, bias_V):
    z_CV = (h_CD @ weight_VD.t()).float()
    return z_CV if bias_V is None else z_CV + bias_V.float()


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of ``head(hidden @ weight.T + bias)`` whose gradients are made in forward.

    Each chunk's logits live only while that chunk is processed: its loss and its
    gradients with respect to ``hidden``, ``weight`` and ``bias`` are computed at once, and
    backward only scales them. Compared with autograd over full logits this saves the
    ``[N, V]`` activations; compared with checkpointing each chunk it saves recomputing
    the logits (one ``N x V x D`` matmul) in backward. The logit transform of
    :class:`LogitHead` is differentiated exactly (``d logits / dz = scale (1 - tanh^2)``).
    """

    @staticmethod
    def forward(ctx, hidden_ND, weight_VD, bias_V, labels_N, chunk_size, head):  # type: ignore[override]
        valid_N = labels_N != IGNORE_INDEX
        count = valid_N.sum().clamp(min=1)
        weight = weight_VD.to(hidden_ND.dtype)
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden_ND) if want_h else None
        grad_weight = torch.zeros_like(weight_VD, dtype=torch.float32) if want_w else None
        grad_bias = torch.zeros_like(bias_V, dtype=torch.float32) if want_b else None
        total = hidden_ND.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden_ND.shape[0], chunk_size):
            stop = start + chunk_size
            h_CD, y_C, keep_C = hidden_ND[start:stop], labels_N[start:stop], valid_N[start:stop]
            logits_CV = head.logits(_project(h_CD, weight, bias_V))
            target_C = y_C.clamp(min=0)
            picked_C = logits_CV.gather(1, target_C[:, None]).squeeze(1)
            slope_CV = _head_slope(head, logits_CV) if (want_h or want_w or want_b) else None
            # log-sum-exp in place over the logits (torch.logsumexp would hold a second
            # [C, V] buffer): exp(z - max), its row sums, then the softmax itself
            max_C = logits_CV.amax(dim=-1)
            exp_CV = logits_CV.sub_(max_C[:, None]).exp_()
            sum_C = exp_CV.sum(dim=-1)
            lse_C = max_C + sum_C.log()
            total += ((lse_C - picked_C) * keep_C).sum()
            if not (want_h or want_w or want_b):
                continue
            # d(sum CE)/d logits = softmax - onehot, on kept rows; in place over the logits
            grad_CV = exp_CV.div_(sum_C[:, None])
            grad_CV[torch.arange(grad_CV.shape[0], device=grad_CV.device), target_C] -= 1.0
            grad_CV.mul_((keep_C.float() / count)[:, None])
            if slope_CV is not None:
                grad_CV.mul_(slope_CV)
            if grad_bias is not None:
                grad_bias += grad_CV.sum(0)
            grad_CV = grad_CV.to(h_CD.dtype)
            if grad_hidden is not None:
                grad_hidden[start:stop] = grad_CV @ weight
            if grad_weight is not None:  # accumulated in place: no second [V, D] buffer
                if h_CD.dtype == torch.float32:
                    grad_weight.addmm_(grad_CV.t(), h_CD)
                else:
                    grad_weight += (grad_CV.t() @ h_CD).float()
            # drop this chunk's [C, V] buffers before the next chunk's logits are made
            del logits_CV, exp_CV, grad_CV, slope_CV
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight_VD.dtype, None if bias_V is None else bias_V.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        # scaled in place (each is read once): no second copy of the [V, D] weight gradient
        gh = grad_hidden.mul_(grad_out.to(grad_hidden.dtype)) if grad_hidden is not None else None
        gw = grad_weight.mul_(grad_out).to(w_dtype) if grad_weight is not None else None
        gb = grad_bias.mul_(grad_out).to(b_dtype) if grad_bias is not None else None
        return gh, gw, gb, None, None, None


def _head_slope(head: LogitHead, logits_CV: torch.Tensor) -> torch.Tensor | float | None:
    """``d logits / d z`` of the head's transform (None when it is the identity)."""
    if head.softcap is not None:
        tanh_CV = logits_CV / head.softcap
        return (1.0 - tanh_CV * tanh_CV) * head.scale
    return None if head.scale == 1.0 else head.scale


def chunked_next_token_loss(
    hidden_BTD: torch.Tensor,
    lm_head_weight_VD: torch.Tensor,
    labels_BT: torch.Tensor,
    chunk_size: int = 1024,
    bias_V: torch.Tensor | None = None,
    head: LogitHead = PLAIN_HEAD,
) -> torch.Tensor:
    """Mean next-token cross-entropy from final hidden states, without full logits.

    The ``[N, V]`` logits are produced ``chunk_size`` tokens at a time and their
    gradients are formed on the spot (:class:`_ChunkedLinearCrossEntropy`), so at most
    one chunk of fp32 logits is alive at any time and nothing is recomputed in backward.
    Value and gradients equal the unchunked loss (tested).

    Args:
        hidden_BTD: final (normalised) hidden states.
        lm_head_weight_VD: the output projection's weight.
        labels_BT: target ids, already shifted (see :func:`shift_labels`); ``-100`` is ignored.
        chunk_size: tokens per chunk; ``<= 0`` computes all logits at once with autograd.
        bias_V: the output projection's bias, if it has one.
        head: the model's logit transform (scale, soft cap).

    Returns:
        Scalar mean cross-entropy over non-ignored targets.
    """
    hidden_ND = hidden_BTD.reshape(-1, hidden_BTD.shape[-1])
    labels_N = labels_BT.reshape(-1)
    if chunk_size <= 0:
        z_NV = _project(hidden_ND, lm_head_weight_VD.to(hidden_ND.dtype), bias_V)
        return F.cross_entropy(head.logits(z_NV), labels_N, ignore_index=IGNORE_INDEX)
    return _ChunkedLinearCrossEntropy.apply(
        hidden_ND, lm_head_weight_VD, bias_V, labels_N, chunk_size, head
    )


@torch.no_grad()
def chunked_token_nll(
    hidden_BTD: torch.Tensor,
    lm_head_weight_VD: torch.Tensor,
    input_ids_BT: torch.Tensor,
    chunk_size: int = 4096,
    bias_V: torch.Tensor | None = None,
    head: LogitHead = PLAIN_HEAD,
) -> torch.Tensor:
    """Per-token next-token NLL ``[B, T-1]`` in fp32, logits ``chunk_size`` positions at a time.

    The one per-token NLL of the library: validation perplexity, ``longred eval`` and the
    probes all read it.
    """
    length = input_ids_BT.shape[1]
    step = chunk_size if chunk_size > 0 else length
    weight_VD = lm_head_weight_VD.to(hidden_BTD.dtype)
    pieces = []
    for start in range(0, length - 1, step):
        stop = min(start + step, length - 1)
        logits_BCV = head.logits(_project(hidden_BTD[:, start:stop], weight_VD, bias_V))
        targets_BC = input_ids_BT[:, start + 1 : stop + 1]
        pieces.append(F.cross_entropy(logits_BCV.transpose(1, 2), targets_BC, reduction="none"))
    return torch.cat(pieces, dim=1)


def chunked_label_nll(
    hidden_BTD: torch.Tensor,
    lm_head_weight_VD: torch.Tensor,
    labels_BT: torch.Tensor,
    chunk_size: int = 4096,
    bias_V: torch.Tensor | None = None,
    head: LogitHead = PLAIN_HEAD,
) -> torch.Tensor:
    """NLL of each position's label, ``[N]`` for the ``N`` labels that are not ``-100``.

    :func:`chunked_token_nll` for labels shifted beforehand (``shift_labels``), as a
    context-parallel rank holds them: position ``t`` predicts ``labels[:, t]``.
    """
    length = labels_BT.shape[1]
    step = chunk_size if chunk_size > 0 else length
    weight_VD = lm_head_weight_VD.to(hidden_BTD.dtype)
    pieces = []
    for start in range(0, length, step):
        labels_BC = labels_BT[:, start : start + step]
        keep_BC = labels_BC != IGNORE_INDEX
        logits_NV = head.logits(
            _project(hidden_BTD[:, start : start + step][keep_BC], weight_VD, bias_V)
        )
        pieces.append(F.cross_entropy(logits_NV, labels_BC[keep_BC], reduction="none"))
    return torch.cat(pieces)
