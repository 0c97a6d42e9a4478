"""Attention confined to each token's own document (packed samples), with or without CP.

A packed sample carries ``document_ids`` ``[B, T]``: the 0-based index of each token's
document within its sample, non-decreasing along the row. Query ``i`` may attend to key
``j`` iff ``document_ids[b, j] == document_ids[b, i]`` and ``j <= i`` (causal within the
document; every query sees at least itself).

**State.** The current micro-batch's *whole-sequence* document ids are process-wide, like
the CP group of ``ring_attention`` and for the same reason: gradient checkpointing
recomputes attention during backward, after the forward's scope has ended (and under
Lightning after ``training_step`` has returned), and the recomputation must see the same
ids. :func:`set_document_ids` sets them until replaced (the module sets them before each
micro-step's forward, ``None`` for streams without masks; the backward of that micro-step,
its recomputation included, runs before the next one sets anything). :func:`document_mask`
sets them inside a block and restores the previous value on exit: use it only when the
backward also runs inside the block, or when there is none (``no_grad`` forwards).

**Dispatch.** The registered ``longred_ring`` attention function calls
:func:`cp_document_attention` whenever ids are set: under CP (a group of size > 1) the
all-gather form below; without (no group, or a group of one), :func:`document_sdpa`,
torch's SDPA with an explicit boolean mask. With no ids set it runs exactly as before
(ring under CP, ``sdpa`` outside), so unmasked streams keep the ring. Transformers' own
mask is not built while ids are set (``ring_mask``) and any mask passed is ignored.

**All-gather K/V under CP** (the form Llama 3 used; it suits GQA: only the ``K`` key/value
heads travel). Each rank holds its head-tail query/key/value shard (chunks ``r`` and
``2cp-1-r`` of ``2cp``, ``sharding.shard_sequence``). Forward: one all-gather of the
stacked local ``(k, v)`` gives every rank all keys and values (kept rank-major, read in
place by global position); the rank computes its local queries against them with the
document-and-causal mask, in blocks (below), with a streaming (online) softmax, and saves
only its *local* ``q, k, v``, output and log-sum-exp. Backward: the same all-gather again,
the flash-attention backward block by block (``dq`` local; ``dK``/``dV`` for every key
position, accumulated in fp32), then one reduce-scatter returns to each rank the sum of
every rank's ``dK``/``dV`` for its own keys. The document ids are not communicated: every
rank of a CP group holds the whole micro-batch and sets the whole ids. The kernel is
plain torch (matmuls and ``exp`` in fp32, any device or dtype); it is exact, not fused:
on CUDA it is slower than the flash kernels the ring uses (untested on a GPU here).

**Blocks and skipping.** Queries are taken ``block_size`` at a time (the two chunks of a
rank are contiguous runs of global positions). Since ids are non-decreasing, a block of
queries ``[a, a+n)`` needs only the keys ``[s, a+n)``, ``s`` the first position of the
document of query ``a`` (the smallest over the batch); those are read ``block_size`` at a
time. Packing short documents therefore also cuts the work: about ``T x (block + document
length)`` score entries instead of ``T^2 / 2``.

**Memory per rank, one attention layer** (B batch, H query and K key/value heads, D head
dim, T whole sequence, S = T / cp, C = ``block_size``, e = element size of q/k/v):
forward, the gathered K/V ``2 B K T D e`` plus the stacked local pair ``2 B K S D e``; the
scores never exceed one ``[B, H, C, C]`` fp32 block (a few such temporaries live at once:
scores, probabilities, and in backward ``dP``, ``dS``). Saved for backward: local ``q, k,
v, out`` (``(2H + 2K) B S D e``) and the fp32 log-sum-exp ``B H S x 4``, nothing of size
T, like the ring. Backward: the re-gathered K/V again, fp32 ``dK``/``dV`` accumulators
``2 B K T D x 4`` (the reduce-scatter's input, no further copy), local fp32 ``dq``. So
per layer O(T) for K/V (``2 B K T D``, e.g. 0.5 GiB in bf16 plus 1 GiB of fp32
accumulators for Llama-3-8B, K=8, D=128, at T=128K), never O(S x T) scores. The ring
gathers K/V too (it is pinned to torch's all-gather rotation, ``_torch_private``), so both
are O(T) per rank; measured on CPU (``benchmarks/doc_mask_attention.py``) the masked form
used 0.75x the ring's added memory at 8192 tokens, cp=2. At cp=1 :func:`document_sdpa`
builds one ``[B, 1, C, keys]`` boolean mask per query block (keys as above), never
``[T, T]`` at once; but torch's SDPA turns it into a float mask that autograd keeps for
backward (CPU flash kernel, torch 2.13): 4 bytes per (query, key) pair a block covers,
about ``2 T^2`` bytes for one document filling the row (transformers' own packed-sequence
mask for sdpa is a ``[B, 1, T, T]`` boolean, ``T^2`` bytes).

Shape legend: B batch, H query heads, K key/value heads, G = H / K, S local tokens, T whole
sequence, D head dim, N queries of one block, M keys of one block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from longred_pl.errors import UserError
from longred_pl.parallel.sharding import chunk_indices
from longred_pl.positions import document_position_ids

BLOCK_SIZE = 512  # queries (and keys) per block; one fp32 score block is B x H x 512 x 512


# ------------------------------------------------------------------------------ state
@dataclass(frozen=True, eq=False)
class DocumentIds:
    """Whole-sequence document ids ``[B, T]``, checked, with each token's document start.

    ``starts_BT[b, t]`` is the first position of token ``t``'s document in row ``b``;
    ``starts_cpu_BT`` a CPU copy, made at its first use (block key ranges are planned
    without device syncs; a forward that never plans blocks never copies).
    """

    ids_BT: torch.Tensor
    starts_BT: torch.Tensor
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, document_ids_BT: torch.Tensor | DocumentIds) -> DocumentIds:
        """Check ``document_ids_BT`` (2-D integers, non-decreasing along each row).

        Raises:
            UserError: naming ``document_ids`` and what it must be.
        """
        if isinstance(document_ids_BT, DocumentIds):
            return document_ids_BT
        ids = document_ids_BT
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise UserError(
                f"document_ids must be a [batch, seq_len] tensor of each token's document "
                f"index, got {shape}; pass the whole micro-batch's ids, before sharding"
            )
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise UserError(
                f"document_ids must hold integers (0-based document index of each token), "
                f"got {ids.dtype}; convert them with .long()"
            )
        ids = ids.long()
        drops = ids.diff(dim=1) < 0
        if bool(drops.any()):
            b, t = (int(i) for i in drops.nonzero()[0])
            raise UserError(
                f"document_ids must be non-decreasing along each row (0-based index of each "
                f"token's document in its sample); row {b} goes from {int(ids[b, t])} to "
                f"{int(ids[b, t + 1])} at position {t + 1}; number documents in order"
            )
        pos_T = torch.arange(ids.shape[1], device=ids.device)
        return cls(ids, pos_T - document_position_ids(ids))

    @property
    def starts_cpu_BT(self) -> torch.Tensor:
        if "starts_cpu" not in self._on_device:
            self._on_device["starts_cpu"] = self.starts_BT.cpu()
        return self._on_device["starts_cpu"]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ids_BT.shape)  # type: ignore[return-value]

    def on(self, device: torch.device) -> torch.Tensor:
        """``ids_BT`` on ``device`` (copied once per device)."""
        if self.ids_BT.device == device:
            return self.ids_BT
        if device not in self._on_device:
            self._on_device[device] = self.ids_BT.to(device)
        return self._on_device[device]

    def first_key(self, query_positions: list[int]) -> list[int]:
        """For each query position, the first key any row may need: its document's start."""
        return self.starts_cpu_BT[:, query_positions].amin(0).tolist()


_STATE: dict[str, DocumentIds | None] = {"documents": None}


def set_document_ids(document_ids_BT: torch.Tensor | DocumentIds | None) -> None:
    """Set (``None``: clear) the current micro-batch's whole-sequence document ids.

    They hold, process-wide, until replaced: through the backward of the forward they were
    set for, gradient-checkpoint recomputation included (module docstring).

    Raises:
        UserError: ids that are not 2-D, not integers, or decrease along a row.
    """
    _STATE["documents"] = None if document_ids_BT is None else DocumentIds.of(document_ids_BT)


def get_document_ids() -> DocumentIds | None:
    """The document ids set by :func:`set_document_ids` / :func:`document_mask`, or ``None``."""
    return _STATE["documents"]


@contextlib.contextmanager
def document_mask(document_ids_BT: torch.Tensor | DocumentIds | None) -> Iterator[None]:
    """Set the document ids inside the block, then restore the previous ones.

    The backward of a forward run inside the block must run inside it too when the model
    recomputes activations (gradient checkpointing); otherwise use :func:`set_document_ids`.
    """
    saved = get_document_ids()
    set_document_ids(document_ids_BT)
    try:
        yield
    finally:
        _STATE["documents"] = saved


def check_document_shape(documents: DocumentIds, batch: int, tokens: int) -> None:
    """Refuse ids whose shape is not the whole micro-batch ``[batch, tokens]``.

    Every rank of a CP group sees the same shapes, so all refuse together (no rank is left
    waiting in a collective).
    """
    if documents.shape != (batch, tokens):
        raise UserError(
            f"document_ids has shape {list(documents.shape)} but attention runs on "
            f"{batch} x {tokens} tokens (the whole sequence); set the whole micro-batch's "
            f"ids, before sharding, with set_document_ids / document_mask, or clear them "
            f"(None) for inputs without documents"
        )


# ------------------------------------------------------------------------ block plans
def _query_blocks(
    segments: list[tuple[int, int, int]], block: int, documents: DocumentIds
) -> list[tuple[int, int, int, int]]:
    """``(local start, global start, n, first key)`` of every query block of the local runs:
    its keys are ``[first key, global start + n)``."""
    blocks = []
    for local, glob, length in segments:
        for off in range(0, length, block):
            blocks.append((local + off, glob + off, min(block, length - off)))
    firsts = documents.first_key([q0 for _, q0, _ in blocks])
    return [(*blk, lo) for blk, lo in zip(blocks, firsts, strict=True)]


def rank_segments(cp_rank: int, cp_size: int, tokens: int) -> list[tuple[int, int, int]]:
    """The local shard as runs ``(local start, global start, length)``: chunks ``r, 2cp-1-r``."""
    chunk = tokens // (2 * cp_size)
    head, tail = chunk_indices(cp_rank, cp_size)
    return [(0, head * chunk, chunk), (chunk, tail * chunk, chunk)]


def _key_blocks(lo: int, hi: int, block: int, chunk: int) -> Iterator[tuple[int, int]]:
    """Key ranges ``[k0, k1)`` covering ``[lo, hi)``, each within one chunk of ``chunk``."""
    k0 = lo
    while k0 < hi:
        k1 = min(k0 + block, hi, (k0 // chunk + 1) * chunk)
        yield k0, k1
        k0 = k1


def _rank_major(k0: int, k1: int, chunk: int, cp: int) -> tuple[int, slice]:
    """Where global keys ``[k0, k1)`` (within one chunk) lie in a rank-major buffer
    ``[cp, ..., 2 * chunk, D]``: the owning rank and the slice of its local positions."""
    index = k0 // chunk
    rank = index if index < cp else 2 * cp - 1 - index
    start = k0 - index * chunk + (0 if index < cp else chunk)
    return rank, slice(start, start + k1 - k0)


def _allowed(ids_BT: torch.Tensor, q0: int, n: int, k0: int, k1: int) -> torch.Tensor:
    """``[B, 1, 1, N, M]``: same document and key position <= query position."""
    dev = ids_BT.device
    same_BNM = ids_BT[:, q0 : q0 + n, None] == ids_BT[:, None, k0:k1]
    causal_NM = (
        torch.arange(k0, k1, device=dev)[None, :] <= torch.arange(q0, q0 + n, device=dev)[:, None]
    )
    return (same_BNM & causal_NM)[:, None, None]


# ------------------------------------------------------------------- eager block kernel
def _local_forward(
    q_BHSD: torch.Tensor,
    kv_RXBKSD: torch.Tensor,
    documents: DocumentIds,
    segments: list[tuple[int, int, int]],
    scale: float,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked attention of the local queries against every key: ``(out_BHSD, lse_BKGS)``.

    ``kv_RXBKSD`` is the gathered ``(k, v)``, rank-major: ``[cp, 2, B, K, S, D]``.
    """
    cp, _, b, k, s, d = kv_RXBKSD.shape
    g = q_BHSD.shape[1] // k
    chunk = s // 2
    ids_BT = documents.on(q_BHSD.device)
    q_BKGSD = q_BHSD.view(b, k, g, s, d)
    out_BKGSD = torch.empty(b, k, g, s, d, dtype=torch.float32, device=q_BHSD.device)
    lse_BKGS = torch.empty(b, k, g, s, dtype=torch.float32, device=q_BHSD.device)
    for ql, q0, n, lo in _query_blocks(segments, block, documents):
        q_BKGND = q_BKGSD[:, :, :, ql : ql + n].float()
        m_BKGN = torch.full((b, k, g, n), -math.inf, device=q_BHSD.device)
        l_BKGN = torch.zeros(b, k, g, n, device=q_BHSD.device)
        acc_BKGND = torch.zeros(b, k, g, n, d, device=q_BHSD.device)
        for k0, k1 in _key_blocks(lo, q0 + n, block, chunk):
            rank, where = _rank_major(k0, k1, chunk, cp)
            k_BK1MD = kv_RXBKSD[rank, 0, :, :, where].float()[:, :, None]
            v_BK1MD = kv_RXBKSD[rank, 1, :, :, where].float()[:, :, None]
            s_BKGNM = (q_BKGND @ k_BK1MD.transpose(-1, -2)) * scale
            s_BKGNM.masked_fill_(~_allowed(ids_BT, q0, n, k0, k1), -math.inf)
            m_new = torch.maximum(m_BKGN, s_BKGNM.amax(-1))
            m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)  # rows with no key yet
            p_BKGNM = torch.exp(s_BKGNM - m_safe[..., None])
            corr = torch.exp(m_BKGN - m_safe)
            l_BKGN = l_BKGN * corr + p_BKGNM.sum(-1)
            acc_BKGND = acc_BKGND * corr[..., None] + p_BKGNM @ v_BK1MD
            m_BKGN = m_new
        # every query sees itself, so l > 0
        out_BKGSD[:, :, :, ql : ql + n] = acc_BKGND / l_BKGN[..., None]
        lse_BKGS[:, :, :, ql : ql + n] = m_BKGN + torch.log(l_BKGN)
    return out_BKGSD.view(b, k * g, s, d).to(q_BHSD.dtype), lse_BKGS


def _local_backward(
    grad_BHSD: torch.Tensor,
    q_BHSD: torch.Tensor,
    kv_RXBKSD: torch.Tensor,
    out_BHSD: torch.Tensor,
    lse_BKGS: torch.Tensor,
    documents: DocumentIds,
    segments: list[tuple[int, int, int]],
    scale: float,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dq_BHSD in fp32, dkv_RXBKSD in fp32)``: this rank's share of every key's gradient."""
    cp, _, b, k, s, d = kv_RXBKSD.shape
    g = q_BHSD.shape[1] // k
    chunk = s // 2
    ids_BT = documents.on(q_BHSD.device)
    q_BKGSD = q_BHSD.view(b, k, g, s, d)
    do_BKGSD = grad_BHSD.reshape(b, k, g, s, d).float()
    delta_BKGS = (do_BKGSD * out_BHSD.reshape(b, k, g, s, d).float()).sum(-1)
    dq_BKGSD = torch.zeros(b, k, g, s, d, device=q_BHSD.device)
    dkv_RXBKSD = torch.zeros(kv_RXBKSD.shape, device=q_BHSD.device)
    for ql, q0, n, lo in _query_blocks(segments, block, documents):
        rows = slice(ql, ql + n)
        q_BKGND = q_BKGSD[:, :, :, rows].float()
        do_BKGND = do_BKGSD[:, :, :, rows]
        lse_BKGN1 = lse_BKGS[:, :, :, rows, None]
        delta_BKGN1 = delta_BKGS[:, :, :, rows, None]
        for k0, k1 in _key_blocks(lo, q0 + n, block, chunk):
            rank, where = _rank_major(k0, k1, chunk, cp)
            k_BK1MD = kv_RXBKSD[rank, 0, :, :, where].float()[:, :, None]
            v_BK1MD = kv_RXBKSD[rank, 1, :, :, where].float()[:, :, None]
            s_BKGNM = (q_BKGND @ k_BK1MD.transpose(-1, -2)) * scale
            s_BKGNM.masked_fill_(~_allowed(ids_BT, q0, n, k0, k1), -math.inf)
            p_BKGNM = torch.exp(s_BKGNM - lse_BKGN1)  # masked: exactly 0
            dkv_RXBKSD[rank, 1, :, :, where] += (p_BKGNM.transpose(-1, -2) @ do_BKGND).sum(2)
            dp_BKGNM = do_BKGND @ v_BK1MD.transpose(-1, -2)
            ds_BKGNM = p_BKGNM * (dp_BKGNM - delta_BKGN1) * scale
            dq_BKGSD[:, :, :, rows] += ds_BKGNM @ k_BK1MD
            dkv_RXBKSD[rank, 0, :, :, where] += (ds_BKGNM.transpose(-1, -2) @ q_BKGND).sum(2)
    return dq_BKGSD.view(b, k * g, s, d), dkv_RXBKSD


def _gather_kv(
    k_BKSD: torch.Tensor, v_BKSD: torch.Tensor, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """Every rank's ``(k, v)``, rank-major ``[cp, 2, B, K, S, D]`` (one all-gather)."""
    kv_XBKSD = torch.stack([k_BKSD, v_BKSD])
    if group is None:
        return kv_XBKSD[None]
    cp = dist.get_world_size(group)
    out = kv_XBKSD.new_empty((cp * 2, *kv_XBKSD.shape[1:]))  # concatenated on dim 0 (gloo)
    dist.all_gather_into_tensor(out, kv_XBKSD, group=group)
    return out.view(cp, *kv_XBKSD.shape)


class _DocumentAttention(torch.autograd.Function):
    """All-gather K/V forward, re-gather + reduce-scatter dK/dV backward (module docstring)."""

    @staticmethod
    def forward(ctx, q_BHSD, k_BKSD, v_BKSD, documents, group, scale, block):  # type: ignore[override]
        cp = 1 if group is None else dist.get_world_size(group)
        rank = 0 if group is None else dist.get_rank(group)
        segments = rank_segments(rank, cp, cp * q_BHSD.shape[2])
        kv_RXBKSD = _gather_kv(k_BKSD, v_BKSD, group)
        out_BHSD, lse_BKGS = _local_forward(q_BHSD, kv_RXBKSD, documents, segments, scale, block)
        ctx.save_for_backward(q_BHSD, k_BKSD, v_BKSD, out_BHSD, lse_BKGS)
        ctx.documents, ctx.group, ctx.segments = documents, group, segments
        ctx.scale, ctx.block = scale, block
        return out_BHSD

    @staticmethod
    def backward(ctx, grad_BHSD):  # type: ignore[override]
        q_BHSD, k_BKSD, v_BKSD, out_BHSD, lse_BKGS = ctx.saved_tensors
        kv_RXBKSD = _gather_kv(k_BKSD, v_BKSD, ctx.group)
        dq_BHSD, dkv_RXBKSD = _local_backward(
            grad_BHSD,
            q_BHSD,
            kv_RXBKSD,
            out_BHSD,
            lse_BKGS,
            ctx.documents,
            ctx.segments,
            ctx.scale,
            ctx.block,
        )
        del kv_RXBKSD
        if ctx.group is None:
            dkv_XBKSD = dkv_RXBKSD[0]
        else:
            dkv_XBKSD = dkv_RXBKSD.new_empty(dkv_RXBKSD.shape[1:])
            dist.reduce_scatter_tensor(dkv_XBKSD, dkv_RXBKSD.flatten(0, 1), group=ctx.group)
        return (
            dq_BHSD.to(q_BHSD.dtype),
            dkv_XBKSD[0].to(k_BKSD.dtype),
            dkv_XBKSD[1].to(v_BKSD.dtype),
            None,
            None,
            None,
            None,
        )


def _check_heads(q_BHSD: torch.Tensor, k_BKSD: torch.Tensor, v_BKSD: torch.Tensor) -> None:
    if q_BHSD.shape[1] % k_BKSD.shape[1]:
        raise ValueError(
            f"query heads {q_BHSD.shape[1]} are not a multiple of key/value heads {k_BKSD.shape[1]}"
        )
    if not q_BHSD.shape[2] == k_BKSD.shape[2] == v_BKSD.shape[2]:
        raise UserError(
            f"document_ids: document masks apply to whole-sequence forwards (equal query and "
            f"key lengths), got {q_BHSD.shape[2]} queries and {k_BKSD.shape[2]} keys; clear "
            f"them with set_document_ids(None) before generating with a cache"
        )


# ---------------------------------------------------------------------------- public
def cp_document_attention(
    q_BHSD: torch.Tensor,
    k_BKSD: torch.Tensor,
    v_BKSD: torch.Tensor,
    document_ids_BT: torch.Tensor | DocumentIds,
    group: dist.ProcessGroup | None = None,
    scale: float | None = None,
    block_size: int = BLOCK_SIZE,
) -> torch.Tensor:
    """Document-masked causal attention of this rank's head-tail shard (all-gather K/V).

    Args:
        q_BHSD: this rank's queries, chunks ``r`` and ``2cp-1-r`` concatenated on S (the
            whole sequence when ``group`` is ``None``).
        k_BKSD: its keys, same layout; ``K`` may divide ``H`` (GQA).
        v_BKSD: its values.
        document_ids_BT: the *whole* micro-batch's document ids ``[B, cp * S]``.
        group: the context-parallel group (rank order = chunk order); ``None`` for one
            process holding the whole sequence (same kernel, no communication).
        scale: softmax scale; ``None`` is ``1 / sqrt(D)``.
        block_size: queries and keys per block (memory: module docstring).

    Returns:
        ``out_BHSD``: this rank's rows of the whole masked attention output.
    """
    _check_heads(q_BHSD, k_BKSD, v_BKSD)
    documents = DocumentIds.of(document_ids_BT)
    cp = 1 if group is None else dist.get_world_size(group)
    check_document_shape(documents, q_BHSD.shape[0], cp * q_BHSD.shape[2])
    if q_BHSD.shape[2] % 2:
        raise ValueError(f"a head-tail shard has two equal chunks, got {q_BHSD.shape[2]} tokens")
    scale = q_BHSD.shape[-1] ** -0.5 if scale is None else scale
    return _DocumentAttention.apply(
        q_BHSD, k_BKSD.contiguous(), v_BKSD.contiguous(), documents, group, scale, block_size
    )


def document_sdpa(
    q_BHTD: torch.Tensor,
    k_BKTD: torch.Tensor,
    v_BKTD: torch.Tensor,
    document_ids_BT: torch.Tensor | DocumentIds,
    scale: float | None = None,
    block_size: int | None = BLOCK_SIZE,
) -> torch.Tensor:
    """Document-masked causal attention of a whole sequence: torch SDPA, boolean mask.

    The cp=1 function (and the reference of the sharded one). Queries go ``block_size`` at
    a time (``None``: all at once, one ``[B, 1, T, T]`` mask), each against the keys from
    its block's first document start on; autograd is torch's.
    """
    _check_heads(q_BHTD, k_BKTD, v_BKTD)
    documents = DocumentIds.of(document_ids_BT)
    b, _, t, _ = q_BHTD.shape
    check_document_shape(documents, b, t)
    ids_BT = documents.on(q_BHTD.device)
    block = t if block_size is None else block_size
    outs = []
    for _, q0, n, lo in _query_blocks([(0, 0, t)], block, documents):
        q1 = q0 + n
        mask_B11NM = _allowed(ids_BT, q0, q1 - q0, lo, q1)[:, :, 0]
        outs.append(
            F.scaled_dot_product_attention(
                q_BHTD[:, :, q0:q1],
                k_BKTD[:, :, lo:q1],
                v_BKTD[:, :, lo:q1],
                attn_mask=mask_B11NM,
                scale=scale,
                enable_gqa=True,
            )
        )
    return torch.cat(outs, dim=2)
