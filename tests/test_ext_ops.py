"""The compiled extension's primitives (fastscore.backend.ext, torch.ops.fastscore_ext.*) against the
float64 formulas of fastscore.backend.reference.

Odd sizes that cross the kernels' internal chunking, non-contiguous inputs, mixed parameter shapes,
float64, per-sample parameter gradients, exact noise addressing, Philox known answers, thread-count
independence, the C++ argument checks, and torch.library.opcheck on every op (schema and fake kernel:
the ops have no autograd of their own). Runs on every device the extension is built for.
"""
import math

import pytest
import torch

from fastscore.backend import ext, reference
from fastscore.backend.protocol import ACTIVATION_CODES
from fastscore.noise import normal_stream

from helpers import DEVICES, poisoned_empty, requires_cuda, tolerances

EXT_DEVICES = [
    pytest.param(d, marks=pytest.mark.skip(reason=f"ext on {d}: {r}"))
    if (r := ext.unavailable_reason(torch.device(d))) else d
    for d in DEVICES
]
ops = torch.ops.fastscore_ext if ext.unavailable_reason(torch.device("cpu")) is None else None


def close(got, want, dtype, name, scale=1.0):
    rtol, atol = tolerances(dtype)
    assert not torch.isnan(got).any(), f"{name}: NaN (unwritten elements?)"
    torch.testing.assert_close(got.double().cpu() / scale, want.double().cpu() / scale, rtol=rtol, atol=atol,
                               msg=lambda m: f"{name}: {m}")


def randn(n, seed, offset, device, dtype=torch.float32):
    out = torch.empty(n, device=device, dtype=dtype)
    ext.randn_(out, seed, offset)
    return out


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_philox_known_answers(device):
    words = torch.tensor([
        [0, 0, 0, 0, 0, 0],
        [0xFFFFFFFF] * 6,
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0],
    ], dtype=torch.int64, device=device)
    want = [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8],
            [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]]
    assert ops.philox4x32_10(words).cpu().tolist() == want


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("n,offset",
                         [(1, 0), (3, 1), (63, 2), (64, 0), (65, 3), (1023, 5), (1025, 4), (5000, 2**50 + 7)])
def test_noise_matches_reference_stream_and_is_addressed_exactly(device, n, offset):
    seed = 0xDEADBEEF12345
    got = randn(n, seed, offset, device)
    torch.testing.assert_close(got.cpu(), normal_stream(n, seed, offset), rtol=1e-5, atol=1e-5)
    # The same normal, bit for bit, whatever call produced it: a longer draw from earlier contains it.
    shift = min(3, offset)
    longer = randn(n + 11, seed, offset - shift, device)
    assert torch.equal(longer[shift:shift + n], got)
    assert torch.equal(randn(n, seed, offset, device, torch.float64), got.double())


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_randn_fills_a_non_contiguous_out_in_logical_order(device):
    base = torch.zeros(6, 10, device=device)
    out = base[:, ::2]
    ext.randn_(out, 7, 11)
    torch.testing.assert_close(out.cpu(), normal_stream(30, 7, 11).reshape(6, 5), rtol=1e-5, atol=1e-5)
    assert torch.equal(base[:, 1::2], torch.zeros(6, 5, device=device))


def _per_sample_leaf(p, n, c):
    """p as an (N, C) leaf of its own: autograd then gives the per-sample gradient that the primitive
    returns, whatever p's shape (a (C,) parameter's gradient is its sum over N)."""
    return None if p is None else p.detach().expand(n, c).clone().requires_grad_()


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("shape,pshapes,fmt", [
    ((2, 70, 3, 5), ("nc", "c", "nc"), torch.channels_last),     # C over one channels_last block of 64
    ((1, 3, 40, 41), ("c", "nc", None), torch.contiguous_format),  # plane over the 1024-element chunk
    ((3, 2, 23, 24), ("nc", "nc", "c"), torch.channels_last),     # many rows per channel block
    ((2, 1, 6, 6), ("c", "c", "c"), torch.contiguous_format),     # C == 1: muhat = 0
    ((4, 5, 1, 1), ("nc", "c", "nc"), torch.channels_last),       # H * W == 1
])
@pytest.mark.parametrize("activation", [None, "elu"])
def test_norm_odd_shapes_mixed_params_float64(device, shape, pshapes, fmt, activation):
    torch.manual_seed(1)
    n, c = shape[:2]
    eps, code = 1e-5, ACTIVATION_CODES[activation]

    def param(kind, shift=0.0):
        if kind is None:
            return None
        return (torch.randn((n, c) if kind == "nc" else (c,), dtype=torch.float64) * 0.5 + shift).to(device)

    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(device).contiguous(memory_format=fmt)
    gamma, alpha, beta = param(pshapes[0], 1.0), param(pshapes[1]), param(pshapes[2])
    with poisoned_empty():
        y, mean, rstd = ext.norm_forward(x, gamma, alpha, beta, eps, code)
    rx = x.detach().clone().requires_grad_()
    rparams = [_per_sample_leaf(p, n, c) for p in (gamma, alpha, beta)]
    y_ref = reference.cond_instance_norm_plus(rx, *rparams, eps, activation)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert y.dtype == torch.float64 and y.is_contiguous(memory_format=fmt)
    xd = x.double()
    mean_ref = xd.mean(dim=(2, 3))
    rstd_ref = (((xd - mean_ref[:, :, None, None]) ** 2).mean(dim=(2, 3)) + eps).rsqrt()
    for got, want in ((mean, mean_ref), (rstd, rstd_ref)):
        assert got.shape == (n, c) and got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    g = torch.randn(shape, dtype=torch.float64).to(device)
    with poisoned_empty():
        dx, dgamma, dalpha, dbeta = ext.norm_backward(g, x, gamma, alpha, beta, mean, rstd, eps, code)
    leaves = [rx] + [p for p in rparams if p is not None]
    want = dict(zip(["x", "gamma", "alpha", "beta"][:len(leaves)], torch.autograd.grad(y_ref, leaves, g), strict=True))
    torch.testing.assert_close(dx, want["x"], rtol=1e-8, atol=1e-8)
    assert dx.is_contiguous(memory_format=fmt)
    for name, got in (("gamma", dgamma), ("alpha", dalpha), ("beta", dbeta)):
        if name == "beta" and beta is None:
            assert got is None
            continue
        # Per sample, (N, C) in float64, even for a (C,) parameter: the caller does the sum over N.
        assert got.shape == (n, c) and got.dtype == torch.float64, name
        torch.testing.assert_close(got, want[name], rtol=1e-8, atol=1e-8, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_norm_float32_statistics_and_parameter_grads_are_float32(device):
    torch.manual_seed(6)
    x = torch.randn(2, 4, 5, 5, device=device, dtype=torch.bfloat16)
    gamma, alpha = torch.randn(4, device=device), torch.randn(2, 4, device=device, dtype=torch.float64)
    y, mean, rstd = ext.norm_forward(x, gamma, alpha, None, 1e-5, 0)
    assert y.dtype == torch.bfloat16 and mean.dtype == rstd.dtype == torch.float32
    dx, dgamma, dalpha, dbeta = ext.norm_backward(torch.randn_like(x), x, gamma, alpha, None, mean, rstd, 1e-5, 0)
    assert dx.dtype == torch.bfloat16 and dbeta is None
    assert dgamma.shape == dalpha.shape == (2, 4) and dgamma.dtype == dalpha.dtype == torch.float32


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_norm_non_contiguous_input(device):
    torch.manual_seed(2)
    base = torch.randn(3, 8, 9, 10, device=device)
    x = base[:, ::2, :, 1:].transpose(2, 3)  # neither contiguous nor channels_last
    gamma, alpha, beta = (torch.randn(4, device=device) for _ in range(3))
    code = ACTIVATION_CODES["relu"]
    y, mean, rstd = ext.norm_forward(x, gamma, alpha, beta, 1e-5, code)
    rx = x.double().requires_grad_()
    rparams = [_per_sample_leaf(p.double(), 3, 4) for p in (gamma, alpha, beta)]
    y_ref = reference.cond_instance_norm_plus(rx, *rparams, 1e-5, "relu")
    close(y, y_ref, torch.float32, "y")
    g = torch.randn(base.shape, device=device)[:, 1::2, :, :-1].transpose(2, 3)  # non-contiguous too
    got = ext.norm_backward(g, x, gamma, alpha, beta, mean, rstd, 1e-5, code)
    want = torch.autograd.grad(y_ref, [rx] + rparams, g.double())
    for name, a, b in zip(("dx", "dgamma", "dalpha", "dbeta"), got, want, strict=True):
        close(a, b, torch.float32, name, scale=max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_langevin_updates_non_contiguous_x_in_place(device, dtype):
    base = torch.randn(4, 6, 5, 5, dtype=torch.float32).to(device=device, dtype=dtype)
    x = base[:, ::2]  # a strided view: the update must land in base
    before = base.clone()
    score = torch.randn(x.shape, device=device)
    want = reference.langevin_step_(x.double().clone(), score.double(), 0.01, 3, 17)
    assert ext.langevin_step_(x, score, 0.01, 3, 17, None) is None
    close(base[:, ::2], want, dtype, "updated view")
    assert torch.equal(base[:, 1::2], before[:, 1::2]), "elements outside the view must not change"


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("noise_scale", [None, 0.3])
def test_langevin_tensor_arguments_match_numbers(device, noise_scale):
    torch.manual_seed(7)
    x0, score = torch.randn(3, 2, 7, 5, device=device), torch.randn(3, 2, 7, 5, device=device)
    by_number = x0.clone()
    ext.langevin_step_(by_number, score, 0.02, 5, 123, noise_scale)
    by_tensor = x0.clone()
    as_tensor = torch.tensor(noise_scale, device=device) if noise_scale is not None else None
    ext.langevin_step_(by_tensor, score, torch.tensor(0.02, device=device), torch.tensor(5, device=device),
                       torch.tensor([123], device=device), as_tensor)
    torch.testing.assert_close(by_tensor, by_number, rtol=1e-6, atol=1e-6)
    want = reference.langevin_step_(x0.double().clone(), score.double(), 0.02, 5, 123, noise_scale)
    close(by_number, want, torch.float32, "x")


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_perturb_and_dsm_on_views_and_long_samples(device):
    torch.manual_seed(3)
    x = torch.randn(3, 2600, device=device)[:, 100:2600]  # rows of 2500: several 1024-chunks, odd starts
    sigma = torch.rand(3, device=device) + 0.2
    close(ext.perturb(x, sigma, 5, 9), reference.perturb(x.double(), sigma.double(), 5, 9), torch.float32, "perturb")
    per_sample = ext.dsm_per_sample(x, sigma, 5, 9, 1.7)
    rs = x.double().requires_grad_()
    want = reference.dsm_loss(rs, sigma.double(), 5, 9, 1.7, reduction="none")
    assert per_sample.shape == (3,) and per_sample.dtype == torch.float32
    close(per_sample, want, torch.float32, "loss", scale=max(1.0, want.abs().max().item()))
    grad = torch.rand(3, device=device) + 0.5
    dscores = ext.dsm_backward(grad, x, sigma, 5, 9, 1.7)
    (g_ref,) = torch.autograd.grad(want, rs, grad.double())
    assert dscores.shape == x.shape and dscores.dtype == x.dtype
    close(dscores, g_ref, torch.float32, "dscores", scale=g_ref.abs().max().item())


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_noise_follows_logical_order_for_channels_last(device, dtype):
    torch.manual_seed(8)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    sigma = (torch.rand(2, dtype=torch.float64) + 0.3).to(device)
    out = ext.perturb(x, sigma, 11, 4)
    assert out.dtype == dtype and out.shape == x.shape
    close(out, reference.perturb(x.double(), sigma, 11, 4), dtype, "perturb")
    rs = x.double().requires_grad_()
    want = reference.dsm_loss(rs, sigma, 11, 4, 2.0, reduction="none")
    close(ext.dsm_per_sample(x, sigma, 11, 4, 2.0), want, dtype, "loss", scale=want.abs().max().item())
    grad = torch.ones(2, dtype=torch.float64, device=device)
    (g_ref,) = torch.autograd.grad(want, rs, grad)
    close(ext.dsm_backward(grad, x, sigma, 11, 4, 2.0), g_ref, dtype, "dscores", scale=g_ref.abs().max().item())


def test_cpu_results_do_not_depend_on_thread_count():
    if ext.unavailable_reason(torch.device("cpu")):
        pytest.skip("ext not built")
    torch.manual_seed(4)
    scores = torch.randn(5, 3, 40, 40)
    sigma = torch.rand(5) + 0.1
    x = torch.randn(4, 16, 20, 20)
    g, a = torch.randn(4, 16), torch.randn(16)
    dy = torch.randn_like(x)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, max(2, threads)):
            torch.set_num_threads(t)
            y, mean, rstd = ext.norm_forward(x, g, a, None, 1e-5, 0)
            grads = ext.norm_backward(dy, x, g, a, None, mean, rstd, 1e-5, 0)[:3]
            results.append((ext.dsm_per_sample(scores, sigma, 1, 2, 2.0), y, mean, rstd, *grads))
    finally:
        torch.set_num_threads(threads)
    for one, many in zip(*results, strict=True):
        assert torch.equal(one, many)


def _opcheck_cases(device):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 5, device=device)
    g, a, b = torch.randn(2, 3, device=device), torch.randn(3, device=device), torch.randn(2, 3, device=device)
    sigma = torch.rand(2, device=device) + 0.1
    y, mean, rstd = ops.norm_forward(x, g, a, b, 1e-5, 1)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    table = torch.randn(5, 9, device=device)
    one = lambda v, dtype=None: torch.tensor([v], dtype=dtype, device=device)  # noqa: E731
    return [
        (ops.norm_forward.default, (x, g, a, b, 1e-5, 1)),
        (ops.norm_forward.default, (x_cl, g, a, None, 1e-3, 2)),
        (ops.norm_backward.default, (torch.randn_like(y), x, g, a, b, mean, rstd, 1e-5, 1)),
        (ops.norm_backward.default, (torch.randn_like(x_cl), x_cl, g, a, None, mean, rstd, 1e-5, 0)),
        (ops.perturb.default, (x, sigma, 3, 4)),
        (ops.perturb.default, (x_cl, sigma, 3, 4)),
        (ops.norm_forward_lookup.default, (x, torch.tensor([4, 0], device=device), table, 1e-5, 1)),
        (ops.norm_forward_lookup.default, (x_cl, torch.tensor([1, 1], dtype=torch.int32, device=device),
                                           table[:, :6], 1e-5, 0)),
        (ops.norm_backward_lookup.default, (torch.randn_like(y), x, torch.tensor([4, 0], device=device), table,
                                            mean, rstd, 1e-5, 2)),
        (ops.dsm_per_sample.default, (x, sigma, 3, 4, 2.0)),
        (ops.dsm_reduced.default, (x, sigma, 3, 4, 2.0, 1)),
        (ops.dsm_reduced.default, (x_cl, sigma, 3, 4, 1.5, 2, None, one(7, torch.int64))),
        (ops.dsm_backward.default, (torch.rand(2, device=device), x, sigma, 3, 4, 2.0)),
        (ops.langevin_step_.default, (x.clone(), torch.randn_like(x), 0.1, 3, 4, 0.5)),
        (ops.langevin_step_.default, (x.clone(), torch.randn_like(x), 0.0, 0, 0, -1.0, one(0.1), one(3, torch.int64),
                                      one(4, torch.int64), None)),
        (ops.normal_.default, (torch.empty(7, device=device), 3, 4)),
        (ops.philox4x32_10.default, (torch.zeros(2, 6, dtype=torch.int64, device=device),)),
    ]


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_opcheck_every_op(device):
    cases = _opcheck_cases(device)
    assert {op._overloadpacket for op, _ in cases} == {getattr(ops, name) for name in (
        "norm_forward", "norm_backward", "norm_forward_lookup", "norm_backward_lookup", "perturb", "dsm_per_sample",
        "dsm_reduced", "dsm_backward", "langevin_step_", "normal_", "philox4x32_10")}
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("call,message", [
    (lambda d: ops.norm_forward(torch.randn(2, 3, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d), None,
                                1e-5, 0), "x must be 4-D"),
    (lambda d: ops.norm_forward(torch.randn(2, 3, 4, 4, device=d), torch.ones(2, 4, device=d), torch.ones(3, device=d),
                                None, 1e-5, 0), "gamma must have shape"),
    (lambda d: ops.norm_forward(torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d),
                                torch.ones(5, device=d), 1e-5, 0), "beta must have shape"),
    (lambda d: ops.norm_forward(torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d),
                                None, -1.0, 0), "eps must be > 0"),
    (lambda d: ops.norm_forward(torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d),
                                None, 1e-5, 7), "activation must be"),
    (lambda d: ops.norm_forward(torch.ones(2, 3, 4, 4, dtype=torch.int32, device=d), torch.ones(3, device=d),
                                torch.ones(3, device=d), None, 1e-5, 0), "x must be float32"),
    (lambda d: ops.norm_backward(torch.randn(2, 3, 4, 4, device=d), torch.randn(2, 3, 4, 4, device=d),
                                 torch.ones(3, device=d), torch.ones(3, device=d), None, torch.ones(2, 2, device=d),
                                 torch.ones(2, 3, device=d), 1e-5, 0), "mean must be the forward's"),
    (lambda d: ops.norm_backward(torch.randn(2, 3, 4, 4, device=d), torch.randn(2, 3, 4, 4, device=d),
                                 torch.ones(3, device=d), torch.ones(3, device=d), None, torch.ones(2, 3, device=d),
                                 torch.ones(2, 3, dtype=torch.float64, device=d), 1e-5, 0),
     "rstd must be the forward's"),
    (lambda d: ops.norm_backward(torch.randn(2, 3, 4, 5, device=d), torch.randn(2, 3, 4, 4, device=d),
                                 torch.ones(3, device=d), torch.ones(3, device=d), None, torch.ones(2, 3, device=d),
                                 torch.ones(2, 3, device=d), 1e-5, 0), "grad_y must have x's shape"),
    (lambda d: ops.norm_backward(torch.randn(2, 3, 4, 4, device=d), torch.randn(2, 3, 4, 4, device=d),
                                 torch.ones(3, device=d), torch.ones(3, device=d), torch.ones(2, 2, device=d),
                                 torch.ones(2, 3, device=d), torch.ones(2, 3, device=d), 1e-5, 0),
     "beta must have shape"),
    (lambda d: ops.norm_forward_lookup(torch.randn(2, 3, 4, 4, device=d), torch.tensor([0, 1], device=d),
                                       torch.ones(4, 8, device=d), 1e-5, 0), r"table must have shape \(L, 3C\)"),
    (lambda d: ops.norm_forward_lookup(torch.randn(2, 3, 4, 4, device=d), torch.tensor([0.0, 1.0], device=d),
                                       torch.ones(4, 9, device=d), 1e-5, 0), "labels must be an int64 or int32"),
    (lambda d: ops.norm_backward_lookup(torch.randn(2, 3, 4, 4, device=d), torch.randn(2, 3, 4, 4, device=d),
                                        torch.tensor([0], device=d), torch.ones(4, 9, device=d),
                                        torch.ones(2, 3, device=d), torch.ones(2, 3, device=d), 1e-5, 0),
     r"labels must have shape \(N,\)"),
    (lambda d: ops.dsm_reduced(torch.randn(3, 4, device=d), torch.ones(3, device=d), 0, 0, 2.0, 0),
     "reduction must be 1"),
    (lambda d: ops.perturb(torch.randn(3, 4, device=d), torch.ones(2, device=d), 0, 0), "sigma must have shape"),
    (lambda d: ops.perturb(torch.randn(3, 4, device=d), torch.ones(3, device=d), -1, 0), "seed must be in"),
    (lambda d: ops.perturb(torch.randn(3, 4, device=d), torch.ones(3, device=d), 0, 2**63 - 5), "offset must be in"),
    (lambda d: ops.dsm_per_sample(torch.randn(3, 4, device=d), torch.ones(3, 1, device=d), 0, 0, 2.0),
     "sigma must have shape"),
    (lambda d: ops.dsm_per_sample(torch.randn(3, 4, device=d), torch.ones(3, device=d), 0, 0, math.nan),
     "anneal_power must be finite"),
    (lambda d: ops.dsm_backward(torch.ones(2, device=d), torch.randn(3, 4, device=d), torch.ones(3, device=d), 0, 0,
                                2.0), "grad must have shape"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 5, device=d), 0.1, 0, 0, 0.1),
     "score must have x's shape"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 4, device=d), -0.1, 0, 0, 0.1),
     "step_size must be >= 0"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 4, device=d), 0.1, 0, 0, math.inf),
     "noise_scale must be finite"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 4, device=d), 0.1, 0, 0, 0.1, None,
                                  torch.ones(2, dtype=torch.int64, device=d)),
     "seed given as a tensor must have one element"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 4, device=d), 0.1, 0, 0, 0.1, None, None,
                                  torch.ones(1, device=d)), "offset given as a tensor must be int64"),
    (lambda d: ops.normal_(torch.empty(3, dtype=torch.int64, device=d), 0, 0), "out must be float32"),
    (lambda d: ops.philox4x32_10(torch.zeros(2, 5, dtype=torch.int64, device=d)),
     "words must be an int64 tensor of shape"),
])
def test_bad_inputs_are_rejected_in_cpp_naming_the_argument(device, call, message):
    with pytest.raises(RuntimeError, match=message):
        call(device)


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_errors_name_the_extension_op(device):
    with pytest.raises(RuntimeError, match="fastscore_ext::dsm_backward: grad must have shape"):
        ops.dsm_backward(torch.ones(2, device=device), torch.randn(3, 4, device=device), torch.ones(3, device=device),
                         0, 0, 2.0)


@requires_cuda
def test_cuda_rejects_arguments_on_another_device():
    if reason := ext.unavailable_reason(torch.device("cuda")):
        pytest.skip(reason)
    x = torch.randn(2, 3, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="sigma is on cpu but x is on cuda"):
        ops.perturb(x, torch.ones(2), 0, 0)
    with pytest.raises(RuntimeError, match="gamma is on cpu but x is on cuda"):
        ops.norm_forward(x, torch.ones(3), torch.ones(3, device="cuda"), None, 1e-5, 0)
    with pytest.raises(RuntimeError, match="seed is on cpu but x is on cuda"):
        ops.langevin_step_(x, torch.randn_like(x), 0.1, 0, 0, 0.1, None, torch.ones(1, dtype=torch.int64))
