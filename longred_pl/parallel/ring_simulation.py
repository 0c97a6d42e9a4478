"""The ring of ``longred_ring``, every rank in one process: its kernels checked on one device.

Context parallelism needs one device per rank (NCCL refuses two ranks on one GPU), so a
machine with a single GPU cannot run the ring itself. :func:`simulate_ring` computes in
one process what each rank of a ``cp``-rank ring computes, with the same pieces the real
ring uses:

* the kernel adapters of ``ring_attention`` (``_kernel_for``: CPU flash; CUDA flash for
  bf16/fp16, CUDA memory-efficient for fp32), called with the arguments torch's
  templated ring passes them;
* the same choice of blocks per step as torch's ``_templated_ring_attention`` and its
  backward (torch 2.11-2.13, identical there), with head-tail load balancing: at step
  ``i`` rank ``r`` holds the keys/values of rank ``j = (r - i) mod cp``; step 0 is
  causal on the local blocks; for ``0 < i <= r`` all local queries meet the first half of
  ``j``'s keys; for ``i > r`` the second half of the local queries meets all of them;
* torch's own log-sum-exp merger (``_torch_private.sdpa_merger``) for the forward, and
  the ring backward's float32 accumulation of ``dq``, ``dk``, ``dv`` (``dk``, ``dv`` of
  each step belong to rank ``j``).

It is evidence about the kernels and the merge, not about communication: on CPU the
simulation equals the real 2-process gloo ring (``tests/integration/test_cp_attention``),
so running it on CUDA against unsharded attention checks the CUDA adapters as the ring
calls them (``benchmarks/gpu_smoke.sh``).

Shape legend: B batch, H query heads, K key/value heads, T whole sequence, S = T / cp,
D head dim.
"""

from __future__ import annotations

from typing import Any

import torch

from longred_pl import _torch_private
from longred_pl.parallel.ring_attention import _kernel_for
from longred_pl.parallel.sharding import shard_sequence, unshard_sequence


def _blocks(i: int, rank: int) -> str:
    """Which blocks meet at step ``i`` on ``rank``: ``local``, ``first_kv`` or ``second_q``."""
    if i == 0:
        return "local"
    return "first_kv" if i <= rank else "second_q"


def _half(x: torch.Tensor, which: int) -> torch.Tensor:
    return x.chunk(2, dim=2)[which]


def simulate_ring(
    q_BHTD: torch.Tensor,
    k_BKTD: torch.Tensor,
    v_BKTD: torch.Tensor,
    grad_BHTD: torch.Tensor,
    cp: int,
    scale: float | None = None,
) -> dict[str, torch.Tensor]:
    """Out and ``dq``, ``dk``, ``dv`` of causal ring attention over ``cp`` simulated ranks.

    Args:
        q_BHTD: whole-sequence queries (the ranks' head-tail shards are cut here).
        k_BKTD: keys (``K`` may divide ``H``: GQA, as in the ring).
        v_BKTD: values.
        grad_BHTD: gradient of the output.
        cp: ranks in the simulated ring (``T`` must split into ``2 cp`` chunks).
        scale: softmax scale; ``None`` is ``1 / sqrt(D)``.

    Returns:
        ``{"out", "dq", "dk", "dv"}``, whole-sequence, in the input dtype.
    """
    groups = q_BHTD.shape[1] // k_BKTD.shape[1]
    kernel = _kernel_for(q_BHTD, groups)
    q, k, v, g = (
        [shard_sequence(x, r, cp, dim=2) for r in range(cp)]
        for x in (q_BHTD, k_BKTD, v_BKTD, grad_BHTD)
    )
    outs, lses, rests = _forward(kernel, q, k, v, cp, scale)
    dq, dk, dv = _backward(kernel, q, k, v, g, outs, lses, rests, cp, scale)
    dtype = q_BHTD.dtype
    return {
        "out": unshard_sequence([o.to(dtype) for o in outs], dim=2),
        "dq": unshard_sequence([x.to(dtype) for x in dq], dim=2),
        "dk": unshard_sequence([x.to(dtype) for x in dk], dim=2),
        "dv": unshard_sequence([x.to(dtype) for x in dv], dim=2),
    }


def _forward(kernel: Any, q: list, k: list, v: list, cp: int, scale: float | None) -> tuple:
    """Each rank's output, log-sum-exp and kernel state after its ``cp`` ring steps."""
    outs, lses, rests = [], [], []
    for rank in range(cp):
        merger = _torch_private.sdpa_merger()
        for i in range(cp):
            j = (rank - i) % cp
            kind = _blocks(i, rank)
            qq = _half(q[rank], 1) if kind == "second_q" else q[rank]
            kk, vv = (_half(k[j], 0), _half(v[j], 0)) if kind == "first_kv" else (k[j], v[j])
            out, lse, *rest = kernel.forward(qq, kk, vv, is_causal=i == 0, scale=scale)
            merger.step(out, lse, kind == "second_q")
        out, lse = merger.results()
        outs.append(out)
        lses.append(lse)
        rests.append(tuple(rest))
    return outs, lses, rests


def _backward(
    kernel: Any,
    q: list,
    k: list,
    v: list,
    g: list,
    outs: list,
    lses: list,
    rests: list,
    cp: int,
    scale: float | None,
) -> tuple[list, list, list]:
    """Each rank's ``dq`` and the ``dk``, ``dv`` its blocks send back, accumulated in fp32."""
    dq = [torch.zeros_like(x, dtype=torch.float32) for x in q]
    dk = [torch.zeros_like(x, dtype=torch.float32) for x in k]
    dv = [torch.zeros_like(x, dtype=torch.float32) for x in v]
    for rank in range(cp):
        for i in range(cp):
            j = (rank - i) % cp
            kind = _blocks(i, rank)
            second = kind == "second_q"
            pick = (lambda x: _half(x, 1)) if second else (lambda x: x)  # noqa: E731
            kk, vv = (_half(k[j], 0), _half(v[j], 0)) if kind == "first_kv" else (k[j], v[j])
            kwargs = {kernel.grad_out_name: pick(g[rank]), **kernel.backward_kwargs(rests[rank])}
            gq, gk, gv, *_ = kernel.backward(
                query=pick(q[rank]),
                key=kk,
                value=vv,
                out=pick(outs[rank]),
                logsumexp=pick(lses[rank]).contiguous(),
                is_causal=i == 0,
                scale=scale,
                **kwargs,
            )
            (_half(dq[rank], 1) if second else dq[rank]).add_(gq.float())
            for acc, grad in ((dk[j], gk), (dv[j], gv)):
                (_half(acc, 0) if kind == "first_kv" else acc).add_(grad.float())
    return dq, dk, dv


def unsharded_attention(
    q_BHTD: torch.Tensor,
    k_BKTD: torch.Tensor,
    v_BKTD: torch.Tensor,
    grad_BHTD: torch.Tensor,
    scale: float | None = None,
) -> dict[str, torch.Tensor]:
    """The reference: causal SDPA on the whole sequence (K/V heads repeated), and its grads."""
    groups = q_BHTD.shape[1] // k_BKTD.shape[1]
    q, k, v = (x.detach().clone().requires_grad_() for x in (q_BHTD, k_BKTD, v_BKTD))
    k_rep, v_rep = (x.repeat_interleave(groups, dim=1) for x in (k, v))
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k_rep, v_rep, is_causal=True, scale=scale
    )
    out.backward(grad_BHTD)
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
