"""The CPU noise stream's two implementations (csrc/cpu/normal_stream.cpp): AVX2 and scalar draw the
same bits, both match the torch ground truth, and the ops follow whichever is selected."""
import pytest
import torch

from fastscore.backend import ext
from fastscore.noise import normal_stream

pytestmark = pytest.mark.skipif(ext.unavailable_reason(torch.device("cpu")) is not None,
                                reason="ext not built for the CPU")


def _draw(n, seed, offset, simd):
    previous = ext.noise_simd(simd)
    try:
        out = torch.empty(n)
        ext.randn_(out, seed, offset)
        return out
    finally:
        ext.noise_simd(previous)


def _avx2_or_skip():
    previous = ext.noise_simd(True)
    active = ext.noise_simd()
    ext.noise_simd(previous)
    if not active:
        pytest.skip("this CPU has no AVX2 and FMA: only the scalar stream runs")


@pytest.mark.parametrize("seed,offset", [(0, 0), (2**62 + 12345, 3), (0xFFFFFFFF, 2**32 * 4 - 37)])
def test_avx2_and_scalar_streams_are_bitwise_equal(seed, offset):
    _avx2_or_skip()
    n = 1 << 20
    vector, scalar = _draw(n, seed, offset, True), _draw(n, seed, offset, False)
    assert torch.equal(vector, scalar)  # offset above: counters whose low word wraps inside a group


@pytest.mark.parametrize("simd", [False, True])
def test_each_implementation_matches_the_reference(simd):
    if simd:
        _avx2_or_skip()
    for n, seed, offset in ((1, 5, 0), (37, 2**40 + 1, 3), (100_000, 20191212, 2**33 + 1)):
        torch.testing.assert_close(_draw(n, seed, offset, simd), normal_stream(n, seed, offset), rtol=1e-5, atol=1e-5)


def test_ops_use_the_selected_stream_with_equal_results():
    _avx2_or_skip()
    x, score = torch.randn(3, 2, 41, 7), torch.randn(3, 2, 41, 7)
    sigma = torch.rand(3) + 0.1
    results = []
    for simd in (True, False):
        previous = ext.noise_simd(simd)
        try:
            y = x.clone()
            ext.langevin_step_(y, score, 0.01, 9, 5, None)
            results.append((ext.perturb(x, sigma, 9, 5), ext.dsm_per_sample(score, sigma, 9, 5, 2.0),
                            ext.dsm_backward(torch.ones(3), score, sigma, 9, 5, 2.0), y))
        finally:
            ext.noise_simd(previous)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
