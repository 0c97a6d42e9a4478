"""Held-out perplexity of the student (and the teacher on short text), token-weighted.

``val/loss_<stream>``, ``val/ppl_<stream>`` (``short``, ``long``), the teacher's
``val/loss_short_teacher`` / ``val/ppl_short_teacher``, and ``val/ppl_retention`` =
teacher ppl / student ppl on short text (1.0 = no loss); ``test/...`` under ``longred test``.
Sums of NLL and token counts are kept (not means of per-batch means) and summed over
ranks before the division (``sync_context``: torchmetrics syncs ``compute`` only).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from longred_pl.eval.metrics import TokenPerplexity

NAMES = ("short", "short_teacher", "long")


class HeldOutPerplexity(nn.Module):
    """Token-weighted perplexities over one validation (or test) epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({name: TokenPerplexity() for name in NAMES})

    def update(self, name: str, nll: torch.Tensor) -> None:
        """Add per-token NLLs of ``name`` (``short``, ``short_teacher`` or ``long``)."""
        self.metrics[name].update(nll)

    def log_and_reset(self, module: Any, split: str) -> dict[str, float]:
        """Log ``<split>/loss_*``, ``<split>/ppl_*``, ``<split>/ppl_retention``; reset."""
        losses = {}
        for name, metric in self.metrics.items():
            if metric.update_called:
                losses[name] = float(metric.compute_loss())  # summed over ranks
                module.log(f"{split}/loss_{name}", losses[name])
                module.log(f"{split}/ppl_{name}", math.exp(min(losses[name], 50.0)))
            metric.reset()
        if "short" in losses and "short_teacher" in losses:
            retention = math.exp(losses["short_teacher"] - losses["short"])
            module.log(f"{split}/ppl_retention", retention)
        return losses
