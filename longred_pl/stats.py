"""Per-optimizer-step bookkeeping of the training streams.

Losses are summed as detached tensors and read back once per optimizer step (one host
sync per step instead of one per micro-step). Tokens/s of a stream is its tokens over
the time of its micro-steps (forward and backward, not the optimizer update): wall time
on CPU, CUDA events on GPU (read once per step, so timing adds no per-micro-step
synchronisation).

Life of one optimizer step: ``begin`` / ``add`` / ``end`` per micro-step (the last
micro-step is ended in ``on_before_optimizer_step``, after its backward and before the
update), then ``metrics`` and ``close``; the next ``begin`` starts a fresh step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

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
        self.events: list[tuple[str, Any, Any]] = []
        self._open: Any = None
        self._kind: str | None = None
        self.closed = False

    def add(self, kind: str, loss: torch.Tensor, term: torch.Tensor, tokens: int) -> None:
        """One micro-step: its weighted ``loss``, unweighted ``term`` and token count."""
        self.loss[kind] = self.loss[kind] + loss if kind in self.loss else loss
        self.term[kind] = self.term[kind] + term if kind in self.term else term
        self.count[kind] += 1
        self.tokens[kind] += tokens

    def begin(self, device: torch.device, kind: str) -> None:
        """Start timing a micro-step of stream ``kind`` (a closed step is reset first)."""
        if self.closed:
            self.reset()
        self._kind = kind
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._open = event
        else:
            self._open = time.perf_counter()

    def end(self) -> None:
        """Stop timing the micro-step begun last; a no-op when it has already ended."""
        if self._open is None or self._kind is None:
            return
        if isinstance(self._open, float):
            self.seconds[self._kind] += time.perf_counter() - self._open
        else:
            stop = torch.cuda.Event(enable_timing=True)
            stop.record()
            self.events.append((self._kind, self._open, stop))
        self._open = None

    def close(self) -> None:
        """Mark the optimizer step as read; the next ``begin`` resets."""
        self.closed = True

    def _read_events(self) -> None:
        if self.events:
            self.events[-1][2].synchronize()
            for kind, start, stop in self.events:
                self.seconds[kind] += start.elapsed_time(stop) / 1000.0
            self.events = []

    def nonfinite_kinds(self) -> list[str]:
        """Streams whose loss was NaN or infinite at some micro-step of this step."""
        return [k for k, v in self.loss.items() if not bool(torch.isfinite(v))]

    def metrics(self) -> dict[str, float]:
        """``train/loss`` (mean weighted loss), ``train/loss_<kind>``, ``train/tokens_per_sec_<kind>``.

        Only the streams that had micro-steps in this optimizer step appear.
        """
        self._read_events()
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
