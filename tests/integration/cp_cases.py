"""Inputs shared by the CP worker (2 ranks) and its single-process reference.

Shape legend: B batch, H heads, K key/value heads, T tokens, D head dim.
"""

from __future__ import annotations

import torch

from longred_pl.positions import cream_position_ids

SCALE = 0.3  # not 1/sqrt(D): proves the scale reaches the kernel
TARGET = 256  # student window of the tiny Llama (teacher window 64)
LENGTH = 64  # tokens of the Llama cases: 4 chunks of 16 at cp=2
VOCAB = 128


def attention_inputs() -> tuple[torch.Tensor, ...]:
    """GQA inputs: 4 query heads on 2 key/value heads, 32 tokens, and an output weight."""
    gen = torch.Generator().manual_seed(0)
    q_BHTD = torch.randn(2, 4, 32, 8, generator=gen)
    k_BKTD = torch.randn(2, 2, 32, 8, generator=gen)
    v_BKTD = torch.randn(2, 2, 32, 8, generator=gen)
    w_BHTD = torch.randn(2, 4, 32, 8, generator=gen)
    return q_BHTD, k_BKTD, v_BKTD, w_BHTD


def long_input_ids() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, LENGTH), generator=gen)


def s2l_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and skipped position ids: row 0 CREAM, row 1 gaps of 1-4 everywhere.

    Row 1 jumps inside every chunk and across every chunk boundary.
    """
    gen = torch.Generator().manual_seed(2)
    ids_BT = torch.randint(0, VOCAB, (2, LENGTH), generator=gen)
    cream_T = cream_position_ids(1, LENGTH, TARGET, generator=gen)[0]
    steps_T = torch.randint(1, 5, (LENGTH,), generator=gen)
    steps_T[0] = 0
    gaps_T = torch.cumsum(steps_T, 0)
    return ids_BT, torch.stack([cream_T, gaps_T])


def hidden_states(model: torch.nn.Module, indices: list[int], **inputs) -> dict[int, torch.Tensor]:
    """Hidden states ``indices`` (0 = embeddings, n = final norm) of one forward, by hooks.

    Kept here rather than imported from the library so that these checks do not move with
    the library's forward helpers.
    """
    base = model.base_model
    n = len(base.layers)
    states: dict[int, torch.Tensor] = {}

    def hook(index):
        def record(_module, _args, output):
            states[index] = output[0] if isinstance(output, tuple) else output

        return record

    targets = {
        i: base.embed_tokens if i == 0 else base.norm if i == n else base.layers[i - 1]
        for i in indices
    }
    handles = [m.register_forward_hook(hook(i)) for i, m in targets.items()]
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return states


# ---------------------------------------------------------------- document masks (issue 22)
DOC_LENGTH = 48  # 8 chunks of 6 at cp=4, 4 chunks of 12 at cp=2
DOC_BLOCK = 4  # a small block: query and key blocks cross chunk and document boundaries


def document_ids() -> torch.Tensor:
    """Three packed rows ``[3, 48]``: documents straddling shard boundaries, with ones of
    length 1 (row 0); many short documents, a third of length 1 (row 1); one document (row 2).
    """
    lengths = [
        [5, 1, 14, 1, 20, 7],
        [1, 1, 3, 2, 5, 1, 4, 1, 2, 3, 1, 1, 5, 4, 2, 3, 1, 4, 4],
        [DOC_LENGTH],
    ]
    rows = []
    for row in lengths:
        assert sum(row) == DOC_LENGTH
        rows.append(torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)))
    return torch.stack(rows)


def document_attention_inputs() -> tuple[torch.Tensor, ...]:
    """GQA inputs for :func:`document_ids`: 4 query heads on 2 key/value heads, and a weight."""
    gen = torch.Generator().manual_seed(3)
    b, t = document_ids().shape
    q_BHTD = torch.randn(b, 4, t, 8, generator=gen)
    k_BKTD = torch.randn(b, 2, t, 8, generator=gen)
    v_BKTD = torch.randn(b, 2, t, 8, generator=gen)
    w_BHTD = torch.randn(b, 4, t, 8, generator=gen)
    return q_BHTD, k_BKTD, v_BKTD, w_BHTD


def restarting_positions(document_ids_BT: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 at each document start."""
    pos_T = torch.arange(document_ids_BT.shape[1])
    new_BT = torch.ones_like(document_ids_BT, dtype=torch.bool)
    new_BT[:, 1:] = document_ids_BT[:, 1:] != document_ids_BT[:, :-1]
    return pos_T - torch.where(new_BT, pos_T, 0).cummax(dim=1).values


def document_llama_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids ``[2, 64]``, their document ids and a weight on the final hidden states."""
    gen = torch.Generator().manual_seed(4)
    lengths = [[9, 1, 22, 1, 17, 14], [LENGTH]]
    docs_BT = torch.stack(
        [torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r)) for r in lengths]
    )
    ids_BT = torch.randint(0, VOCAB, (2, LENGTH), generator=gen)
    w_BTD = torch.randn(2, LENGTH, 32, generator=gen)
    return ids_BT, docs_BT, w_BTD
