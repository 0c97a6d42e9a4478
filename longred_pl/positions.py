"""Skipped position ids for the short-to-long (s2l) stream.

The s2l stream feeds the student `seq_len` (`T`) tokens at position ids that span the
extended window `[0, target_len)` (`T_long`), so that its long-position behaviour is
distilled towards the teacher reading the same tokens at `0..T-1`. The schemes follow
docs/method.md, section "Skipped position ids" (Dong et al., ACL 2025, arXiv 2502.07365,
and its public training scripts), with `k = T_long // T`:

- layout: head ids `0..head-1`; a contiguous middle run of `m = T - head - tail` ids
  ending at `end`; tail ids are the last `tail` ids below `k*T`;
- head/tail lengths: with probability 1/2 both `T // 3`, else both `4k`, drawn once per
  call (per micro-batch) as in the published scripts;
- `cream` (LongReD-C): `r = floor(clip(N(1 + k, 5), 2, 2k))`, then `end` uniform over the
  integers of `[head + (m-1) r/2, (r/2) T - tail - 1]`;
- `uniform` (LongReD-U, PoSE-like): `end` uniform over `[T - tail, T_long - tail - 1]`;
- `pose`: PoSE (Zhu et al., ICLR 2024, arXiv 2309.10400) chunks with random skips;
- `none`: `0..T-1`, for ablations.

Every scheme returns ids that start at 0, increase strictly and stay below `target_len`.
Randomness comes only from the `torch.Generator` passed in (global RNG state is never
touched); the few scalars per sample are drawn on the generator's device, so a CPU
generator gives the same ids whatever `device` they are built on.

Shape legend: B = batch size, T = seq_len; `_B` is a per-sample vector, `_B1` the same
as a column, `_BT` a full id matrix.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from longred_pl.errors import UserError

__all__ = [
    "POSITION_SCHEMES",
    "cream_end_bounds",
    "cream_position_ids",
    "cream_sample_r",
    "check_position_kwargs",
    "check_scheme_fits",
    "get_position_scheme",
    "batch_position_ids",
    "layout_position_ids",
    "mix_seed",
    "none_position_ids",
    "pose_position_ids",
    "uniform_position_ids",
]

_FIELD = "model.position_kwargs"


def _check_lengths(batch_size: int, seq_len: int, target_len: int) -> None:
    """Raise a ValueError naming the field when the basic sizes are inconsistent."""
    if batch_size <= 0:
        raise UserError(f"batch_size must be > 0 (got {batch_size})")
    if seq_len <= 0:
        raise UserError(f"seq_len (the s2l stream's seq_len) must be > 0 (got {seq_len})")
    if target_len < seq_len:
        raise UserError(
            f"target_len (model.target_length) must be >= seq_len: got target_len={target_len}, "
            f"seq_len={seq_len}; skipped ids spread seq_len tokens over [0, target_len)"
        )


def _generator(generator: torch.Generator | None) -> torch.Generator:
    """Return `generator`, or a fresh one seeded from OS entropy (global RNG untouched)."""
    if generator is not None:
        return generator
    fresh = torch.Generator()
    fresh.seed()
    return fresh


def _uniform_int(
    lo_B: torch.Tensor, hi_B: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw one integer uniformly from each inclusive range `[lo, hi]` (requires lo <= hi)."""
    u_B = torch.rand(lo_B.shape, generator=generator, dtype=torch.float64, device=generator.device)
    span_B = (hi_B - lo_B + 1).to(torch.float64)
    draw_B = lo_B + torch.floor(u_B * span_B).to(torch.long)
    return torch.minimum(draw_B, hi_B)  # u < 1, so this only guards float rounding


def _draw_head_tail(
    batch_size: int,
    seq_len: int,
    k: int,
    generator: torch.Generator,
    head_tail_lengths: tuple[int, int] | None,
    head_tail_prob: float,
    per_sample: bool,
) -> torch.Tensor:
    """Draw the head (= tail) length of each sample, shape [B], on the generator's device.

    With probability `head_tail_prob` the first of `head_tail_lengths` (default `T // 3`)
    is used, else the second (default `4k`); one draw for the batch unless `per_sample`.
    """
    first, second = head_tail_lengths or (seq_len // 3, 4 * k)
    if not 0.0 <= head_tail_prob <= 1.0:
        raise UserError(f"{_FIELD}.head_tail_prob must be in [0, 1] (got {head_tail_prob})")
    if min(first, second) < 1 or 2 * max(first, second) >= seq_len:
        raise UserError(
            f"{_FIELD}.head_tail_lengths {(first, second)} do not fit seq_len={seq_len}: "
            f"each must be >= 1 and head + tail < seq_len (default (seq_len // 3, 4k) with "
            f"k={k}); use a longer s2l seq_len or pass smaller {_FIELD}.head_tail_lengths"
        )
    n = batch_size if per_sample else 1
    pick_first = torch.rand(n, generator=generator, device=generator.device) < head_tail_prob
    lengths = torch.where(pick_first, first, second).to(torch.long)
    return lengths.expand(batch_size).clone()


def layout_position_ids(
    seq_len: int, k: int, head_B: torch.Tensor, tail_B: torch.Tensor, end_B: torch.Tensor
) -> torch.Tensor:
    """Build head / middle / tail ids from per-sample layout values.

    Position `j` gets id `j` in the head, `j + end - (T - tail - 1)` in the middle (a run
    of `m = T - head - tail` ids ending at `end`) and `j + (k - 1) T` in the tail (the
    last `tail` ids below `k T`). `end` is clamped to `[T - tail - 1, k T - tail - 1]`,
    the only range in which the middle starts after the head and ends before the tail.

    Args:
        seq_len: T.
        k: `target_len // seq_len`.
        head_B: head length per sample, [B].
        tail_B: tail length per sample, [B].
        end_B: last id of the middle run per sample, [B].

    Returns:
        LongTensor [B, T] on `end_B`'s device.
    """
    lo_B = seq_len - tail_B - 1
    end_B = torch.clamp(end_B, min=lo_B, max=k * seq_len - tail_B - 1)
    j_1T = torch.arange(seq_len, device=end_B.device).unsqueeze(0)
    head_B1, tail_B1 = head_B.unsqueeze(1), tail_B.unsqueeze(1)
    mid_shift_B1 = (end_B - lo_B).unsqueeze(1)
    tail_shift = (k - 1) * seq_len
    shift_BT = torch.where(j_1T < head_B1, 0, mid_shift_B1)
    shift_BT = torch.where(j_1T >= seq_len - tail_B1, tail_shift, shift_BT)
    return j_1T + shift_BT


def cream_sample_r(
    n: int,
    k: int,
    generator: torch.Generator | None = None,
    mean: float | None = None,
    std: float = 5.0,
    low: int = 2,
    high: int | None = None,
) -> torch.Tensor:
    """Draw CREAM's stretch ratio `r = floor(clip(N(mean, std), low, high))`.

    Clipping (not truncation) puts the Gaussian's mass below `low` on `r = low` and the
    mass above `high` on `r = high`. `cream_position_ids` draws its `r` with this function.

    Args:
        n: number of draws.
        k: `target_len // seq_len`.
        generator: source of randomness; None uses a fresh entropy-seeded generator.
        mean: Gaussian mean; None means the published `1 + k`.
        std: Gaussian standard deviation (published 5).
        low: lower clip bound (published 2); must be >= 2 so the middle fits.
        high: upper clip bound; None means the published `2k`; must be <= 2k so the
            middle stays below the tail.

    Returns:
        LongTensor [n] on the generator's device, values in `[low, high]`.
    """
    high = 2 * k if high is None else high
    mean = 1.0 + k if mean is None else mean
    if not 2 <= low <= high <= 2 * k:
        raise UserError(
            f"{_FIELD}.r_min/r_max must satisfy 2 <= r_min <= r_max <= 2k = {2 * k} "
            f"(got r_min={low}, r_max={high})"
        )
    if std < 0:
        raise UserError(f"{_FIELD}.r_std must be >= 0 (got {std})")
    gen = _generator(generator)
    z_n = torch.randn(n, generator=gen, dtype=torch.float64, device=gen.device)
    return torch.floor(torch.clamp(z_n * std + mean, low, high)).to(torch.long)


def cream_end_bounds(
    r_B: torch.Tensor, head_B: torch.Tensor, tail_B: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer range of CREAM's `end`: `[ceil(head + (m-1) r/2), floor(r T/2 - tail - 1)]`.

    Computed exactly in integers (`ceil(a/2) = (a+1)//2`). For `2 <= r <= 2k` the range
    is never empty: its real width is `(r/2 - 1)(head + tail + 1) >= 0`, it is a single
    integer at `r = 2`, and for `r >= 3` the width is at least 1/2, which always holds an
    integer when at least one bound is a half-integer. It also lies inside the valid
    range `[T - tail - 1, k T - tail - 1]` of `layout_position_ids`.

    Args:
        r_B: stretch ratio per sample, [B].
        head_B: head length per sample, [B].
        tail_B: tail length per sample, [B].
        seq_len: T.

    Returns:
        (lo_B, hi_B), inclusive integer bounds.
    """
    m_B = seq_len - head_B - tail_B
    lo_B = head_B + ((m_B - 1) * r_B + 1) // 2
    hi_B = (r_B * seq_len) // 2 - tail_B - 1
    return lo_B, hi_B


def _start_layout(
    batch_size: int,
    seq_len: int,
    target_len: int,
    generator: torch.Generator | None,
    head_tail_lengths: tuple[int, int] | None,
    head_tail_prob: float,
    head_tail_per_sample: bool,
) -> tuple[torch.Generator, int, torch.Tensor]:
    """Checks, generator, `k = T_long // T` and head (= tail) lengths shared by cream/uniform."""
    _check_lengths(batch_size, seq_len, target_len)
    gen = _generator(generator)
    k = target_len // seq_len
    head_B = _draw_head_tail(
        batch_size, seq_len, k, gen, head_tail_lengths, head_tail_prob, head_tail_per_sample
    )
    return gen, k, head_B


def cream_position_ids(
    batch_size: int,
    seq_len: int,
    target_len: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    *,
    r_mean: float | None = None,
    r_std: float = 5.0,
    r_min: int = 2,
    r_max: int | None = None,
    head_tail_lengths: tuple[int, int] | None = None,
    head_tail_prob: float = 0.5,
    head_tail_per_sample: bool = False,
) -> torch.Tensor:
    """LongReD-C (CREAM-style) skipped position ids.

    Args:
        batch_size: B.
        seq_len: T, the s2l sequence length.
        target_len: T_long, the extended window; `k = T_long // T`.
        generator: source of randomness; None uses a fresh entropy-seeded generator.
        device: device of the returned ids.
        r_mean: mean of r's Gaussian; None means `1 + k`.
        r_std: its standard deviation (published 5).
        r_min: lower clip bound of r (published 2).
        r_max: upper clip bound of r; None means `2k`.
        head_tail_lengths: the two head (= tail) lengths; None means `(T // 3, 4k)`.
        head_tail_prob: probability of the first length (published 1/2).
        head_tail_per_sample: draw head/tail per sample instead of once per call.

    Returns:
        LongTensor [B, T]: starts at 0, strictly increasing, `< target_len`.
    """
    gen, k, head_B = _start_layout(
        batch_size,
        seq_len,
        target_len,
        generator,
        head_tail_lengths,
        head_tail_prob,
        head_tail_per_sample,
    )
    r_B = cream_sample_r(batch_size, k, gen, mean=r_mean, std=r_std, low=r_min, high=r_max)
    lo_B, hi_B = cream_end_bounds(r_B, head_B, head_B, seq_len)
    end_B = _uniform_int(lo_B, hi_B, gen)
    return layout_position_ids(seq_len, k, head_B, head_B, end_B).to(device)


def uniform_position_ids(
    batch_size: int,
    seq_len: int,
    target_len: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    *,
    head_tail_lengths: tuple[int, int] | None = None,
    head_tail_prob: float = 0.5,
    head_tail_per_sample: bool = False,
) -> torch.Tensor:
    """LongReD-U skipped position ids: `end` uniform over `[T - tail, T_long - tail - 1]`.

    The upper bound is capped at `k T - tail - 1` so that the middle ends before the tail
    (this matters only when `T_long` is not a multiple of `T`). The range is empty only
    when `k = 1`; then `end = T - tail - 1` and the ids are `0..T-1`.

    Args: as :func:`cream_position_ids` (without the ``r_*`` parameters of its ``r``).

    Returns:
        LongTensor [B, T]: starts at 0, strictly increasing, `< target_len`.
    """
    gen, k, head_B = _start_layout(
        batch_size,
        seq_len,
        target_len,
        generator,
        head_tail_lengths,
        head_tail_prob,
        head_tail_per_sample,
    )
    # k*T <= T_long, so this caps the spec's T_long - tail - 1 where the tail starts.
    hi_B = k * seq_len - head_B - 1
    lo_B = torch.minimum(seq_len - head_B, hi_B)
    end_B = _uniform_int(lo_B, hi_B, gen)
    return layout_position_ids(seq_len, k, head_B, head_B, end_B).to(device)


def pose_position_ids(
    batch_size: int,
    seq_len: int,
    target_len: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    *,
    num_chunks: int = 2,
) -> torch.Tensor:
    """PoSE position ids: `num_chunks` contiguous chunks, each shifted by a random skip.

    The sequence is cut into `num_chunks` chunks of near-equal length (the first ones get
    the extra token). Chunk `i` is shifted by `u_i`, with `u_0 = 0` and, as in PoSE,
    `u_i` uniform over the integers of `[u_{i-1}, T_long - T]`, drawn per sample.

    Args:
        batch_size: B.
        seq_len: T.
        target_len: T_long.
        generator: source of randomness; None uses a fresh entropy-seeded generator.
        device: device of the returned ids.
        num_chunks: number of chunks, in `[1, T]`.

    Returns:
        LongTensor [B, T]: starts at 0, strictly increasing, `< target_len`.
    """
    _check_lengths(batch_size, seq_len, target_len)
    if not 1 <= num_chunks <= seq_len:
        raise UserError(f"{_FIELD}.num_chunks must be in [1, seq_len={seq_len}] (got {num_chunks})")
    gen = _generator(generator)
    max_skip = target_len - seq_len
    skip = torch.zeros(batch_size, dtype=torch.long, device=gen.device)
    skips = [skip]
    for _ in range(num_chunks - 1):
        skip = _uniform_int(skip, torch.full_like(skip, max_skip), gen)
        skips.append(skip)
    skips_BC = torch.stack(skips, dim=1).to(device)
    j_T = torch.arange(seq_len, device=skips_BC.device)
    chunk_T = torch.div(j_T * num_chunks, seq_len, rounding_mode="floor")
    return j_T.unsqueeze(0) + skips_BC[:, chunk_T]


def none_position_ids(
    batch_size: int,
    seq_len: int,
    target_len: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Contiguous ids `0..T-1` (no skipping), for ablations; `generator` is unused.

    Returns:
        LongTensor [B, T].
    """
    _check_lengths(batch_size, seq_len, target_len)
    return torch.arange(seq_len, device=device).expand(batch_size, seq_len).clone()


POSITION_SCHEMES: dict[str, Callable[..., torch.Tensor]] = {
    "cream": cream_position_ids,
    "uniform": uniform_position_ids,
    "pose": pose_position_ids,
    "none": none_position_ids,
}


def document_position_ids(document_ids_BT: torch.Tensor) -> torch.Tensor:
    """Positions that restart at 0 at each document start of a packed sample.

    ``document_ids`` ``[B, T]`` holds each token's 0-based document index (non-decreasing
    along a row); the result is each token's offset within its document.
    """
    steps_BT = torch.arange(document_ids_BT.shape[1], device=document_ids_BT.device)
    steps_BT = steps_BT.expand_as(document_ids_BT)
    starts_BT = torch.ones_like(document_ids_BT, dtype=torch.bool)
    starts_BT[:, 1:] = document_ids_BT[:, 1:] != document_ids_BT[:, :-1]
    first_BT = torch.where(starts_BT, steps_BT, 0).cummax(dim=1).values
    return steps_BT - first_BT


def get_position_scheme(name: str) -> Callable[..., torch.Tensor]:
    """Return the position-id function registered under `name`.

    Raises:
        UserError: `name` is not a key of `POSITION_SCHEMES`.
    """
    if name not in POSITION_SCHEMES:
        known = ", ".join(sorted(POSITION_SCHEMES))
        raise UserError(
            f"model.s2l_positions={name!r} is not a known scheme; choose one of: {known}"
        )
    return POSITION_SCHEMES[name]


def check_position_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse ``model.position_kwargs`` keys that scheme ``name`` does not take (at construction)."""
    params = inspect.signature(get_position_scheme(name)).parameters.values()
    allowed = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserError(
            f"{_FIELD}: unknown key(s) {unknown} for model.s2l_positions={name!r}; "
            f"allowed: {', '.join(allowed) if allowed else 'none (this scheme takes no kwargs)'}"
        )


def check_scheme_fits(name: str, seq_len: int, target_len: int, kwargs: Mapping[str, Any]) -> None:
    """Draw one batch of ids as a dry run, so a scheme that cannot fit fails at setup.

    Raises:
        UserError: naming ``data.s2l.seq_len`` and the scheme's own complaint.
    """
    check_position_kwargs(name, kwargs)
    try:
        get_position_scheme(name)(
            2, seq_len, target_len, torch.Generator().manual_seed(0), **kwargs
        )
    except (UserError, TypeError) as err:
        raise UserError(
            f"data.s2l.seq_len={seq_len} does not fit model.s2l_positions={name!r} with "
            f"model.target_length={target_len}: {err}"
        ) from err


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (no Python hash randomisation).

    The s2l ids of micro-step ``n`` on rank ``r`` come from ``mix_seed(seed, n, r)``, so a
    resumed run draws the same ids as an uninterrupted one.
    """
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (
            (1 << 64) - 1
        )
    return value >> 1


def batch_position_ids(
    batch: Mapping[str, Any],
    scheme: Callable[..., torch.Tensor],
    target_len: int,
    seed: int,
    rank: int,
    kwargs: Mapping[str, Any],
) -> torch.Tensor:
    """The s2l ids of a micro-batch: its own ``position_ids``, else ``scheme`` drawn from
    ``mix_seed(seed, batch["index"], rank)`` (so a resumed run draws the same ids).

    Raises:
        UserError: the batch has neither ``position_ids`` nor ``index``.
    """
    if batch.get("position_ids") is not None:
        return batch["position_ids"]
    if "index" not in batch:
        raise UserError(
            "an s2l batch has no 'index' (its global micro-step number): without it every "
            "s2l micro-step would get the same skipped ids; send batch['index'] from the "
            "data module (MixedLengthDataModule does) or batch['position_ids']"
        )
    input_ids = batch["input_ids"]
    gen = torch.Generator().manual_seed(mix_seed(seed, int(batch["index"]), rank))
    ids = scheme(input_ids.shape[0], input_ids.shape[1], target_len, generator=gen, **kwargs)
    return ids.to(input_ids.device)
