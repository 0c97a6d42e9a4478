"""The settings of ``longred eval`` as two groups: the held-out data, and the probes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
COPY_MAX_DISTANCE = 4096  # default longest filler of the copy probe (0 = the model's window)
RULER_LIMIT = 20  # default prompts per RULER task and length in `longred eval`


@dataclass(frozen=True)
class EvalData:
    """The held-out text the perplexities read (shards written by longred prepare).

    Args:
        short_data: held-out short-text shards.
        short_seq_len: tokens per short sample (default: the seq_len in the shards' index.json).
        long_data: held-out long-text shards (optional).
        long_seq_len: tokens per long sample (default: the long shards' index.json).
        num_short: short samples evaluated.
        num_long: long samples evaluated.
        batch_size: samples per forward (RULER: prompts per generate call).
        buckets: position buckets of the long perplexity.
        order: which samples: spread (every k-th over the whole stream, as validation
            picks them: the same samples when num_short = the run's val_batches x
            batch_size x world size) or first (the first ones in file order).
        document_mask: read each document of a packed sample on its own: positions
            restart at each document start, attention and labels stay within it, and the
            long perplexity is bucketed by position within documents. Unset: on for
            shards that record document boundaries (`longred prepare --pack`); true:
            refused on shards without; false: off.
    """

    short_data: str
    short_seq_len: int | None = None
    long_data: str | None = None
    long_seq_len: int | None = None
    num_short: int = 32
    num_long: int = 4
    batch_size: int = 4
    buckets: int = 8
    order: Literal["spread", "first"] = "spread"
    document_mask: bool | None = None


@dataclass(frozen=True)
class Probes:
    """The synthetic long-context probes.

    Args:
        copy_span: repeat-copy span length.
        copy_trials: repeat-copy sequences per distance.
        copy_distances: filler lengths (default: 0, powers of 4, up to the window capped
            at copy_max_distance).
        copy_max_distance: longest default filler; 0 = up to each model's window.
        passkey: passkey retrieval (real LMs with a tokenizer); a depth x length heat-map.
        passkey_lengths: prompt lengths in tokens (default: window/16 ... the full window of
            the largest window among the models, for every model).
        passkey_depths: needle depths in [0, 1] (default 0, 0.25, 0.5, 0.75, 1).
        passkey_trials: keys per depth and length.
        ruler_lengths: run RULER's offline tasks at these prompt lengths (needs lm-eval).
        ruler_tasks: RULER tasks (default ruler: every task that runs offline).
        ruler_limit: prompts per RULER task and length (0 = lm-eval's 500).
        seed: seed of the copy, passkey and RULER probes.
    """

    copy_span: int = 16
    copy_trials: int = 8
    copy_distances: list[int] | None = None
    copy_max_distance: int = COPY_MAX_DISTANCE
    passkey: bool = False
    passkey_lengths: list[int] | None = None
    passkey_depths: list[float] | None = None
    passkey_trials: int = 1
    ruler_lengths: list[int] | None = None
    ruler_tasks: list[str] | None = None
    ruler_limit: int | None = RULER_LIMIT
    seed: int = 0
