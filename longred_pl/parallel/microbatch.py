"""This rank's part of a micro-batch: the whole sequence, or its context-parallel shard.

Without context parallelism (CP) every rank reads whole sequences and
:func:`rank_view` / :func:`token_mean` change nothing, so the cp=1 path is exactly the
plain one. Under ``longred_pl.parallel.ContextParallelStrategy`` the ranks of one CP
group read the same micro-batch; each keeps its head-tail shard of the tokens, of the
position ids (contiguous or skipped, drawn on the whole sequence first) and of the
next-token labels (shifted on the whole sequence first), and each token-mean loss is
turned into this rank's share of the group's mean (``parallel/sharding.py`` proves the
gradients equal the unsharded run's).

At cp=1 nothing of torch's private context-parallel API runs (``_torch_private`` resolves
it at the first ring call).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from longred_pl import _lightning_private
from longred_pl.losses import shift_labels
from longred_pl.parallel.ring_attention import context_parallel_group
from longred_pl.parallel.sharding import cp_token_mean, label_count, shard_batch, shard_sequence
from longred_pl.parallel.strategy import parallel_layout
from longred_pl.positions import document_position_ids


@dataclass(frozen=True)
class Layout:
    """A process's data-parallel (and context-parallel) coordinates."""

    dp_rank: int = 0
    dp_size: int = 1
    cp_rank: int = 0
    cp_size: int = 1
    cp_group: Any = None


def layout_of(trainer: Any) -> Any:
    """The Trainer's layout: every rank data-parallel unless the mesh has a CP dimension."""
    mesh = _lightning_private.device_mesh(getattr(trainer, "strategy", None))
    if mesh is not None and "context_parallel" in (mesh.mesh_dim_names or ()):
        return parallel_layout(trainer)
    return Layout(int(getattr(trainer, "global_rank", 0)), int(getattr(trainer, "world_size", 1)))


def rank_view(
    input_ids_BT: torch.Tensor,
    position_ids_BT: torch.Tensor | None,
    layout: Any,
    document_ids_BT: torch.Tensor | None = None,
) -> dict[str, Any]:
    """``input_ids``, ``position_ids`` (None = contiguous, unsharded only), shifted ``labels``
    and, under CP, ``targets``: this rank's count of labels that count (for :func:`token_mean`).

    With ``document_ids`` (a packed sample read with document masks) positions restart at
    each document (unless given) and no label crosses a document boundary; ``packed`` says
    so to the forward (``forward.run_model``), which then lets transformers confine
    attention to each document (cp=1: it reads restarting positions as packed sequences)
    or the CP attention read the ids (``parallel.document_attention``).
    """
    packed = document_ids_BT is not None
    if packed and position_ids_BT is None:
        position_ids_BT = document_position_ids(document_ids_BT)
    labels_BT = shift_labels(input_ids_BT, document_ids_BT)
    if layout.cp_size == 1:
        return {
            "input_ids": input_ids_BT,
            "position_ids": position_ids_BT,
            "labels": labels_BT,
            "targets": label_count(labels_BT) if packed else None,
            "packed": packed,
        }
    view = shard_batch(input_ids_BT, layout.cp_rank, layout.cp_size, position_ids_BT, False)
    view["labels"] = shard_sequence(labels_BT, layout.cp_rank, layout.cp_size)
    return {**view, "targets": label_count(view["labels"]), "packed": packed}


def token_mean(local_mean: torch.Tensor, count: Any, layout: Any) -> torch.Tensor:
    """This rank's share of a token mean over its CP group (``local_mean`` at cp=1)."""
    if layout.cp_size == 1:
        return local_mean
    return cp_token_mean(local_mean, count, layout.cp_group)


def unsharded(layout: Any) -> Any:
    """A context in which attention runs unsharded (validation reads whole sequences)."""
    if layout.cp_size == 1:
        return contextlib.nullcontext()
    return context_parallel_group(None)
