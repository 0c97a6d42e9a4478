"""The frozen teacher: loaded once, never trained, never saved, never in train mode.

:class:`FrozenTeacher` owns everything the original model needs as a teacher:

* loading from its local directory (``local_files_only``) with its own dtype;
* freezing: ``requires_grad_(False)`` (it is outside the optimizer, which only sees the
  student) and forwards under ``torch.no_grad()`` (not ``inference_mode``: its outputs
  meet the student's autograd graph in the cosine loss);
* the eval lock: ``train(True)`` leaves it in eval mode;
* FSDP2: the root unit is resharded after each no-grad forward (FSDP2 keeps the root
  gathered after forward for a backward that never comes).

``LongReDModule`` *holds* its teacher without registering it as a submodule
(``LongReDModule.teacher``), so the teacher is outside the module's ``parameters()``,
``state_dict()`` (checkpoints: it is re-loaded from its path), ``train()`` and every
wrapper Lightning applies (DDP, FSDP1's root unit); the module shards it itself
(``fsdp.placement``, ``fsdp.wrap_teacher``) and moves it with itself (``_apply``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from longred_pl.forward import check_model_head, logit_head, run_model
from longred_pl.models import freeze


class FrozenTeacher(nn.Module):
    """A frozen Hugging Face causal LM used as the distillation target.

    Args:
        model: the loaded original model (frozen here).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = freeze(model)
        self.head = logit_head(model)
        self.train(False)  # the eval lock: it never leaves eval mode

    @classmethod
    def load(
        cls,
        path: str,
        config: Any,
        attn_implementation: str,
        dtype: str,
        trust_remote_code: bool = False,
        placement: Any = None,
    ) -> FrozenTeacher:
        """Load the teacher from ``path`` with its own (unextended) ``config``.

        ``placement`` (``models.Placement``): where and how it is built (sharded, on a device).
        """
        from longred_pl.models import load_causal_lm

        model = load_causal_lm(
            path, config, attn_implementation, dtype, trust_remote_code, placement
        )
        check_model_head(model, trust_remote_code)
        return cls(model)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Always eval mode (the eval lock)."""
        return super().train(False)

    @torch.no_grad()
    def hidden_states(
        self,
        input_ids_BT: torch.Tensor,
        indices: Sequence[int],
        position_ids_BT: torch.Tensor | None = None,
        packed: bool = False,
    ) -> dict[int, torch.Tensor]:
        """Hidden states ``indices`` at contiguous (or given) positions, no grad (``packed``:
        each document of a packed sample read on its own, ``forward.run_model``)."""
        states, _ = run_model(self.model, input_ids_BT, indices, position_ids_BT, packed=packed)
        self.reshard()
        return states

    def reshard(self) -> None:
        """Free an FSDP2 root's gathered weights after a forward without backward."""
        reshard = getattr(self.model, "reshard", None)
        if callable(reshard):
            reshard()
