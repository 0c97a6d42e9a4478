"""Skipped position ids: layout invariants, hand-computed bounds, determinism, and a
goodness-of-fit test of CREAM's stretch ratio r (docs/method.md, "Skipped position ids")."""

import math

import pytest
import torch

from longred_pl import positions
from longred_pl.positions import (
    POSITION_SCHEMES,
    cream_end_bounds,
    cream_position_ids,
    cream_sample_r,
    get_position_scheme,
    pose_position_ids,
    uniform_position_ids,
)

# (seq_len, target_len, number of seeds); (100, 450) is not a multiple (k = 4, kT = 400).
PAIRS = [(64, 256, 40), (100, 400, 40), (100, 450, 40), (256, 1024, 20), (8192, 32768, 3)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_common(ids_BT, seq_len, target_len):
    assert ids_BT.dtype == torch.long
    assert ids_BT.shape[1] == seq_len
    assert (ids_BT[:, 0] == 0).all()
    assert (ids_BT.diff(dim=1) > 0).all()
    assert int(ids_BT.max()) < target_len


def head_of(ids_T, seq_len, target_len):
    """The head (= tail) length whose layout `ids_T` follows; fails if there is none."""
    k = target_len // seq_len
    for h in (seq_len // 3, 4 * k):
        head_ok = torch.equal(ids_T[:h], torch.arange(h))
        tail_ok = torch.equal(ids_T[seq_len - h :], torch.arange(k * seq_len - h, k * seq_len))
        middle_ok = (ids_T[h : seq_len - h].diff() == 1).all()
        if head_ok and tail_ok and middle_ok:
            return h
    raise AssertionError(f"ids do not follow a head/middle/tail layout: {ids_T.tolist()}")


@pytest.mark.parametrize("scheme", ["cream", "uniform"])
@pytest.mark.parametrize("seq_len,target_len,seeds", PAIRS)
def test_longred_layout_invariants(scheme, seq_len, target_len, seeds):
    fn = get_position_scheme(scheme)
    batch = 2 if seq_len > 1000 else 8
    heads = set()
    for seed in range(seeds):
        ids_BT = fn(batch, seq_len, target_len, gen(seed))
        assert_common(ids_BT, seq_len, target_len)
        row_heads = {head_of(row, seq_len, target_len) for row in ids_BT}
        assert len(row_heads) == 1  # drawn once per call by default
        heads |= row_heads
    if seeds >= 20:  # each head length has probability 1/2 per call
        assert heads == {seq_len // 3, 4 * (target_len // seq_len)}


@pytest.mark.parametrize("scheme", ["cream", "uniform"])
def test_head_tail_per_sample(scheme):
    fn = get_position_scheme(scheme)
    ids_BT = fn(64, 100, 400, gen(0), head_tail_per_sample=True)
    assert_common(ids_BT, 100, 400)
    assert {head_of(row, 100, 400) for row in ids_BT} == {100 // 3, 16}


@pytest.mark.parametrize("num_chunks", [1, 2, 5])
@pytest.mark.parametrize("seq_len,target_len,seeds", PAIRS)
def test_pose_invariants(num_chunks, seq_len, target_len, seeds):
    for seed in range(min(seeds, 10)):
        ids_BT = pose_position_ids(4, seq_len, target_len, gen(seed), num_chunks=num_chunks)
        assert_common(ids_BT, seq_len, target_len)
        jumps = (ids_BT.diff(dim=1) != 1).sum(dim=1)
        assert (jumps <= num_chunks - 1).all()


def test_none_is_arange():
    ids_BT = get_position_scheme("none")(3, 10, 40)
    assert torch.equal(ids_BT, torch.arange(10).expand(3, 10))


def test_cream_end_bounds_hand_computed():
    # T = 100, head = tail = 16, m = 68. r = 3: [16 + 67 * 1.5, 150 - 17] = [116.5, 133] -> [117, 133]
    head = torch.tensor([16, 16, 16])
    lo, hi = cream_end_bounds(torch.tensor([2, 3, 8]), head, head, 100)
    # r = 2: [16 + 67, 100 - 17] = [83, 83] (contiguous); r = 8 = 2k: [16 + 268, 400 - 17]
    assert lo.tolist() == [83, 117, 284]
    assert hi.tolist() == [83, 133, 383]


@pytest.mark.parametrize("r,lo,hi", [(2, 55, 55), (3, 79, 87), (8, 196, 247)])
def test_cream_end_spans_its_interval(r, lo, hi):
    # T = 64, T_long = 256 (k = 4), head = tail = 8, m = 48: end in
    # [ceil(8 + 47 r / 2), floor(32 r - 9)]; a fixed r via r_min = r_max.
    ids_BT = cream_position_ids(3000, 64, 256, gen(1), r_min=r, r_max=r, head_tail_lengths=(8, 8))
    end_B = ids_BT[:, 64 - 8 - 1]
    assert int(end_B.min()) == lo and int(end_B.max()) == hi


def test_uniform_end_spans_its_interval():
    # end in [T - tail, T_long - tail - 1] = [48, 239] for T = 64, T_long = 256, tail = 16
    ids_BT = uniform_position_ids(3000, 64, 256, gen(2), head_tail_lengths=(16, 16))
    end_B = ids_BT[:, 64 - 16 - 1]
    assert int(end_B.min()) == 48 and int(end_B.max()) == 239


def test_uniform_caps_end_below_tail_when_not_a_multiple():
    # T = 100, T_long = 450: tail ends at kT - 1 = 399, so end <= 400 - tail - 1, not 450 - tail - 1
    ids_BT = uniform_position_ids(3000, 100, 450, gen(3), head_tail_lengths=(16, 16))
    assert int(ids_BT[:, 100 - 16 - 1].max()) == 400 - 16 - 1
    assert_common(ids_BT, 100, 450)


@pytest.mark.parametrize("scheme", ["cream", "uniform"])
def test_k_equal_one_gives_contiguous_ids(scheme):
    ids_BT = get_position_scheme(scheme)(16, 64, 100, gen(0))
    assert torch.equal(ids_BT, torch.arange(64).expand(16, 64))


def test_cream_uses_cream_sample_r(monkeypatch):
    # r = 2 everywhere puts the middle right after the head: ids 0..T-tail-1, then the tail.
    monkeypatch.setattr(positions, "cream_sample_r", lambda n, *a, **kw: torch.full((n,), 2))
    for row in cream_position_ids(8, 100, 400, gen(0)):
        h = head_of(row, 100, 400)
        assert torch.equal(row[: 100 - h], torch.arange(100 - h))


@pytest.mark.parametrize("scheme", sorted(POSITION_SCHEMES))
def test_deterministic_per_seed_and_different_across_seeds(scheme):
    fn = get_position_scheme(scheme)
    a = fn(16, 256, 1024, gen(7))
    assert torch.equal(a, fn(16, 256, 1024, gen(7)))
    if scheme != "none":
        assert not torch.equal(a, fn(16, 256, 1024, gen(8)))
        g = gen(7)
        fn(16, 256, 1024, g)
        assert not torch.equal(a, fn(16, 256, 1024, g))  # the state advances


@pytest.mark.parametrize("scheme", sorted(POSITION_SCHEMES))
def test_no_generator_leaves_global_rng_alone(scheme):
    state = torch.random.get_rng_state()
    ids_BT = get_position_scheme(scheme)(2, 64, 256, device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    assert_common(ids_BT, 64, 256)


def test_unknown_scheme_names_field_and_choices():
    with pytest.raises(ValueError, match=r"model\.s2l_positions.*cream.*none.*pose.*uniform"):
        get_position_scheme("crem")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0, seq_len=64, target_len=256), "batch_size"),
        (dict(batch_size=2, seq_len=0, target_len=256), "seq_len"),
        (dict(batch_size=2, seq_len=64, target_len=32), r"model\.target_length"),
        # k = 16: head = tail = 4k = 64 cannot fit in 16 tokens
        (dict(batch_size=2, seq_len=16, target_len=256), r"position_kwargs\.head_tail_lengths"),
        (dict(batch_size=2, seq_len=64, target_len=256, head_tail_lengths=(0, 8)), "head_tail"),
        (dict(batch_size=2, seq_len=64, target_len=256, head_tail_prob=1.5), "head_tail_prob"),
        (dict(batch_size=2, seq_len=64, target_len=256, r_min=1), r"r_min/r_max"),
        (dict(batch_size=2, seq_len=64, target_len=256, r_max=9), r"r_min/r_max"),
        (dict(batch_size=2, seq_len=64, target_len=256, r_std=-1.0), "r_std"),
    ],
)
def test_cream_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cream_position_ids(**kwargs)


def test_pose_validation():
    with pytest.raises(ValueError, match=r"position_kwargs\.num_chunks"):
        pose_position_ids(2, 8, 32, num_chunks=9)


# --- goodness of fit of r ------------------------------------------------------------


def exact_r_pmf(k, mean, std):
    """pmf of floor(clip(N(mean, std), 2, 2k)) from the normal CDF (written independently)."""

    def cdf(x):
        return 0.5 * (1.0 + math.erf((x - mean) / (std * math.sqrt(2.0))))

    pmf = {2: cdf(3)}  # all mass below 3, including the clipped lower tail
    pmf.update({r: cdf(r + 1) - cdf(r) for r in range(3, 2 * k)})
    pmf[2 * k] = 1.0 - cdf(2 * k)  # clipped upper tail
    return pmf


def chi_square_p_value(samples, pmf):
    """Pearson chi-square p-value. df = len(pmf) - 1 is even here (2k - 2), where the
    chi-square survival function has the closed form exp(-x/2) sum_{i < df/2} (x/2)^i / i!
    (scipy is not a dependency of the venv)."""
    n = len(samples)
    counts = torch.bincount(samples, minlength=max(pmf) + 1)
    assert int(counts.sum()) == n and all(int(counts[r]) == 0 for r in range(min(pmf)))
    stat = sum((int(counts[r]) - n * p) ** 2 / (n * p) for r, p in pmf.items())
    df = len(pmf) - 1
    assert df % 2 == 0
    half = stat / 2
    return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(df // 2))


ALPHA = 1e-3  # significance level of the goodness-of-fit test


@pytest.mark.parametrize("k", [4, 16])
def test_cream_r_matches_clipped_floored_gaussian(k):
    r_n = cream_sample_r(20_000, k, gen(123))
    assert chi_square_p_value(r_n, exact_r_pmf(k, 1.0 + k, 5.0)) > ALPHA


def test_goodness_of_fit_rejects_wrong_distributions():
    k, n, g = 4, 20_000, gen(321)
    z_n = torch.randn(4 * n, generator=g, dtype=torch.float64) * 5.0 + 5.0
    truncated_n = torch.floor(z_n[(z_n >= 2) & (z_n < 8)][:n]).long()  # truncated, not clipped
    rounded_n = torch.round(torch.clamp(z_n[:n], 2, 8)).long()  # rounded, not floored
    shifted_n = cream_sample_r(n, k, g, mean=5.5)  # wrong mean
    pmf = exact_r_pmf(k, 5.0, 5.0)
    for wrong_n in (truncated_n, rounded_n, shifted_n):
        assert len(wrong_n) == n
        assert chi_square_p_value(wrong_n, pmf) < ALPHA
