"""Triton-backend specifics: the norm's tiling paths, the noise arguments.

The generic tests (test_ops.py, test_noise.py) already hold every triton op to the reference and check
its registration. These cover what only this backend has: the large-plane looping and small-plane
packing paths of the norm (forced with a small tile), planes up to 65,536 values with a large mean,
the sample loop past the grid limit, seed/offset packing, and the langevin variants. On this CPU
they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU, unchanged, on CUDA
with larger shapes.
"""
import subprocess
import sys

import pytest
import torch

import fastscore
from fastscore.backend import dispatch, reference
from fastscore.noise import normal_stream

from helpers import DEVICES, assert_close, poisoned_empty, reference_norm

TRITON_DEVICES = [
    pytest.param(d, marks=[pytest.mark.skip(reason=f"triton on {d}: {r}")] if r else [])
    for d in DEVICES
    for r in [dispatch.unavailable_reason("triton", d)]
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def k():
    """The op modules of the backend (imported only once triton is known to work here)."""
    from fastscore.kernels import _common, instance_norm, langevin, noise, perturbation, score_matching

    class K:
        pass

    for m in (_common, instance_norm, langevin, noise, perturbation, score_matching):
        setattr(K, m.__name__.rsplit(".", 1)[1], m)
    return K


def rand(shape, device, dtype=torch.float32, scale=1.0, shift=0.0, fmt=torch.contiguous_format):
    t = torch.randn(shape, dtype=torch.float32) * scale + shift
    return t.to(device=device, dtype=dtype).contiguous(memory_format=fmt)


def check_norm(x, gamma, alpha, beta, activation, name):
    """Forward and all grads of the triton norm against the float64 reference.

    Where the inputs make the op ill-conditioned (channel means nearly equal next to their size, so
    muhat = (mu - m) / sqrt(v + eps) amplifies the rounding of mu), no float32 code meets a fixed
    tolerance: each comparison also allows twice the error of the reference itself run in float32."""
    inputs = [t.requires_grad_() for t in (x, gamma, alpha, beta) if t is not None]
    with poisoned_empty():
        y = fastscore.cond_instance_norm_plus(x, gamma, alpha, beta, activation=activation, backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    dy = rand(x.shape, x.device, x.dtype)
    y_ref, grads_ref = reference_norm(inputs, beta is not None, activation, dy, torch.float64)
    y_32, grads_32 = reference_norm(inputs, beta is not None, activation, dy, torch.float32)
    assert_close(y, y_ref, x.dtype, f"y {name}", 2 * (y_32 - y_ref).abs().max().item())
    with poisoned_empty():
        grads = torch.autograd.grad(y, inputs, dy)
    names = ("dx", "dgamma", "dalpha", "dbeta")
    for gname, t, g, g_ref, g_32 in zip(names, inputs, grads, grads_ref, grads_32, strict=False):
        assert g.dtype == t.dtype and g.shape == t.shape, gname
        scale = max(1.0, g_ref.abs().max().item())
        assert_close(g / scale, g_ref / scale, x.dtype, f"{gname} {name}",
                     2 * (g_32 - g_ref).abs().max().item() / scale)


# ----------------------------------------------------------------------------------------------
# Registration


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_compile_fullgraph_norm_channels_last_shared_params(device):
    """torch.compile(fullgraph=True) through the norm (channels_last, shared params) and its backward."""
    x = rand((2, 4, 3, 5), device, fmt=torch.channels_last).requires_grad_()
    gamma, alpha, beta = (rand((4,), device, shift=s).requires_grad_() for s in (1.0, 0.0, 0.0))

    def f(x, gamma, alpha, beta):
        y = fastscore.cond_instance_norm_plus(x, gamma, alpha, beta, activation="relu", backend="triton")
        return (y * y).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, gamma, alpha, beta), (x, gamma, alpha, beta))
    want = torch.autograd.grad(f(x, gamma, alpha, beta), (x, gamma, alpha, beta))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The norm's tiling paths


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("ranges", [False, True], ids=["one-range", "ranges"])
def test_norm_large_plane_loop_with_small_tile(k, device, channels_last, ranges, monkeypatch):
    """A tile much smaller than a plane: the reductions loop over chunks (Chan merge), within one
    range per plane or within several ranges merged afterwards; the elementwise kernels spread a
    plane over many programs."""
    nm = k.instance_norm
    monkeypatch.setattr(nm, "SAMPLE_TILE", 0)  # no one-pass kernels: the split path
    monkeypatch.setattr(nm, "TILE", 16)
    monkeypatch.setattr(nm, "CHANNELS_LAST_PLANES", 4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (2, 3, 9, 7) if device == "cpu" else (3, 33, 67, 45)
    p, hw = shape[0] * shape[1], shape[2] * shape[3]
    block_p, block_hw = nm._blocks(p, shape[1], hw, channels_last)
    # A target of two programs per plane block splits each plane into ranges; 1 never splits.
    monkeypatch.setattr(nm, "TARGET_PROGRAMS", 2 * -(-p // block_p) if ranges else 1)
    splits, split_len = nm._splits(p, hw, block_p, block_hw)
    assert split_len > block_hw, "each range must loop over several chunks"
    assert (splits > 1) == ranges
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        x = rand(shape, device, dtype, scale=2.0, shift=0.5, fmt=fmt)
        check_norm(x, rand(shape[:2], device, shift=1.0), rand(shape[:2], device), rand(shape[:2], device),
                   "elu", f"{shape} {dtype}")


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_norm_small_planes_packed_across_samples(k, device, channels_last, monkeypatch):
    """Planes of 2..6 values: many planes per program, the packing crossing sample boundaries."""
    monkeypatch.setattr(k.instance_norm, "SAMPLE_TILE", 0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(2)
    for shape in [(5, 3, 2, 3), (7, 2, 1, 2), (3, 5, 1, 1)]:
        n, c, h, w = shape
        block_p, _ = k.instance_norm._blocks(n * c, c, h * w, channels_last)
        assert block_p > c, "several samples' planes must share a program"
        x = rand(shape, device, scale=1.5, shift=-0.2, fmt=fmt)
        check_norm(x, rand((c,), device, shift=1.0), rand((c,), device), None, "relu", str(shape))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("case", ["packed", "ranges", "one-channel"])
def test_norm_split_kernels_loop_over_channels(k, device, channels_last, case, monkeypatch):
    """The split kernels reduce each sample's C plane means in the programs that use them: a BLOCK_C
    smaller than C makes those loops step several times, in tiles whose planes span samples (packed),
    with planes split into position ranges the backward sums itself (ranges), and with C = 1."""
    nm = k.instance_norm
    monkeypatch.setattr(nm, "SAMPLE_TILE", 0)
    monkeypatch.setattr(nm, "SAMPLE_BLOCK_C", 2)
    monkeypatch.setattr(nm, "CHANNELS_LAST_PLANES", 4)
    shape, tile = {"packed": ((3, 5, 3, 3), 64), "ranges": ((2, 5, 9, 7), 16),
                   "one-channel": ((3, 1, 5, 5), 64)}[case]
    monkeypatch.setattr(nm, "TILE", tile)
    p, c, hw = shape[0] * shape[1], shape[1], shape[2] * shape[3]
    block_p, block_hw = nm._blocks(p, c, hw, channels_last)
    monkeypatch.setattr(nm, "TARGET_PROGRAMS", 2 * -(-p // block_p) if case == "ranges" else 1)
    assert (nm._splits(p, hw, block_p, block_hw)[0] > 1) == (case == "ranges")
    if case != "ranges":
        assert any(i * block_p // c != (min(i * block_p + block_p, p) - 1) // c for i in range(-(-p // block_p))), \
            "some tile must span samples"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(8)
    x = rand(shape, device, scale=2.0, shift=0.5, fmt=fmt)
    check_norm(x, rand((shape[0], c), device, shift=1.0), rand((c,), device), rand((shape[0], c), device), "elu",
               f"{case} {shape}")
    check_norm(x, rand((c,), device, shift=1.0), rand((shape[0], c), device), None, None, f"{case} {shape} no beta")


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("split", [False, True], ids=["one-pass", "split"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_norm_one_pass_and_split_paths(k, device, split, channels_last, monkeypatch):
    """The same inputs through the one-pass kernels (a sample per program) and the split kernels."""
    if split:
        monkeypatch.setattr(k.instance_norm, "SAMPLE_TILE", 0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (3, 5, 6, 7) if device == "cpu" else (8, 32, 16, 16)
    n, c = shape[:2]
    assert (k.instance_norm._sample_blocks(c, shape[2] * shape[3]) is None) == split
    torch.manual_seed(7)
    for dtype, activation in ((torch.float32, "elu"), (torch.float16, None)):
        x = rand(shape, device, dtype, scale=3.0, shift=20.0, fmt=fmt)  # a mean well off zero
        check_norm(x, rand((n, c), device, shift=1.0), rand((c,), device), rand((n, c), device), activation,
                   f"{shape} {dtype}")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_norm_plane_of_65536_with_large_mean(device):
    """H*W = 65,536 with a mean 100 times the spread: the statistics must not lose it to cancellation.
    (Channel means 100 and 97: with nearly equal ones muhat is ill-conditioned in any float32 code.)"""
    torch.manual_seed(3)
    x = rand((1, 2, 256, 256), device, scale=1.0, shift=100.0)
    x[:, 1] -= 3.0
    gamma, alpha, beta = rand((2,), device, shift=1.0), rand((2,), device), rand((2,), device)
    check_norm(x, gamma, alpha, beta, None, "65536-value planes")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_norm_backward_of_a_sum_gets_an_expanded_gradient(device):
    """y.sum() hands the backward a stride-0 dy; it must be read as the dense ones it stands for."""
    x = rand((2, 3, 4, 4), device, fmt=torch.channels_last).requires_grad_()
    gamma, alpha = rand((3,), device, shift=1.0), rand((3,), device)
    (dx,) = torch.autograd.grad(
        fastscore.cond_instance_norm_plus(x, gamma, alpha, activation="elu", backend="triton").sum(), x)
    rx = x.detach().double().requires_grad_()
    (dx_ref,) = torch.autograd.grad(
        reference.cond_instance_norm_plus(rx, gamma.double(), alpha.double(), None, 1e-5, "elu").sum(), rx)
    assert_close(dx, dx_ref, torch.float32, "dx")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_norm_odd_layouts_and_mixed_parameter_dtypes(device):
    """A non-dense x (a slice) goes through a dense copy; float32 parameters with a bfloat16 x."""
    torch.manual_seed(4)
    big = rand((2, 6, 7, 9), device, torch.bfloat16, shift=0.3)
    x = big[:, ::2]  # neither contiguous nor channels_last
    c = x.shape[1]
    check_norm(x, rand((2, c), device, shift=1.0), rand((2, c), device), rand((c,), device), "elu", "slice")


# ----------------------------------------------------------------------------------------------
# Noise arguments and the flat ops


def test_stream_args_are_int32_bit_patterns(k):
    """Every seed/offset reaches the kernels as four int32 values, so Triton types them the same
    (i32) whatever the value and compiles one kernel (a Python int >= 2^31 would be typed i64)."""
    for value in (0, 1, 16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62 + 12345, 2**63 - 1):
        words = k._common.stream_args(value, value)
        assert all(-(2**31) <= w < 2**31 for w in words)
        lo, hi = (w & 0xFFFFFFFF for w in words[:2])
        assert lo | (hi << 32) == value


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("seed,offset", [(0, 0), (2**32 - 1, 1), (2**62 + 12345, 2**33 + 2), (2**63 - 1, 2**63 - 5000)])
def test_randn_many_programs_matches_reference_stream(device, seed, offset):
    """Several programs (blocks of 2,048), offsets at every lane position, extreme seeds and offsets."""
    for dtype in DTYPES:
        got = fastscore.randn((5000,), seed=seed, offset=offset, device=device, dtype=dtype, backend="triton")
        want = normal_stream(5000, seed, offset)
        assert got.dtype == dtype
        assert_close(got, want, dtype, f"randn {dtype}")


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (2, 37, 3, 5), (2, 3, 16, 16), (1, 70, 1, 2)])
def test_channels_last_noise_is_in_logical_order(device, shape):
    """perturb of a channels_last x uses the same z per logical element as of its contiguous copy:
    planes of H*W = 21, 15, 256, 2 (rows of a channels_last tile starting at every lane of a Philox
    group), C over one tile of channels (37, 70), offsets at every lane."""
    x = rand(shape, device)
    sigma = torch.rand(shape[0], device=device) + 0.1
    for offset in (6, 2**35 + 3):
        a = fastscore.perturb(x, sigma, 5, offset, backend="triton")
        b = fastscore.perturb(x.contiguous(memory_format=torch.channels_last), sigma, 5, offset, backend="triton")
        assert b.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_dsm_loss_regenerates_the_noise_of_perturb(device, channels_last):
    """With scores = the ncsn target -(x_noisy - x) / sigma^2 the loss is 0: the loss regenerates
    exactly the noise perturb drew, from (seed, offset) alone."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = rand((4, 3, 6, 5), device, fmt=fmt)
    sigma = torch.tensor([0.01, 0.1, 1.0, 5.0], device=device)
    noisy = fastscore.perturb(x, sigma, 21, 77, backend="triton")
    target = -(noisy - x) / sigma.reshape(-1, 1, 1, 1) ** 2
    loss = fastscore.dsm_loss(target, sigma, 21, 77, reduction="none", backend="triton")
    assert loss.abs().max().item() < 1e-6 * x.numel()
    wrong = fastscore.dsm_loss(target, sigma, 21, 78, reduction="none", backend="triton")
    assert wrong.min().item() > 1.0, "a different offset must give different noise"


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_samples_beyond_the_grid_limit_are_looped(k, device, monkeypatch):
    """Grid dimension 1 (samples) is capped at 65,535 on CUDA; programs then loop over samples."""
    monkeypatch.setattr(k._common, "MAX_GRID_Y", 2)
    sigma = torch.rand(5, device=device) + 0.1
    x = rand((5, 3, 2, 2), device, fmt=torch.channels_last)  # channels_last ops run per sample
    got = fastscore.perturb(x, sigma, 1, 2, backend="triton")
    assert_close(got, reference.perturb(x.double(), sigma.double(), 1, 2), torch.float32, "perturb")
    want = reference.langevin_step_(x.double(), x.double(), 0.1, 1, 2)
    assert_close(fastscore.langevin_step_(x, x.clone(), 0.1, 1, 2, backend="triton"), want, torch.float32, "langevin")
    scores = rand((5, 3, 4), device).requires_grad_()
    loss = fastscore.dsm_loss(scores, sigma, 1, 2, 2.0, "none", backend="triton")
    rs = scores.detach().double().requires_grad_()
    loss_ref = reference.dsm_loss(rs, sigma.double(), 1, 2, 2.0, "none")
    assert_close(loss, loss_ref, torch.float32, "loss")
    assert_close(torch.autograd.grad(loss.sum(), scores)[0], torch.autograd.grad(loss_ref.sum(), rs)[0],
                 torch.float32, "dscores")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_langevin_tensor_coefficients_and_odd_layouts(device):
    """step_size / noise_scale as one-element tensors (read by the kernel), a non-dense x updated in
    place, and a score in another memory format than x."""
    torch.manual_seed(6)
    x = rand((2, 3, 5, 4), device, fmt=torch.channels_last)
    score = rand((2, 3, 5, 4), device)  # contiguous while x is channels_last
    want = reference.langevin_step_(x.double(), score.double(), 0.01, 3, 17, None)
    step = torch.tensor(0.01, device=device)
    fastscore.langevin_step_(x, score, step, 3, 17, backend="triton")
    assert_close(x, want, torch.float32, "tensor step, default noise scale")

    want = reference.langevin_step_(x.double(), score.double(), 0.01, 3, 18, 0.3)
    fastscore.langevin_step_(x, score, 0.01, 3, 18, torch.tensor([0.3], device=device), backend="triton")
    assert_close(x, want, torch.float32, "tensor noise scale")

    base = rand((2, 6, 5, 4), device)
    view = base[:, 1::2]  # non-dense: updated through a copy, written back in place
    want = reference.langevin_step_(view.double(), score.double(), 0.02, 5, 0, 0.1)
    out = fastscore.langevin_step_(view, score, 0.02, 5, 0, 0.1, backend="triton")
    assert out is view
    assert_close(base[:, 1::2], want, torch.float32, "non-dense x")


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_langevin_zero_step_adds_only_scaled_noise(device):
    x = rand((3, 10), device)
    before = x.clone()
    fastscore.langevin_step_(x, rand((3, 10), device), 0.0, 9, 40, 2.0, backend="triton")
    torch.testing.assert_close(x - before, 2.0 * normal_stream(30, 9, 40).reshape(3, 10).to(device),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Availability


def test_unavailable_reasons():
    from fastscore import kernels

    assert kernels.unavailable_reason("meta") is not None and "meta" in kernels.unavailable_reason("meta")
    # In a fresh interpreter (triton's import state is per process): first without the interpreter
    # flag, then with triton made unimportable.
    code = ("import os, sys; os.environ.pop('TRITON_INTERPRET', None); import fastscore.kernels as k; "
            "print(k.unavailable_reason('cpu')); k._import_error.cache_clear(); sys.modules['triton'] = None; "
            "print(k.unavailable_reason('cpu')); print(k.unavailable_reason('cuda'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "set TRITON_INTERPRET=1" in lines[0], out
    assert all("triton cannot be imported" in line for line in lines[1:3]), out
