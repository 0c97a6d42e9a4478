"""Golden losses: the first logged losses of a fixed tiny run must equal recorded values.

Like torchtune's recipe tests: a fixed tiny Llama (``save_tiny_llama``, seed 0), fixed
random-token shards, the published objective and a 4-micro-step schedule. The values
below were recorded on 2026-12-02 (torch 2.13.0 CPU, fp32) from this same run before the
architecture refactor; any change to the losses, the position ids, the data order or the
weighting shows up here. Tolerance: relative 1e-4, absolute 1e-6 (the distillation terms are 1 - cos, near 0) (fp32 reduction order may differ across
CPUs and thread counts; a real change of the recipe moves these by far more).
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path

import pytest
from tests_helpers import fit_config

from longred_pl.cli import main

# step -> {metric: value}, recorded on the code of commit 9f0958e. To re-record after an
# intended change of the losses: `LONGRED_RECORD_GOLDEN=1 pytest tests/regression` rewrites
# the literal below (`record_golden`) and the commit says why the values moved.
GOLDEN = {
    0: {
        "train/loss": 2.4288527965545654,
        "train/loss_long": 4.857702255249023,
        "train/loss_s2l": 6.556510925292969e-07,
        "train/loss_short": 0.0,
    },
    1: {
        "train/loss": 2.4479031562805176,
        "train/loss_long": 4.8619065284729,
        "train/loss_s2l": 0.002691984176635742,
        "train/loss_short": 0.008176088333129883,
    },
    2: {
        "train/loss": 2.446174383163452,
        "train/loss_long": 4.85939884185791,
        "train/loss_s2l": 0.0029960274696350098,
        "train/loss_short": 0.007187783718109131,
    },
}


def run_tiny_fit(tmp_path, tiny_llama, tiny_shards, steps=3):
    config = fit_config(tmp_path, tiny_llama, tiny_shards, max_steps=steps, every=100)
    main(["fit", "--config", config, "--trainer.limit_val_batches", "0"])
    (path,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    rows: dict[int, dict[str, float]] = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            for key, value in row.items():
                if key.startswith("train/loss") and value:
                    rows.setdefault(step, {})[key] = float(value)
    return rows


def golden_literal(rows: dict[int, dict[str, float]]) -> str:
    """``rows`` as the ``GOLDEN = {...}`` literal of this file (what re-recording pastes)."""
    lines = ["GOLDEN = {"]
    for step in sorted(rows):
        lines.append(f"    {step}: {{")
        lines += [f"        {name!r}: {value!r}," for name, value in sorted(rows[step].items())]
        lines.append("    },")
    return "\n".join([*lines, "}"])


def record_golden(rows: dict[int, dict[str, float]], path: Path = Path(__file__)) -> None:
    """Replace the ``GOLDEN = {...}`` literal of ``path`` with ``rows``."""
    text = path.read_text()
    start = text.index("GOLDEN = {")
    end = text.index("\n}\n", start) + len("\n}")
    path.write_text(text[:start] + golden_literal(rows) + text[end:])


def test_first_losses_equal_recorded_values(tmp_path, tiny_llama, tiny_shards):
    rows = run_tiny_fit(tmp_path, tiny_llama, tiny_shards)
    if os.environ.get("LONGRED_RECORD_GOLDEN") == "1":
        record_golden(rows)
        pytest.skip(f"recorded {len(rows)} steps into {Path(__file__).name}")
    record = f"re-record with LONGRED_RECORD_GOLDEN=1; the values now:\n{golden_literal(rows)}"
    assert sorted(rows) == sorted(GOLDEN), record
    for step, expected in GOLDEN.items():
        for name, value in expected.items():
            assert rows[step][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (
                f"step {step} {name}: {rows[step][name]} != {value}; {record}"
            )


def test_recording_rewrites_only_the_literal(tmp_path):
    def parts(text: str) -> tuple[str, str, str]:
        start = text.index("GOLDEN = {")
        end = text.index("\n}\n", start) + len("\n}")
        return text[:start], text[start:end], text[end:]

    copy = tmp_path / "golden.py"
    copy.write_text(Path(__file__).read_text())
    rows = {0: {"train/loss": 1.5}, 1: {"train/loss": 1.25}}
    record_golden(rows, copy)
    before, literal, after = parts(copy.read_text())
    namespace: dict = {}
    exec(literal, namespace)  # noqa: S102 (our own literal)
    assert namespace["GOLDEN"] == rows
    old = parts(Path(__file__).read_text())
    assert (before, after) == (old[0], old[2])


def test_golden_literal_round_trips():
    namespace: dict = {}
    exec(golden_literal(GOLDEN), namespace)  # noqa: S102 (our own literal)
    assert namespace["GOLDEN"] == GOLDEN
