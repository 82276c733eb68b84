"""uld_kernels.rng: the counter-based noise is the hash it claims to be, uniform, and keyed by (seed, step)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from uld_kernels.rng import exponential, fmix32, gumbel_noise, stream_keys, token_bits, unit_interval

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def fmix32_python(x: int) -> int:
    """MurmurHash3's fmix32 on Python ints, from its published definition."""
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_fmix32_matches_murmur3_finalizer_on_edge_and_random_values() -> None:
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
    values += torch.randint(0, 1 << 32, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    got = fmix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [fmix32_python(v) for v in values]
    assert fmix32_python(1) == 0x514E28B7  # MurmurHash3's reference value for fmix32(1)


def test_token_bits_are_distinct_within_a_row_of_the_largest_vocabulary() -> None:
    keys = stream_keys(torch.tensor([0, 7, -1]), torch.tensor([0, 3, 1 << 40]))
    bits = token_bits(keys, torch.arange(262144))
    for row in bits:
        assert row.unique().numel() == 262144  # two keyed bijections of the id: no two tokens share noise
    assert bits.min() >= 0 and bits.max() < (1 << 32)


def test_distinct_seeds_give_distinct_keys_at_every_step() -> None:
    seeds = torch.cat([torch.arange(-5000, 5000), (1 << 40) + torch.arange(100), torch.tensor([(1 << 63) - 1])])
    for step in (0, 1, 12345):
        keys = stream_keys(seeds, torch.full_like(seeds, step))
        packed = keys[:, 0] * (1 << 32) + keys[:, 1]
        assert packed.unique().numel() == seeds.numel()
    steps = torch.arange(10000)
    keys = stream_keys(torch.zeros_like(steps), steps)
    assert (keys[:, 0] * (1 << 32) + keys[:, 1]).unique().numel() == steps.numel()


def test_keys_depend_on_every_input_word() -> None:
    base = stream_keys(torch.tensor([5]), torch.tensor([9]))
    for seed, step in [(5 + (1 << 32), 9), (5, 9 + (1 << 32)), (4, 9), (5, 8)]:
        other = stream_keys(torch.tensor([seed]), torch.tensor([step]))
        assert (other != base).all()  # both key words change: each input word reaches both lanes


def test_unit_interval_is_fine_near_zero_and_never_reaches_zero_or_one() -> None:
    bits = torch.tensor([0, 1, 1 << 23, (1 << 32) - 1], dtype=torch.int64)
    w = unit_interval(bits)
    assert w.dtype == torch.float32
    # 2**23 + 0.5 is a float32 tie: it rounds to the even 2**23, the same on every backend.
    assert w.double().tolist() == [2.0**-33, 1.5 * 2.0**-32, 2.0**-9, 1 - 2.0**-24]


def test_exponential_is_accurate_where_the_race_is_decided() -> None:
    w = torch.logspace(-33, -0.0001, 5000, base=2.0, dtype=torch.float64).float()
    got = exponential(w).double()
    want = -torch.log1p(-w.double())
    assert ((got - want).abs() / want).max() < 5e-7  # a few float32 ulps, also at w ~ 1e-10 (E ~ 1e-10)
    assert torch.isfinite(gumbel_noise(stream_keys(torch.arange(8), torch.zeros(8, dtype=torch.int64)),
                                       torch.arange(262144))).all()  # fmt: skip


def test_noise_is_uniform_and_gumbel_distributed_across_rows_and_tokens() -> None:
    keys = stream_keys(torch.arange(64), torch.arange(64) * 3)
    bits = token_bits(keys, torch.arange(4096))  # (64, 4096)
    u = unit_interval(bits).double().flatten()
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    g = gumbel_noise(keys, torch.arange(4096)).double().flatten()
    n = g.numel()
    assert abs(g.mean().item() - 0.5772156649) < 5 * math.sqrt(math.pi**2 / 6 / n)
    assert abs(g.var().item() - math.pi**2 / 6) < 0.02
    # Neighbouring tokens, neighbouring steps, neighbouring seeds: uncorrelated.
    grid = unit_interval(bits).double()
    limit = 5 / math.sqrt(grid[:, 1:].numel())
    assert abs(torch.corrcoef(torch.stack([grid[:, 1:].flatten(), grid[:, :-1].flatten()]))[0, 1]) < limit
    next_step = unit_interval(token_bits(stream_keys(torch.arange(64), torch.arange(64) * 3 + 1), torch.arange(4096)))
    assert abs(torch.corrcoef(torch.stack([grid.flatten(), next_step.double().flatten()]))[0, 1]) < limit
    assert abs(torch.corrcoef(torch.stack([grid[1:].flatten(), grid[:-1].flatten()]))[0, 1]) < limit


def test_stream_keys_want_int64() -> None:
    with pytest.raises(TypeError, match="int64"):
        stream_keys(torch.tensor([1], dtype=torch.int32), torch.tensor([0]))
