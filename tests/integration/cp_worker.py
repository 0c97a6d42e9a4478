"""One rank of the 2-process context-parallel checks (launched by ``test_cp_attention.py``).

Run as ``python -m torch.distributed.run --nproc_per_node 2 cp_worker.py MODEL TEACHER OUT``;
``--nproc_per_node 4 cp_worker.py --documents MODEL OUT`` runs the document-mask cases
(issue 22) at cp=4 and cp=2 instead.
Every rank builds the same whole inputs (fixed seeds), keeps its head-tail shard, runs
forward + backward under the ``longred_ring`` attention and writes what the single-process
reference must reproduce (gathered outputs, full gradients, the CP-group loss) to
``OUT/<scenario>.pt`` on rank 0. The comparison and its tolerances live in the test.

Shape legend: B batch, H heads, K key/value heads, T whole sequence, S = T / cp, D head dim.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

import longred_pl.parallel as parallel  # its strategy names (Lightning) load at first use
from longred_pl.fsdp import shard_fsdp2
from longred_pl.losses import chunked_next_token_loss, hidden_cosine_loss
from longred_pl.models import load_causal_lm, load_config
from longred_pl.parallel import (
    cp_document_attention,
    cp_mean,
    cp_token_mean,
    document_mask,
    gather_sequence,
    label_count,
    ring_attention,
    ring_attention_forward,
    set_cp_group,
    set_document_ids,
    shard_batch,
    shard_sequence,
)
from longred_pl.rope import extend_rope

sys.path.insert(0, os.path.dirname(__file__))
import cp_cases  # noqa: E402  (shared inputs of worker and test)


def attention_case(group: dist.ProcessGroup, rank: int, cp: int) -> dict:
    """Raw ring attention (GQA) on head-tail shards: gathered output and q/k/v gradients."""
    q_BHTD, k_BKTD, v_BKTD, w_BHTD = cp_cases.attention_inputs()
    q, k, v = (
        shard_sequence(x, rank, cp, dim=2).requires_grad_() for x in (q_BHTD, k_BKTD, v_BKTD)
    )
    out_BHSD = ring_attention(q, k, v, group, scale=cp_cases.SCALE)
    (out_BHSD * shard_sequence(w_BHTD, rank, cp, dim=2)).sum().backward()
    return {
        name: gather_sequence(x.detach(), group, dim=2)
        for name, x in (("out", out_BHSD), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad))
    }


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        for n, p in model.named_parameters()
        if p.grad is not None
    }


def long_case(model_dir: str, mesh, checkpointing: bool) -> dict:
    """Next-token loss with shifted-then-sharded labels, FSDP2 over the dp_cp mesh."""
    layout = parallel.layout_from_mesh(mesh)
    config = extend_rope(load_config(model_dir), "abf", cp_cases.TARGET, rope_theta=40000.0)
    model = load_causal_lm(model_dir, config, "longred_ring")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    shard_fsdp2(model, parallel.fsdp_mesh(mesh))
    ids_BT = cp_cases.long_input_ids()
    batch = shard_batch(ids_BT, layout.cp_rank, layout.cp_size, with_labels=True)
    labels = batch.pop("labels")
    # the loss runs inside the LM head's forward, where FSDP2 has its weight gathered (the
    # head is a unit of its own: after the forward its weight is a shard again)
    found = {}

    def loss_in_head(head, args):
        found["local"] = chunked_next_token_loss(args[0], head.weight, labels, chunk_size=16)
        return (args[0][:, :1],)

    hook = model.get_output_embeddings().register_forward_pre_hook(loss_in_head)
    try:
        model(**batch, use_cache=False)
    finally:
        hook.remove()
    local = found["local"]
    loss = cp_token_mean(local, label_count(labels), layout.cp_group)
    loss.backward()
    return {"loss": cp_mean(loss, layout.cp_group), "grads": full_grads(model)}


def s2l_case(model_dir: str, teacher_dir: str, mesh) -> dict:
    """Cosine distillation: student at skipped ids vs frozen teacher at 0..T-1, both sharded.

    The teacher has other weights than the student, so that the loss and its gradients
    are far from zero (the same weights differ only by RoPE: loss ~1e-6 on a tiny model).
    """
    layout = parallel.layout_from_mesh(mesh)
    config = extend_rope(load_config(model_dir), "abf", cp_cases.TARGET, rope_theta=40000.0)
    student = load_causal_lm(model_dir, config, "longred_ring").train()
    teacher = load_causal_lm(teacher_dir, load_config(teacher_dir), "longred_ring")
    teacher.requires_grad_(False)
    teacher.eval()
    shard_fsdp2(student, parallel.fsdp_mesh(mesh))
    layers = [1, config.num_hidden_layers]
    ids_BT, skipped_BT = cp_cases.s2l_inputs()
    s_batch = shard_batch(ids_BT, layout.cp_rank, layout.cp_size, skipped_BT)
    t_batch = shard_batch(ids_BT, layout.cp_rank, layout.cp_size)
    with torch.no_grad():
        t_states = cp_cases.hidden_states(teacher, layers, **t_batch)
    s_states = cp_cases.hidden_states(student, layers, **s_batch)
    local = hidden_cosine_loss(s_states, t_states, layers)
    loss = cp_token_mean(local, s_batch["input_ids"].numel(), layout.cp_group)
    loss.backward()
    return {"loss": cp_mean(loss, layout.cp_group), "grads": full_grads(student)}


def no_mask_case(model_dir: str, layout) -> dict:
    """Skipped ids *without* the all-ones mask: the gaps (and the jump between a rank's two
    chunks) must not be read as packed-sequence boundaries under CP; the mask is ignored."""
    config = extend_rope(load_config(model_dir), "abf", cp_cases.TARGET, rope_theta=40000.0)
    model = load_causal_lm(model_dir, config, "longred_ring")
    n = config.num_hidden_layers
    ids_BT, skipped_BT = cp_cases.s2l_inputs()
    batch = shard_batch(ids_BT, layout.cp_rank, layout.cp_size, skipped_BT)
    del batch["attention_mask"]
    with torch.no_grad():
        hidden_BSD = cp_cases.hidden_states(model, [n], **batch)[n]
    return {"hidden": gather_sequence(hidden_BSD, layout.cp_group)}


def strategy_case() -> dict:
    """``ContextParallelStrategy`` in a real ``Trainer.fit``: mesh, CP group, data split.

    Both ranks form one CP group (dp=1), so the sampler must give them the same samples.
    """
    import lightning as L
    from torch.utils.data import DataLoader

    from longred_pl.parallel import ContextParallelStrategy, get_cp_group, parallel_layout

    seen: dict = {}

    class Probe(L.LightningModule):
        def configure_model(self) -> None:
            self.layer = torch.nn.Linear(4, 1)
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.layer, mesh=parallel.fsdp_mesh(self.device_mesh))

        def training_step(self, batch, batch_idx):
            layout = parallel_layout(self.trainer)
            seen.update(dp=(layout.dp_rank, layout.dp_size), cp=(layout.cp_rank, layout.cp_size))
            seen["group_set"] = get_cp_group() is layout.cp_group is not None
            seen["batch"] = batch.clone()
            return self.layer(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ContextParallelStrategy(context_parallel_size=2),
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(), DataLoader(torch.arange(32.0).view(8, 4), batch_size=2, shuffle=True))
    batches = [torch.empty_like(seen["batch"]) for _ in range(dist.get_world_size())]
    dist.all_gather(batches, seen["batch"])
    return {
        "dp": seen["dp"],
        "cp": seen["cp"],
        "group_set": seen["group_set"],
        "same_batch": all(torch.equal(b, batches[0]) for b in batches),
        "cleared_after_fit": get_cp_group() is None,
    }


def cuda_case(out_dir: str) -> None:
    """CUDA kernels (flash in bf16, memory-efficient in fp32) vs fp32 sdpa, on 1 or 2 GPUs.

    With one GPU the ring has one rank: the kernel adapters (GQA included) are checked,
    the merge is not; with two, everything is.
    """
    import torch.nn.functional as F

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    group = dist.new_group(list(range(world)))
    errors = {}
    for dtype in (torch.bfloat16, torch.float32):
        gen = torch.Generator().manual_seed(0)
        q, k, v, w = (torch.randn(2, h, 256, 64, generator=gen).cuda() for h in (8, 4, 4, 8))
        ref = [x.clone().requires_grad_() for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*ref, is_causal=True, enable_gqa=True)
        (out * w).sum().backward()
        mine = [shard_sequence(x, rank, world, dim=2).to(dtype).requires_grad_() for x in (q, k, v)]
        got = ring_attention(*mine, group)
        (got.float() * shard_sequence(w, rank, world, dim=2)).sum().backward()
        pairs = [(got, out)] + [(m.grad, r.grad) for m, r in zip(mine, ref)]
        for name, (a, b) in zip(("out", "dq", "dk", "dv"), pairs):
            full = gather_sequence(a.detach().float().contiguous(), group, dim=2)
            errors[f"{dtype}:{name}"] = float((full - b).abs().max() / b.abs().max())
    if rank == 0:
        torch.save(errors, os.path.join(out_dir, "cuda.pt"))
    dist.destroy_process_group()


class _Attention(torch.nn.Module):
    """What ``longred_ring`` reads of an attention layer."""

    is_causal = True
    num_key_value_groups = 2


def document_attention_case(group: dist.ProcessGroup, rank: int, cp: int, block: int | None):
    """Document-masked attention (GQA) on head-tail shards, through the registered function
    (``block`` None: its default blocks) or directly with small blocks; backward inside the
    ``document_mask`` block. Gathered output and q/k/v gradients."""
    q_BHTD, k_BKTD, v_BKTD, w_BHTD = cp_cases.document_attention_inputs()
    ids_BT = cp_cases.document_ids()
    q, k, v = (
        shard_sequence(x, rank, cp, dim=2).requires_grad_() for x in (q_BHTD, k_BKTD, v_BKTD)
    )
    with document_mask(ids_BT):
        if block is None:
            out_BSHD, _ = ring_attention_forward(
                _Attention(), q, k, v, None, scaling=cp_cases.SCALE
            )
            out_BHSD = out_BSHD.transpose(1, 2)
        else:
            out_BHSD = cp_document_attention(q, k, v, ids_BT, group, cp_cases.SCALE, block)
        (out_BHSD * shard_sequence(w_BHTD, rank, cp, dim=2)).sum().backward()
    return {
        name: gather_sequence(x.detach().contiguous(), group, dim=2)
        for name, x in (("out", out_BHSD), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad))
    }


def document_llama_case(model_dir: str, group: dist.ProcessGroup, rank: int, cp: int) -> dict:
    """A tiny Llama on packed documents with gradient checkpointing: positions restart at
    each document, document ids set (process-wide) before the forward and cleared only
    after the backward, in which checkpointing recomputes attention. Replicated weights:
    the gradient of the whole ``sum(hidden * w)`` is the sum of every rank's."""
    config = load_config(model_dir)
    model = load_causal_lm(model_dir, config, "longred_ring")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids_BT, docs_BT, w_BTD = cp_cases.document_llama_inputs()
    batch = shard_batch(ids_BT, rank, cp, cp_cases.restarting_positions(docs_BT))
    set_document_ids(docs_BT)
    try:
        hidden_BSD = model.model(**batch, use_cache=False).last_hidden_state
        (hidden_BSD * shard_sequence(w_BTD, rank, cp)).sum().backward()
    finally:
        set_document_ids(None)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for grad in grads.values():
        dist.all_reduce(grad, group=group)
    return {"hidden": gather_sequence(hidden_BSD.detach(), group), "grads": grads}


def documents_main(model_dir: str, out_dir: str) -> None:
    """The document-mask cases at cp=4 (all 4 ranks of this launch) and cp=2 (ranks 0-1 and
    2-3, each pair a group): one launch, so the processes start and import once."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    whole = dist.new_group(list(range(world)))
    pairs = [dist.new_group([r, r + 1]) for r in range(0, world, 2)]  # every rank creates all
    for group in (whole, pairs[dist.get_rank() // 2]):
        rank, cp = dist.get_rank(group), dist.get_world_size(group)
        set_cp_group(group)
        results = {
            "attention": document_attention_case(group, rank, cp, None),
            "attention_small_blocks": document_attention_case(group, rank, cp, cp_cases.DOC_BLOCK),
            "llama": document_llama_case(model_dir, group, rank, cp),
        }
        set_cp_group(None)
        if dist.get_rank() == 0:
            for name, value in results.items():
                torch.save(value, os.path.join(out_dir, f"documents_cp{cp}_{name}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main(model_dir: str, teacher_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = parallel.build_dp_cp_mesh(1, dist.get_world_size(), "cpu")
    layout = parallel.layout_from_mesh(mesh)
    set_cp_group(layout.cp_group)
    results = {
        "attention": attention_case(layout.cp_group, layout.cp_rank, layout.cp_size),
        "long": long_case(model_dir, mesh, checkpointing=False),
        "long_checkpointing": long_case(model_dir, mesh, checkpointing=True),
        "s2l": s2l_case(model_dir, teacher_dir, mesh),
        "no_mask": no_mask_case(model_dir, layout),
    }
    set_cp_group(None)
    results["strategy"] = strategy_case()
    if dist.get_rank() == 0:
        for name, value in results.items():
            torch.save(value, os.path.join(out_dir, f"{name}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "--cuda":
        cuda_case(sys.argv[2])
    elif sys.argv[1] == "--documents":
        documents_main(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3])
