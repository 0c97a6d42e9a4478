"""Splitting a batch over a context-parallel group, and token means over that group.

Head-tail (zigzag) load balancing: a sequence of ``T`` tokens is cut into ``2 cp`` equal
chunks and rank ``r`` keeps chunks ``r`` and ``2cp-1-r`` (concatenated in that order), so
under a causal mask every rank attends to the same number of (query, key) pairs. This is
the layout torch's ring algorithm expects (``ring_attention.py``).

Labels are shifted on the whole sequence *before* sharding (``objectives.shift_labels``):
the last token of each chunk keeps its next-token target, which lives on another rank;
only the global last position is ``-100``.

Token means over the group (gradient rule, proved by ``tests/integration/test_cp_attention``):
a loss term that is a mean over tokens, ``L = S / N`` with ``S = sum_r S_r`` and
``N = sum_r n_r``, is computed on rank ``r`` as ``cp * S_r / N`` (:func:`cp_token_mean`):
the token counts are all-reduced (integers, no gradient) and the local sum is divided by
the global count. Summed over the group this is ``cp * L``; the data-parallel gradient
reduction (FSDP2 reduce-scatter / DDP all-reduce, an average over every rank of the
flattened (dp, cp) mesh) divides by ``cp`` again, so each parameter receives exactly the
gradient of the unsharded ``L``. Its mean over the group (what ``self.log(...,
sync_dist=True)`` reports) is ``L`` itself. No collective runs in backward.

Shape legend: B batch, T tokens of the whole sequence, S = T / cp tokens of one rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longred_pl.errors import UserError
from longred_pl.losses import IGNORE_INDEX, shift_labels


def check_cp_length(seq_len: int, cp_size: int, field: str = "seq_len") -> None:
    """Refuse a sequence length that does not split into ``2 * cp_size`` equal chunks.

    Raises:
        UserError: naming ``field`` and the nearest valid lengths below and above.
    """
    if cp_size < 1:
        raise UserError(f"context_parallel_size must be >= 1, got {cp_size}")
    step = 2 * cp_size
    if seq_len >= step and seq_len % step == 0:
        return
    below, above = (seq_len // step) * step, (seq_len // step + 1) * step
    nearest = f"{below} or {above}" if below > 0 else f"{above}"
    raise UserError(
        f"{field}={seq_len} does not split into 2 x context_parallel_size = {step} equal "
        f"chunks; use a multiple of {step}, e.g. {nearest}"
    )


def chunk_indices(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two chunks (of ``2 * cp_size``) that rank ``cp_rank`` holds: ``(r, 2cp-1-r)``."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank {cp_rank} outside [0, {cp_size})")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def shard_sequence(x_BT: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1) -> torch.Tensor:
    """Rank ``cp_rank``'s head-tail shard ``x_BS`` of ``x_BT`` along ``dim``."""
    check_cp_length(x_BT.shape[dim], cp_size, field=f"sequence length (dim {dim})")
    chunks = x_BT.chunk(2 * cp_size, dim=dim)
    head, tail = chunk_indices(cp_rank, cp_size)
    return torch.cat([chunks[head], chunks[tail]], dim=dim)


def unshard_sequence(shards: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`shard_sequence`: ``shards[r]`` is rank ``r``'s shard."""
    cp_size = len(shards)
    chunks: list[torch.Tensor | None] = [None] * (2 * cp_size)
    for rank, shard in enumerate(shards):
        head, tail = chunk_indices(rank, cp_size)
        chunks[head], chunks[tail] = shard.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)  # type: ignore[arg-type]


def gather_sequence(x_BS: torch.Tensor, group: dist.ProcessGroup, dim: int = 1) -> torch.Tensor:
    """All-gather the group's shards and reassemble the whole sequence (no gradient)."""
    shards = [torch.empty_like(x_BS) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shards, x_BS.contiguous(), group=group)
    return unshard_sequence(shards, dim=dim)


def shard_batch(
    input_ids_BT: torch.Tensor,
    cp_rank: int,
    cp_size: int,
    position_ids_BT: torch.Tensor | None = None,
    with_labels: bool = False,
    field: str = "input_ids",
) -> dict[str, torch.Tensor]:
    """This rank's part of a micro-batch, ready for the model's forward.

    Args:
        input_ids_BT: the whole micro-batch (identical on every rank of the CP group).
        cp_rank: rank within the CP group.
        cp_size: size of the CP group.
        position_ids_BT: positions (contiguous or skipped); ``None`` means ``0..T-1``.
            They are always returned: the model must not infer ``0..S-1`` from the shard.
        with_labels: also return next-token ``labels``, shifted before sharding.
        field: name used in the error for a length that does not split.

    Returns:
        ``input_ids``, ``position_ids``, an all-ones ``attention_mask`` and, if asked,
        ``labels``; each ``[B, S]``. The mask is ignored under CP (``ring_attention``);
        it is there so that the same batch also runs unsharded (cp=1, sdpa), where
        transformers would otherwise read position gaps as packed-sequence boundaries.
    """
    check_cp_length(input_ids_BT.shape[1], cp_size, field=field)
    if position_ids_BT is None:
        position_ids_BT = torch.arange(input_ids_BT.shape[1], device=input_ids_BT.device)
        position_ids_BT = position_ids_BT.expand_as(input_ids_BT)
    out = {
        "input_ids": shard_sequence(input_ids_BT, cp_rank, cp_size),
        "position_ids": shard_sequence(position_ids_BT, cp_rank, cp_size),
    }
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if with_labels:
        out["labels"] = shard_sequence(shift_labels(input_ids_BT), cp_rank, cp_size)
    return out


def label_count(labels_BS: torch.Tensor) -> torch.Tensor:
    """Number of targets that count (``!= -100``), as an int64 scalar."""
    return (labels_BS != IGNORE_INDEX).sum()


def cp_token_mean(
    local_mean: torch.Tensor, local_count: int | torch.Tensor, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """This rank's share of a token mean over the CP group, scaled for gradient averaging.

    Returns ``cp * local_mean * n_r / N`` with ``N`` the all-reduced token count: its sum
    over the group is ``cp`` times the group's token mean, and the data-parallel gradient
    average divides that ``cp`` back out (module docstring). With no group (or a group of
    one) it returns ``local_mean`` unchanged.

    Args:
        local_mean: mean over this rank's ``local_count`` tokens (differentiable).
        local_count: tokens behind ``local_mean`` (labels ``!= -100``, or ``B * S``).
        group: the CP process group.
    """
    if group is None or dist.get_world_size(group) == 1:
        return local_mean
    count = torch.as_tensor(local_count, dtype=torch.float64, device=local_mean.device)
    total = count.clone()
    dist.all_reduce(total, group=group)
    scale = dist.get_world_size(group) * count / total
    return local_mean * scale.to(local_mean.dtype)


def cp_mean(value: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Mean of a (detached) value over the CP group: the token mean of :func:`cp_token_mean`."""
    if group is None or dist.get_world_size(group) == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, group=group)
    return total / dist.get_world_size(group)
