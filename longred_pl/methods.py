"""The training methods (``model.method``): which loss term each stream feeds, and its weight.

Each micro-batch comes from one stream (the data module's schedule), so an objective is
a table: for each stream it consumes, the term it computes and that term's weight. The
paper's objective (docs/method.md, Dong et al. 2025, Sec. 3) reads directly off its entry::

    L = L_long + short_weight * L_short + s2l_weight * L_s2l

The equation holds per micro-step; Lightning sums the micro-steps of an optimizer step
(``accumulate_grad_batches`` = the schedule's length), so the effective per-step weights
are the term weights times each stream's share of the schedule (README, "How it works").

Terms (methods of :class:`longred_pl.module.LongReDModule`):

* ``L_long``  next-token cross-entropy at contiguous positions;
* ``L_short`` ``sum_l (1 - cos)`` of the distilled hidden states vs the teacher's;
* ``L_s2l``   ``1 - cos`` of the final hidden state, the student reading skipped positions.

To add an objective: an entry in :data:`METHODS` (or :func:`register_method`), a test,
and a YAML (CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from longred_pl.errors import UserError

TERMS = ("L_long", "L_short", "L_s2l")


@dataclass(frozen=True)
class Method:
    """One objective: stream -> (term, weight); a weight is a number or a weight's name.

    Attributes:
        terms: for each stream kind it consumes, the term computed on that stream and its
            weight (a float, or ``"short_weight"`` / ``"s2l_weight"``: the module's setting).
        needs_teacher: whether the frozen teacher is loaded (the distillation terms).
        description: one line for ``--help`` and the README.
    """

    terms: Mapping[str, tuple[str, float | str]]
    needs_teacher: bool
    description: str

    @property
    def streams(self) -> frozenset[str]:
        """The stream kinds this objective consumes."""
        return frozenset(self.terms)

    def term_for(self, kind: str, name: str) -> str:
        """The term computed on a ``kind`` micro-batch; a UserError for a stream not consumed."""
        if kind not in self.terms:
            raise UserError(
                f"model.method={name!r} consumes the streams {sorted(self.streams)}, got a "
                f"{kind!r} batch; drop {kind!r} from data.schedule"
            )
        return self.terms[kind][0]

    def weights(self, **settings: float) -> dict[str, float]:
        """``{stream: weight}`` with the named weights resolved from ``settings``."""
        return {
            kind: float(settings[w] if isinstance(w, str) else w)
            for kind, (_, w) in self.terms.items()
        }


METHODS: dict[str, Method] = {
    # L = L_long + short_weight * L_short + s2l_weight * L_s2l
    "longred": Method(
        {
            "long": ("L_long", 1.0),
            "short": ("L_short", "short_weight"),
            "s2l": ("L_s2l", "s2l_weight"),
        },
        needs_teacher=True,
        description="LongReD: long-text CE + short-text and short-to-long distillation",
    ),
    # L = L_long (the extended model trained on long text alone)
    "long_cpt": Method(
        {"long": ("L_long", 1.0)},
        needs_teacher=False,
        description="Long+CPT baseline: next-token loss on the long stream only",
    ),
    # L = L_long on every stream, contiguous positions (long and short text mixed)
    "mix_cpt": Method(
        {"long": ("L_long", 1.0), "short": ("L_long", 1.0), "s2l": ("L_long", 1.0)},
        needs_teacher=False,
        description="Mix+CPT baseline: next-token loss on every stream",
    ),
}


def register_method(name: str, method: Method) -> None:
    """Add ``method`` to :data:`METHODS` under ``name`` (its terms must be known)."""
    unknown = [t for t, _ in method.terms.values() if t not in TERMS]
    if unknown:
        raise UserError(f"method {name!r}: unknown term(s) {unknown}; known: {list(TERMS)}")
    METHODS[name] = method


def get_method(name: str) -> Method:
    """The registered objective ``name``; a UserError naming ``model.method`` otherwise."""
    if name not in METHODS:
        raise UserError(
            f"model.method={name!r} is not a known objective; choose one of: {', '.join(METHODS)}"
        )
    return METHODS[name]


# ------------------------------------------------------------ published settings
def default_distill_layers(n_layers: int) -> list[int]:
    """Layer 1 and the final state: the two ends the paper always distils (docs/method.md)."""
    return sorted({1, n_layers}) if n_layers > 1 else [n_layers]


def published_adamw(params: Iterable[Any]) -> Any:
    """The published optimizer: AdamW, lr 2e-5, betas (0.9, 0.95), weight decay 0.1."""
    import torch

    return torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.95), weight_decay=0.1)


def param_groups(model: Any, matrix_names: frozenset[str]) -> list[dict[str, Any]]:
    """The trainable parameters, weight decay on matrices only (not on norms and biases).

    ``matrix_names`` (``fsdp.matrix_parameter_names``, read before sharding) tells the
    matrices: FSDP1 with ``use_orig_params`` shows each rank 1-D views of its shard.
    """
    from longred_pl.fsdp import clean_name

    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            name = clean_name(name)
            seen.add(name)
            (decay if name in matrix_names else no_decay).append(param)
    if not matrix_names <= seen:
        lost = sorted(matrix_names - seen)
        raise RuntimeError(
            f"{len(lost)} matrices read at load are not parameters of the sharded student "
            f"(e.g. {lost[0]!r}): weight decay would silently skip them"
        )
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
