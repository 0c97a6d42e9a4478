"""Which stream feeds each micro-step of an optimizer step.

The published LongReD run (docs/method.md, "Schedule of the published run") splits one
optimizer step into 16 micro-batches: micro-steps 0, 2, ..., 14 are long, 1 and 3 are
short-to-long (s2l), 5, 7, ..., 15 are short. The schedule is a pure function of the
config, so every rank derives the same kind for the same micro-step (the teacher runs
only on short/s2l micro-steps; sharded models would deadlock if ranks disagreed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import gcd

from longred_pl.errors import UserError

KINDS = ("long", "short", "s2l")

PUBLISHED_SCHEDULE: tuple[str, ...] = (
    "long",
    "s2l",
    "long",
    "s2l",
    "long",
    "short",
    "long",
    "short",
    "long",
    "short",
    "long",
    "short",
    "long",
    "short",
    "long",
    "short",
)


def interleave_ratios(ratios: Mapping[str, int]) -> list[str]:
    """Spread ``ratios`` (kind -> micro-steps per period) evenly over one period.

    Smooth weighted round-robin: at each slot every kind gains its weight and the kind
    with the largest credit (ties broken by the order of ``KINDS``) is picked and pays the
    period length. ``{"long": 8, "s2l": 2, "short": 6}`` gives a 16-step period with the
    same counts as the published pattern (not the same order: use ``schedule`` for that).
    """
    weights = {k: int(v) for k, v in ratios.items() if int(v) > 0}
    for kind, count in ratios.items():
        if kind not in KINDS:
            raise UserError(f"data.ratios: unknown stream {kind!r}; use one of {list(KINDS)}")
        if int(count) < 0:
            raise UserError(f"data.ratios[{kind!r}] must be >= 0, got {count}")
    if not weights:
        raise UserError("data.ratios must give at least one stream a positive count")
    period = sum(weights.values())
    credit = dict.fromkeys(weights, 0)
    order: list[str] = []
    for _ in range(period):
        for kind in weights:
            credit[kind] += weights[kind]
        pick = max(weights, key=lambda k: (credit[k], -KINDS.index(k)))
        credit[pick] -= period
        order.append(pick)
    return order


def build_schedule(
    schedule: Sequence[str] | None = None, ratios: Mapping[str, int] | None = None
) -> list[str]:
    """The micro-step pattern: ``schedule`` as given, else from ``ratios``, else the published one."""
    if schedule is not None and ratios is not None:
        raise UserError("set either data.schedule or data.ratios, not both")
    if ratios is not None:
        return interleave_ratios(ratios)
    pattern = list(PUBLISHED_SCHEDULE if schedule is None else schedule)
    if not pattern:
        raise UserError("data.schedule is empty; give at least one of 'long', 'short', 's2l'")
    for kind in pattern:
        if kind not in KINDS:
            raise UserError(
                f"data.schedule: unknown stream {kind!r}; each entry must be one of {list(KINDS)}"
            )
    return pattern


def kind_at(pattern: Sequence[str], step: int) -> str:
    """Kind of global micro-step ``step``."""
    return pattern[step % len(pattern)]


def count_before(pattern: Sequence[str], kind: str, stop: int, residue: int, modulus: int) -> int:
    """How many micro-steps ``n < stop`` with ``n % modulus == residue`` are of ``kind``.

    Used to resume a stream: a consumer that serves the micro-steps of one residue class
    skips exactly the samples it had served before ``stop``.
    """
    if stop <= 0:
        return 0
    period = len(pattern) * modulus // gcd(len(pattern), modulus)
    per_period = sum(
        1 for n in range(residue, period, modulus) if pattern[n % len(pattern)] == kind
    )
    full, rest = divmod(stop, period)
    tail = sum(1 for n in range(residue, rest, modulus) if pattern[n % len(pattern)] == kind)
    return full * per_period + tail
