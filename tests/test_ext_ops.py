"""The compiled extension (ext backend) beyond the backend-generic tests of test_ops.py/test_noise.py.

Odd sizes that cross the kernels' internal chunking, non-contiguous inputs, mixed parameter shapes,
float64, exact noise addressing, Philox known answers, thread-count independence, and
torch.library.opcheck on every op. Runs on every device the extension is built for.
"""
import math

import pytest
import torch

import fastscore
from fastscore import dispatch, reference
from fastscore.noise import normal_stream

from conftest import DEVICES, poisoned_empty, requires_cuda, tolerances

EXT_DEVICES = [
    pytest.param(d, marks=pytest.mark.skip(reason=f"ext on {d}: {r}")) if (r := dispatch.unavailable_reason("ext", d)) else d
    for d in DEVICES
]
ops = torch.ops.fastscore if dispatch.unavailable_reason("ext", "cpu") is None else None


def close(got, want, dtype, name, scale=1.0):
    rtol, atol = tolerances(dtype)
    assert not torch.isnan(got).any(), f"{name}: NaN (unwritten elements?)"
    torch.testing.assert_close(got.double().cpu() / scale, want.double().cpu() / scale, rtol=rtol, atol=atol,
                               msg=lambda m: f"{name}: {m}")


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
@pytest.mark.parametrize("n,offset", [(1, 0), (3, 1), (63, 2), (64, 0), (65, 3), (1023, 5), (1025, 4), (5000, 2**50 + 7)])
def test_noise_matches_reference_stream_and_is_addressed_exactly(device, n, offset):
    seed = 0xDEADBEEF12345
    got = fastscore.randn(n, seed=seed, offset=offset, device=device, backend="ext")
    torch.testing.assert_close(got.cpu(), normal_stream(n, seed, offset), rtol=1e-5, atol=1e-5)
    # The same normal, bit for bit, whatever call produced it: a longer draw from earlier contains it.
    shift = min(3, offset)
    longer = fastscore.randn(n + 11, seed=seed, offset=offset - shift, device=device, backend="ext")
    assert torch.equal(longer[shift:shift + n], got)
    assert torch.equal(fastscore.randn(n, seed=seed, offset=offset, device=device, dtype=torch.float64, backend="ext"),
                       got.double())


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

    def param(kind, shift=0.0):
        if kind is None:
            return None
        return (torch.randn((n, c) if kind == "nc" else (c,), dtype=torch.float64) * 0.5 + shift).to(device)

    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(device).contiguous(memory_format=fmt)
    params = [param(pshapes[0], 1.0), param(pshapes[1]), param(pshapes[2])]
    inputs = [t.requires_grad_() for t in [x] + params if t is not None]
    with poisoned_empty():
        y = fastscore.cond_instance_norm_plus(x, *params, activation=activation, backend="ext")
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    rp = ref_inputs[1:] + [None] * (3 - len(ref_inputs[1:]))
    y_ref = reference.cond_instance_norm_plus(ref_inputs[0], *rp, 1e-5, activation)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    assert y.is_contiguous(memory_format=fmt)
    g = torch.randn(shape, dtype=torch.float64).to(device)
    with poisoned_empty():
        grads = torch.autograd.grad(y, inputs, g)
    for got, want in zip(grads, torch.autograd.grad(y_ref, ref_inputs, g)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_norm_non_contiguous_input(device):
    torch.manual_seed(2)
    base = torch.randn(3, 8, 9, 10, device=device)
    x = base[:, ::2, :, 1:].transpose(2, 3)  # neither contiguous nor channels_last
    gamma, alpha, beta = (torch.randn(4, device=device) for _ in range(3))
    y = fastscore.cond_instance_norm_plus(x, gamma, alpha, beta, activation="relu", backend="ext")
    close(y, reference.cond_instance_norm_plus(x.double(), gamma.double(), alpha.double(), beta.double(), 1e-5, "relu"),
          torch.float32, "y")


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_langevin_updates_non_contiguous_x_in_place(device, dtype):
    base = torch.randn(4, 6, 5, 5, dtype=torch.float32).to(device=device, dtype=dtype)
    x = base[:, ::2]  # a strided view: the update must land in base
    before = base.clone()
    score = torch.randn(x.shape, device=device)
    want = reference.langevin_step_(x.double().clone(), score.double(), 0.01, 3, 17)
    out = fastscore.langevin_step_(x, score, 0.01, 3, 17, backend="ext")
    assert out is x
    close(base[:, ::2], want, dtype, "updated view")
    assert torch.equal(base[:, 1::2], before[:, 1::2]), "elements outside the view must not change"


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_perturb_and_dsm_on_views_and_long_samples(device):
    torch.manual_seed(3)
    x = torch.randn(3, 2600, device=device)[:, 100:2600]  # rows of 2500: several 1024-chunks, odd starts
    sigma = torch.rand(3, device=device) + 0.2
    close(fastscore.perturb(x, sigma, 5, 9, backend="ext"), reference.perturb(x.double(), sigma.double(), 5, 9),
          torch.float32, "perturb")
    s = x.clone().requires_grad_()
    loss = fastscore.dsm_loss(s, sigma, 5, 9, 1.7, "sum", backend="ext")
    rs = x.double().requires_grad_()
    want = reference.dsm_loss(rs, sigma.double(), 5, 9, 1.7, "sum")
    close(loss, want, torch.float32, "loss", scale=max(1.0, want.abs().item()))
    (g,), (g_ref,) = torch.autograd.grad(loss, s), torch.autograd.grad(want, rs)
    close(g, g_ref, torch.float32, "dscores", scale=g_ref.abs().max().item())


def test_cpu_results_do_not_depend_on_thread_count():
    if dispatch.unavailable_reason("ext", "cpu"):
        pytest.skip("ext not built")
    torch.manual_seed(4)
    scores = torch.randn(5, 3, 40, 40)
    sigma = torch.rand(5) + 0.1
    x = torch.randn(4, 16, 20, 20)
    g, a = torch.randn(4, 16), torch.randn(16)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, max(2, threads)):
            torch.set_num_threads(t)
            results.append((fastscore.dsm_loss(scores, sigma, 1, 2, reduction="none", backend="ext"),
                            fastscore.cond_instance_norm_plus(x, g, a, None, backend="ext")))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def _opcheck_cases(device):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 5, device=device)
    g, a, b = torch.randn(2, 3, device=device), torch.randn(3, device=device), torch.randn(2, 3, device=device)
    sigma = torch.rand(2, device=device) + 0.1
    y, mean, rstd = ops.cond_instance_norm_plus(x, g, a, b, 1e-5, 1)
    return [
        (ops.cond_instance_norm_plus.default, (x.requires_grad_(), g.requires_grad_(), a, b, 1e-5, 1)),
        (ops.cond_instance_norm_plus.default, (x.detach().contiguous(memory_format=torch.channels_last), g, a, None, 1e-3, 2)),
        (ops.cond_instance_norm_plus_backward.default, (torch.randn_like(y), x.detach(), g.detach(), a, b, mean, rstd, 1e-5, 1)),
        (ops.perturb.default, (x.detach().requires_grad_(), sigma, 3, 4)),
        (ops.dsm_loss.default, (x.detach().requires_grad_(), sigma, 3, 4, 2.0)),
        (ops.dsm_loss_backward.default, (torch.rand(2, device=device), x.detach(), sigma, 3, 4, 2.0)),
        (ops.langevin_step_.default, (x.detach().clone(), torch.randn_like(x), 0.1, 3, 4, 0.5)),
        (ops.normal_.default, (torch.empty(7, device=device), 3, 4)),
        (ops.philox4x32_10.default, (torch.zeros(2, 6, dtype=torch.int64, device=device),)),
    ]


@pytest.mark.parametrize("device", EXT_DEVICES)
def test_opcheck_every_op(device):
    for op, args in _opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", EXT_DEVICES)
@pytest.mark.parametrize("call,message", [
    (lambda d: ops.cond_instance_norm_plus(torch.randn(2, 3, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d), None, 1e-5, 0), "x must be 4-D"),
    (lambda d: ops.cond_instance_norm_plus(torch.randn(2, 3, 4, 4, device=d), torch.ones(2, 4, device=d), torch.ones(3, device=d), None, 1e-5, 0), "gamma must have shape"),
    (lambda d: ops.cond_instance_norm_plus(torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d), torch.ones(5, device=d), 1e-5, 0), "beta must have shape"),
    (lambda d: ops.cond_instance_norm_plus(torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d), None, -1.0, 0), "eps must be > 0"),
    (lambda d: ops.cond_instance_norm_plus(torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d), None, 1e-5, 7), "activation must be"),
    (lambda d: ops.cond_instance_norm_plus(torch.ones(2, 3, 4, 4, dtype=torch.int32, device=d), torch.ones(3, device=d), torch.ones(3, device=d), None, 1e-5, 0), "x must be float32"),
    (lambda d: ops.cond_instance_norm_plus_backward(torch.randn(2, 3, 4, 4, device=d), torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d), None, torch.ones(2, 2, device=d), torch.ones(2, 3, device=d), 1e-5, 0), "mean must be the forward's"),
    (lambda d: ops.cond_instance_norm_plus_backward(torch.randn(2, 3, 4, 5, device=d), torch.randn(2, 3, 4, 4, device=d), torch.ones(3, device=d), torch.ones(3, device=d), None, torch.ones(2, 3, device=d), torch.ones(2, 3, device=d), 1e-5, 0), "grad_y must have x's shape"),
    (lambda d: ops.perturb(torch.randn(3, 4, device=d), torch.ones(2, device=d), 0, 0), "sigma must have shape"),
    (lambda d: ops.perturb(torch.randn(3, 4, device=d), torch.ones(3, device=d), -1, 0), "seed must be in"),
    (lambda d: ops.perturb(torch.randn(3, 4, device=d), torch.ones(3, device=d), 0, 2**63 - 5), "offset must be in"),
    (lambda d: ops.dsm_loss(torch.randn(3, 4, device=d), torch.ones(3, 1, device=d), 0, 0, 2.0), "sigma must have shape"),
    (lambda d: ops.dsm_loss_backward(torch.ones(2, device=d), torch.randn(3, 4, device=d), torch.ones(3, device=d), 0, 0, 2.0), "grad must have shape"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 5, device=d), 0.1, 0, 0, 0.1), "score must have x's shape"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 4, device=d), -0.1, 0, 0, 0.1), "step_size must be >= 0"),
    (lambda d: ops.langevin_step_(torch.randn(3, 4, device=d), torch.randn(3, 4, device=d), 0.1, 0, 0, math.inf), "noise_scale must be finite"),
    (lambda d: ops.normal_(torch.empty(3, dtype=torch.int64, device=d), 0, 0), "out must be float32"),
    (lambda d: ops.philox4x32_10(torch.zeros(2, 5, dtype=torch.int64, device=d)), "words must be an int64 tensor of shape"),
])
def test_bad_inputs_are_rejected_in_cpp_naming_the_argument(device, call, message):
    with pytest.raises(RuntimeError, match=message):
        call(device)


@requires_cuda
def test_cuda_rejects_arguments_on_another_device():
    if dispatch.unavailable_reason("ext", "cuda"):
        pytest.skip(dispatch.unavailable_reason("ext", "cuda"))
    x = torch.randn(2, 3, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="sigma is on cpu but x is on cuda"):
        ops.perturb(x, torch.ones(2), 0, 0)
    with pytest.raises(RuntimeError, match="gamma is on cpu but x is on cuda"):
        ops.cond_instance_norm_plus(x, torch.ones(3), torch.ones(3, device="cuda"), None, 1e-5, 0)
