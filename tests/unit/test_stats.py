"""Per-step stream statistics."""

import pytest
import torch

from longred_pl.stats import StepStats


def test_means_tokens_per_second_and_nonfinite():
    stats = StepStats()
    for kind, loss, term, tokens in [
        ("long", 2.0, 2.0, 100),
        ("short", 5.0, 1.0, 50),
        ("long", 4.0, 4.0, 100),
    ]:
        stats.begin(torch.device("cpu"), kind)
        stats.end()
        stats.add(kind, torch.tensor(loss), torch.tensor(term), tokens)
    stats.seconds["long"] = 2.0  # replace the measured time with a known one
    m = stats.metrics()
    assert m["train/loss"] == pytest.approx((2 + 5 + 4) / 3)
    assert m["train/loss_long"] == pytest.approx(3.0)
    assert m["train/loss_short"] == pytest.approx(1.0)
    assert m["train/tokens_per_sec_long"] == pytest.approx(100.0)
    assert "train/loss_s2l" not in m
    assert stats.nonfinite_kinds() == []
    stats.add("s2l", torch.tensor(float("nan")), torch.tensor(float("nan")), 10)
    assert stats.nonfinite_kinds() == ["s2l"]
    stats.close()
    stats.begin(torch.device("cpu"), "long")  # a closed step starts afresh
    assert stats.metrics() == {}
