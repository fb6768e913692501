"""The noise stream of DESIGN.md section 3: Philox known answers, normality, (seed, offset) addressing."""
import math

import pytest
import torch

import fastscore
from fastscore.noise import normal_stream, philox4x32

from helpers import backend_params

KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(tuple(torch.tensor([w], dtype=torch.int64) for w in counter), key)
    assert tuple(int(o) for o in out) == expected


def test_lanes_follow_box_muller_of_philox_words():
    seed, block = 0x0123456789ABCDEF, 5
    u = philox4x32(tuple(torch.tensor([w], dtype=torch.int64) for w in (block, 0, 0, 0)),
                   (seed & 0xFFFFFFFF, seed >> 32))
    f = [((int(w) >> 8) + 0.5) * 2.0**-24 for w in u]
    expect = [math.sqrt(-2 * math.log(f[0])) * math.cos(2 * math.pi * f[1]),
              math.sqrt(-2 * math.log(f[0])) * math.sin(2 * math.pi * f[1]),
              math.sqrt(-2 * math.log(f[2])) * math.cos(2 * math.pi * f[3]),
              math.sqrt(-2 * math.log(f[2])) * math.sin(2 * math.pi * f[3])]
    got = normal_stream(4, seed, offset=4 * block)
    torch.testing.assert_close(got, torch.tensor(expect, dtype=torch.float32), rtol=1e-5, atol=1e-5)


def _normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def test_standard_normal_moments_and_ks():
    n = 10**6
    z = fastscore.randn((n,), seed=20191212).double()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)             # 5 standard errors
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs(((z**3).mean()).item()) < 5 * math.sqrt(15 / n)  # skewness
    s, _ = torch.sort(z)
    cdf = _normal_cdf(s)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.95 / math.sqrt(n), f"KS statistic {ks} rejects normality at the 0.1% level"


def test_different_seeds_are_uncorrelated():
    a = fastscore.randn(100_000, seed=1).double()
    b = fastscore.randn(100_000, seed=2).double()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / math.sqrt(100_000)


@pytest.mark.parametrize("offset", [0, 1, 3, 4, 7, 1001, 2**40 + 3])
def test_offset_slice_is_tail_of_longer_draw(offset):
    long = fastscore.randn(offset % 4096 + 50, seed=7, offset=offset - offset % 4096)
    tail = fastscore.randn(50, seed=7, offset=offset)
    torch.testing.assert_close(tail, long[-50:], rtol=0, atol=0)


def test_shape_is_logical_order_of_flat_stream():
    z = fastscore.randn((2, 3, 4), seed=11, offset=5)
    torch.testing.assert_close(z.flatten(), fastscore.randn(24, seed=11, offset=5), rtol=0, atol=0)


def test_seed_uses_both_key_words():
    a = fastscore.randn(8, seed=3)
    b = fastscore.randn(8, seed=3 + 2**32)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("n,offset", [(1, 0), (37, 3), (1000, 2**33 + 1)])
def test_backend_stream_matches_reference(backend, device, n, offset):
    got = fastscore.randn((n,), seed=2**62 + 12345, offset=offset, device=device, backend=backend)
    want = normal_stream(n, 2**62 + 12345, offset)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
