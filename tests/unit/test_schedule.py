"""Micro-step schedule: the published pattern, ratios, resume counting."""

import pytest

from longred_pl.data.schedule import (
    PUBLISHED_SCHEDULE,
    build_schedule,
    count_before,
    interleave_ratios,
    kind_at,
)


def test_published_pattern_matches_paper():
    p = build_schedule()
    assert len(p) == 16
    assert [i for i, k in enumerate(p) if k == "long"] == list(range(0, 16, 2))
    assert [i for i, k in enumerate(p) if k == "s2l"] == [1, 3]
    assert [i for i, k in enumerate(p) if k == "short"] == [5, 7, 9, 11, 13, 15]


def test_ratios_counts_and_spread():
    p = interleave_ratios({"long": 8, "s2l": 2, "short": 6})
    assert len(p) == 16
    assert (p.count("long"), p.count("s2l"), p.count("short")) == (8, 2, 6)
    assert p == build_schedule(ratios={"long": 8, "s2l": 2, "short": 6})
    # evenly spread: the longest run of one kind is short
    runs, longest = 1, 1
    for prev, cur in zip(p, p[1:]):
        runs = runs + 1 if cur == prev else 1
        longest = max(longest, runs)
    assert longest <= 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": ["long", "medium"]}, "unknown stream 'medium'"),
        ({"schedule": []}, "empty"),
        ({"ratios": {"long": 0}}, "positive"),
        ({"ratios": {"long": -1, "short": 1}}, ">= 0"),
        ({"schedule": ["long"], "ratios": {"long": 1}}, "not both"),
    ],
)
def test_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_schedule(**kwargs)


@pytest.mark.parametrize("modulus", [1, 2, 3, 5])
@pytest.mark.parametrize("stop", [0, 1, 15, 16, 17, 100, 333])
def test_count_before_matches_brute_force(modulus, stop):
    for residue in range(modulus):
        for kind in ("long", "short", "s2l"):
            brute = sum(
                1
                for n in range(stop)
                if n % modulus == residue and kind_at(PUBLISHED_SCHEDULE, n) == kind
            )
            assert count_before(PUBLISHED_SCHEDULE, kind, stop, residue, modulus) == brute
