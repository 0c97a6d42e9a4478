"""Per-optimizer-step bookkeeping of the training streams.

Losses are summed as detached tensors and read back once per optimizer step (one host
sync per step instead of one per micro-step). Tokens/s of a stream is its tokens over
the wall time of its micro-steps (forward and backward).
"""

from __future__ import annotations

from collections import defaultdict

import torch

KINDS = ("long", "short", "s2l")


class StepStats:
    """Sums over the micro-steps of one optimizer step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss: dict[str, torch.Tensor] = {}
        self.term: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, kind: str, loss: torch.Tensor, term: torch.Tensor, tokens: int) -> None:
        """One micro-step: its weighted ``loss``, unweighted ``term`` and token count."""
        self.loss[kind] = self.loss[kind] + loss if kind in self.loss else loss
        self.term[kind] = self.term[kind] + term if kind in self.term else term
        self.count[kind] += 1
        self.tokens[kind] += tokens

    def add_time(self, kind: str, seconds: float) -> None:
        self.seconds[kind] += seconds

    def nonfinite_kinds(self) -> list[str]:
        """Streams whose loss was NaN or infinite at some micro-step of this step."""
        return [k for k, v in self.loss.items() if not bool(torch.isfinite(v))]

    def metrics(self) -> dict[str, float]:
        """``train/loss`` (mean weighted loss), ``train/loss_<kind>``, ``train/tokens_per_sec_<kind>``."""
        out: dict[str, float] = {}
        steps = sum(self.count.values())
        if steps:
            out["train/loss"] = float(sum(self.loss.values())) / steps
        for kind in KINDS:
            if self.count[kind]:
                out[f"train/loss_{kind}"] = float(self.term[kind]) / self.count[kind]
            if self.seconds[kind] > 0:
                out[f"train/tokens_per_sec_{kind}"] = self.tokens[kind] / self.seconds[kind]
        return out
