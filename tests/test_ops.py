"""Every backend's ops against the reference (fastscore/backend/reference.py), forward and backward, and the one
contract every op keeps on every backend: registration, gradients, what is differentiable.

The same tests run for every backend that works on every visible device: on this CPU-only machine the
torch backend, the ext CPU kernels and the Triton kernels in the interpreter; on a GPU the CUDA
versions too, with larger shapes. Outputs are compared with the reference computed in float64.
"""
import pytest
import torch

import fastscore
import fastscore.ops  # registers torch.ops.fastscore.*
from fastscore.backend import reference

from helpers import assert_close, backend_params, poisoned_empty, reference_norm

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NORM_SHAPES = [(2, 3, 5, 7), (1, 1, 4, 4), (3, 4, 1, 1), (2, 5, 33, 17), (1, 2, 3, 3)]
NORM_SHAPES_GPU = NORM_SHAPES + [(4, 64, 32, 32), (2, 8, 256, 256), (3, 33, 17, 19)]
FLAT_SHAPES = [(1, 1, 1, 1), (3, 1, 5, 7), (4, 3, 8, 8), (2, 1000)]
FLAT_SHAPES_GPU = FLAT_SHAPES + [(100, 3, 32, 32), (7, 3, 131, 67)]


def shapes_for(device, cpu_shapes, gpu_shapes):
    return gpu_shapes if device == "cuda" else cpu_shapes


def make(shape, dtype, device, memory_format=torch.contiguous_format, scale=1.0, shift=0.0):
    t = torch.randn(shape, dtype=torch.float32) * scale + shift
    return t.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", [None, "elu", "relu"])
def test_norm_forward_backward(backend, device, dtype, channels_last, activation):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for i, shape in enumerate(shapes_for(device, NORM_SHAPES, NORM_SHAPES_GPU)):
        n, c = shape[:2]
        per_sample = i % 2 == 0
        pshape = (n, c) if per_sample else (c,)
        x = make(shape, dtype, device, fmt, scale=2.0, shift=0.5).requires_grad_()
        gamma = make(pshape, dtype, device, scale=0.3, shift=1.0).requires_grad_()
        # The last shape mixes layouts: per-sample gamma and beta with a shared alpha.
        mixed = i == len(NORM_SHAPES) - 1
        alpha = make((c,) if mixed else pshape, dtype, device, scale=0.5).requires_grad_()
        beta = None if i == 3 else make((n, c) if mixed else pshape, dtype, device, scale=0.5).requires_grad_()
        inputs = [t for t in (x, gamma, alpha, beta) if t is not None]
        with poisoned_empty():
            y = fastscore.cond_instance_norm_plus(x, gamma, alpha, beta, activation=activation, backend=backend)
        assert y.dtype == dtype and y.shape == x.shape
        assert y.is_contiguous(memory_format=fmt), "y must keep x's memory format"
        grad_out = make(shape, dtype, device, fmt)
        y_ref, grads_ref = reference_norm(inputs, beta is not None, activation, grad_out, torch.float64)
        y_32, grads_32 = reference_norm(inputs, beta is not None, activation, grad_out, torch.float32)
        # Where the inputs are ill-conditioned, allow twice the error of the reference run in float32.
        assert_close(y, y_ref, dtype, f"y {shape}", 2 * (y_32 - y_ref).abs().max().item())

        with poisoned_empty():
            grads = list(torch.autograd.grad(y, inputs, grad_out))
        if activation == "relu":
            # At ReLU's kink the derivative flips between 0 and gamma * rstd when rounding moves the
            # pre-activation across 0: those few elements of dx are no test of the kernel.
            pre, _ = reference_norm(inputs, beta is not None, None, grad_out, torch.float64)
            kink = pre.abs() < 1e-4 * pre.abs().max()
            grads[0] = torch.where(kink, 0, grads[0])
            grads_ref[0] = torch.where(kink, 0, grads_ref[0])
        # dx carries 1/sqrt(var + eps) (316 when a plane is constant, as with H*W = 1) times a difference
        # of terms that cancel: float32 rounding grows with that factor. Parameter grads are sums over
        # N*H*W terms. Scale each tolerance accordingly.
        rstd_max = (x.detach().double().var((2, 3), unbiased=False) + 1e-5).rsqrt().max().item()
        for name, g, g_ref, g_32 in zip(("dx", "dgamma", "dalpha", "dbeta"), grads, grads_ref, grads_32, strict=False):
            scale = max(1.0, rstd_max / 10) if name == "dx" else max(1.0, g_ref.abs().max().item())
            assert_close(g / scale, g_ref / scale, dtype, f"{name} {shape}",
                         2 * (g_32 - g_ref).abs().max().item() / scale)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_perturb(backend, device, dtype):
    for i, shape in enumerate(shapes_for(device, FLAT_SHAPES, FLAT_SHAPES_GPU)):
        x = make(shape, dtype, device)
        if i % 2:
            x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        sigma = torch.rand(shape[0], device=device) * 2 + 0.01
        with poisoned_empty():
            got = fastscore.perturb(x, sigma, seed=123, offset=10 * i + 1, backend=backend)
        assert got.dtype == dtype and got.shape == x.shape
        assert got.stride() == x.stride(), "perturb must keep x's memory format"
        want = reference.perturb(x.double(), sigma.double(), 123, 10 * i + 1)
        assert_close(got, want, dtype, f"perturb {shape}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dsm_loss_forward_backward(backend, device, dtype, reduction):
    for i, shape in enumerate(shapes_for(device, FLAT_SHAPES, FLAT_SHAPES_GPU)):
        scores = make(shape, dtype, device, scale=3.0)
        if i % 2 and scores.dim() == 4:
            scores = scores.contiguous(memory_format=torch.channels_last)
        scores.requires_grad_()
        sigma = torch.rand(shape[0], device=device) + 0.05
        power = 2.0 if i % 2 else 1.5
        with poisoned_empty():
            loss = fastscore.dsm_loss(scores, sigma, 77, 5 + i, power, reduction, backend=backend)
        rs = scores.detach().double().requires_grad_()
        loss_ref = reference.dsm_loss(rs, sigma.double(), 77, 5 + i, power, reduction)
        assert loss.shape == loss_ref.shape
        scale = max(1.0, loss_ref.abs().max().item())
        # The loss is a float32 sum of many terms whatever the storage dtype: hold it to float32 rtol.
        assert_close(loss / scale, loss_ref / scale, torch.float32 if dtype != torch.float16 else dtype, "loss")
        grad_out = torch.rand_like(loss_ref, dtype=torch.float32).to(device) + 0.5
        with poisoned_empty():
            (g,) = torch.autograd.grad(loss, scores, grad_out.to(loss.dtype))
        (g_ref,) = torch.autograd.grad(loss_ref, rs, grad_out.double())
        assert g.dtype == dtype
        gscale = max(1.0, g_ref.abs().max().item())
        assert_close(g / gscale, g_ref / gscale, dtype, f"dscores {shape}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_dsm_loss_without_gradient_reduces_in_the_backend(backend, device, dtype):
    """No gradient: the loss and its mean or sum from one backend call (dsm_reduced), the same numbers as
    the per-sample losses reduced, a 0-d tensor in the arithmetic dtype."""
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("the Triton kernels compute in float32")
    for i, shape in enumerate(FLAT_SHAPES):
        scores = make(shape, dtype, device, scale=3.0)
        sigma = torch.rand(shape[0], device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        sigma = sigma + 0.05
        position = (5, 2**40 + i) if i % 2 else (torch.tensor(5, device=device), torch.tensor(2**40 + i, device=device))
        with torch.no_grad():
            per_sample = fastscore.dsm_loss(scores, sigma, *position, 1.5, "none", backend=backend)
            for reduction, want in (("mean", per_sample.mean()), ("sum", per_sample.sum())):
                with poisoned_empty():
                    got = fastscore.dsm_loss(scores, sigma, *position, 1.5, reduction, backend=backend)
                assert got.shape == () and got.dtype == per_sample.dtype
                torch.testing.assert_close(got, want, rtol=1e-6 if dtype != torch.float64 else 1e-12, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_langevin_step_in_place(backend, device, dtype):
    for i, shape in enumerate(shapes_for(device, FLAT_SHAPES, FLAT_SHAPES_GPU)):
        x = make(shape, dtype, device)
        score = make(shape, dtype if i % 2 else torch.float32, device, scale=5.0)
        step, noise_scale = 3e-3 * (i + 1), (None if i % 2 else 0.02)
        want = reference.langevin_step_(x.double(), score.double(), step, 9, 1000 + i, noise_scale)
        ptr = x.data_ptr()
        out = fastscore.langevin_step_(x, score, step, 9, 1000 + i, noise_scale, backend=backend)
        assert out is x and x.data_ptr() == ptr, "langevin_step_ must update x in place and return it"
        assert_close(x, want, dtype, f"x {shape}")


@pytest.mark.parametrize("backend,device", backend_params())
def test_ops_trace_whole_under_torch_compile(backend, device):
    """torch.compile(fullgraph=True) of a function using every op: one graph, same numbers as eager.

    aot_eager traces through dynamo and AOT autograd with fake tensors (the part registration must
    get right) without spending minutes in Inductor's code generation on this CPU.
    """
    torch.manual_seed(5)
    x = make((2, 3, 5, 5), torch.float32, device).requires_grad_()
    gamma, alpha = make((2, 3), torch.float32, device, scale=0.2, shift=1.0), make((3,), torch.float32, device)
    sigma = torch.rand(2, device=device) + 0.1

    table, labels = make((4, 6), torch.float32, device, shift=0.5), torch.tensor([1, 3], device=device)

    def step(x):
        h = fastscore.cond_instance_norm_plus(x, gamma, alpha, None, 1e-5, "elu", backend=backend)
        h = fastscore.cond_instance_norm_plus_lookup(h, labels, table, backend=backend)
        noisy = fastscore.perturb(h, sigma, 3, 16, backend=backend)
        loss = fastscore.dsm_loss(noisy, sigma, 3, 16, backend=backend)
        return loss, fastscore.langevin_step_(noisy.detach().clone(), h.detach(), 1e-3, 4, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, moved = compiled(x)
    (grad,) = torch.autograd.grad(loss, x)
    loss_e, moved_e = step(x)
    (grad_e,) = torch.autograd.grad(loss_e, x)
    for got, want in ((loss, loss_e), (moved, moved_e), (grad, grad_e)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _strided_params(kind, n, c, dtype, device):
    """gamma, alpha, beta as views the kernels must read in place, each a leaf's view with its grad path:
    (leaves, params) where params are what reaches the op."""
    if kind == "embedding_slices":  # one (N, 3C) tensor, row stride 3C, column stride 1
        emb = make((n, 3 * c), dtype, device, scale=0.5, shift=0.5).requires_grad_()
        return [emb], [emb[:, :c], emb[:, c: 2 * c], emb[:, 2 * c:]]
    if kind == "transposed":  # (C, N).t(): row stride 1, column stride N
        leaves = [make((c, n), dtype, device, scale=0.5, shift=s).requires_grad_() for s in (1.0, 0.0, 0.0)]
        return leaves, [t.t() for t in leaves]
    # "expanded": (C,) -> (N, C), row stride 0
    leaves = [make((c,), dtype, device, scale=0.5, shift=s).requires_grad_() for s in (1.0, 0.0, 0.0)]
    return leaves, [t.expand(n, c) for t in leaves]


def _strided_reference(kind, x, leaves, grad_out, acc):
    """(y, grads of x and the leaves) of the reference norm in acc, the parameters viewed as for the op."""
    n, c = x.shape[:2]
    rx = x.detach().to(acc).requires_grad_()
    rleaves = [t.detach().to(acc).requires_grad_() for t in leaves]
    if kind == "embedding_slices":
        rparams = [rleaves[0][:, :c], rleaves[0][:, c: 2 * c], rleaves[0][:, 2 * c:]]
    elif kind == "transposed":
        rparams = [t.t() for t in rleaves]
    else:
        rparams = [t.expand(n, c) for t in rleaves]
    ry = reference.cond_instance_norm_plus(rx, *rparams, 1e-5, "elu")
    return ry.double(), [g.double() for g in torch.autograd.grad(ry, [rx, *rleaves], grad_out.to(acc))]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("activation", [None, "elu", "relu"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_norm_passes_nan_through_every_activation(backend, device, activation, channels_last):
    """A NaN in a sample's input makes that whole sample's output NaN (its plane's mean enters every
    channel through muhat), as in the reference, whatever the activation: a diverging network must not
    come out of a norm looking finite (a ReLU written as max(v, 0) or !(v > 0) ? 0 : v maps NaN to 0)."""
    torch.manual_seed(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make((2, 3, 4, 5), torch.float32, device)
    x[0, 1, 2, 3] = float("nan")
    x = x.contiguous(memory_format=fmt)
    gamma, alpha, beta = (make((2, 3), torch.float32, device, scale=0.3, shift=1.0) for _ in range(3))
    y = fastscore.cond_instance_norm_plus(x, gamma, alpha, beta, activation=activation, backend=backend)
    want = reference.cond_instance_norm_plus(x, gamma, alpha, beta, 1e-5, activation)
    assert torch.isnan(want[0]).all(), "the reference itself should carry the NaN to the whole sample"
    nans = int(torch.isnan(y[0]).sum())
    assert nans == y[0].numel(), f"{nans} of {y[0].numel()} outputs of the NaN sample are NaN"
    torch.testing.assert_close(y[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("kind", ["embedding_slices", "transposed", "expanded"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_norm_reads_strided_parameters_in_place(backend, device, kind, channels_last, dtype):
    """gamma, alpha, beta as non-contiguous views (embedding slices, transposes, expansions): forward and
    the gradients of the tensors they are views of, against the float64 reference."""
    torch.manual_seed(7)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for shape in ((3, 5, 6, 7), (2, 4, 33, 17)):
        n, c = shape[:2]
        x = make(shape, dtype, device, fmt, scale=2.0, shift=0.5).requires_grad_()
        leaves, params = _strided_params(kind, n, c, dtype, device)
        assert not params[0].is_contiguous()
        with poisoned_empty():
            y = fastscore.cond_instance_norm_plus(x, *params, activation="elu", backend=backend)
        grad_out = make(shape, dtype, device, fmt)
        with poisoned_empty():
            grads = torch.autograd.grad(y, [x, *leaves], grad_out)

        y_ref, grads_ref = _strided_reference(kind, x, leaves, grad_out, torch.float64)
        y_32, grads_32 = _strided_reference(kind, x, leaves, grad_out, torch.float32)
        assert_close(y, y_ref, dtype, f"y {kind} {shape}", 2 * (y_32 - y_ref).abs().max().item())
        rstd_max = (x.detach().double().var((2, 3), unbiased=False) + 1e-5).rsqrt().max().item()
        for i, (g, g_ref, g_32) in enumerate(zip(grads, grads_ref, grads_32, strict=True)):
            assert g.shape == g_ref.shape
            scale = max(1.0, rstd_max / 10) if i == 0 else max(1.0, g_ref.abs().max().item())
            assert_close(g / scale, g_ref / scale, dtype, f"grad {i} {kind} {shape}",
                         2 * (g_32 - g_ref).abs().max().item() / scale)


def _lookup_reference(x, labels, table, grad_out, acc, activation):
    """(y, dx, dtable) of the reference norm in acc on the rows gathered by indexing (autograd's gather
    and its backward, index_add, as an embedding computes them)."""
    c = x.shape[1]
    rx, rtable = (t.detach().to(acc).requires_grad_() for t in (x, table))
    blocks = rtable[labels].view(x.shape[0], -1, c).unbind(1)
    ry = reference.cond_instance_norm_plus(rx, blocks[0], blocks[1], blocks[2] if len(blocks) == 3 else None,
                                           1e-5, activation)
    return ry.double(), [g.double() for g in torch.autograd.grad(ry, [rx, rtable], grad_out.to(acc))]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("k", [3, 2], ids=["with_beta", "no_beta"])
def test_norm_lookup_reads_table_rows_by_label(backend, device, dtype, channels_last, k):
    """cond_instance_norm_plus_lookup: y, dx and the table's gradient against the reference on gathered
    rows, with repeated labels (their gradients add up) and rows no sample reads (zero gradient)."""
    torch.manual_seed(9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for shape, labels in (((4, 5, 6, 7), [3, 0, 3, 5]), ((3, 4, 33, 17), [1, 1, 1]), ((1, 1, 4, 4), [6])):
        n, c = shape[:2]
        labels = torch.tensor(labels, device=device)
        x = make(shape, dtype, device, fmt, scale=2.0, shift=0.5).requires_grad_()
        table = make((7, k * c), dtype, device, scale=0.4, shift=0.6).requires_grad_()
        with poisoned_empty():
            y = fastscore.cond_instance_norm_plus_lookup(x, labels, table, activation="elu", backend=backend)
        assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
        grad_out = make(shape, dtype, device, fmt)
        with poisoned_empty():
            dx, dtable = torch.autograd.grad(y, [x, table], grad_out)
        assert dtable.shape == table.shape and dtable.dtype == table.dtype
        unread = [r for r in range(7) if r not in labels.tolist()]
        assert (dtable[unread] == 0).all(), "rows no sample reads get no gradient"
        y_ref, grads_ref = _lookup_reference(x, labels, table, grad_out, torch.float64, "elu")
        y_32, grads_32 = _lookup_reference(x, labels, table, grad_out, torch.float32, "elu")
        assert_close(y, y_ref, dtype, f"y {shape}", 2 * (y_32 - y_ref).abs().max().item())
        rstd_max = (x.detach().double().var((2, 3), unbiased=False) + 1e-5).rsqrt().max().item()
        for name, g, g_ref, g_32 in zip(("dx", "dtable"), (dx, dtable), grads_ref, grads_32, strict=True):
            scale = max(1.0, rstd_max / 10) if name == "dx" else max(1.0, g_ref.abs().max().item())
            assert_close(g / scale, g_ref / scale, dtype, f"{name} {shape}",
                         2 * (g_32 - g_ref).abs().max().item() / scale)


@pytest.mark.parametrize("backend,device", backend_params(devices=["cpu"]))
def test_norm_lookup_refuses_labels_outside_the_table(backend, device):
    x = make((2, 3, 4, 4), torch.float32, device)
    table = make((5, 9), torch.float32, device)
    for bad in ([0, 5], [-1, 2]):
        with pytest.raises(IndexError, match=r"index out of range|labels must be in \[0, 5\)"):
            fastscore.cond_instance_norm_plus_lookup(x, torch.tensor(bad), table, backend=backend)
    with pytest.raises(TypeError, match=r"labels \(the noise levels\) must be an integer tensor"):
        fastscore.cond_instance_norm_plus_lookup(x, torch.tensor([0.0, 1.0]), table, backend=backend)
    with pytest.raises(ValueError, match=r"table must have shape \(L, 3C\)"):
        fastscore.cond_instance_norm_plus_lookup(x, torch.tensor([0, 1]), table[:, :8], backend=backend)


@pytest.mark.parametrize("backend,device", backend_params())
def test_norm_module_reads_its_embedding_weight_in_place(backend, device, monkeypatch):
    """CondInstanceNorm2dPlus hands the op its embedding's weight itself (no embedding call, no gathered
    rows, no copies), and the weight's gradient comes from the op's backward alone: no concatenation or
    slice_backward on the way, and the fused backend gathers nothing in either direction."""
    import fastscore.nn as fnn

    torch.manual_seed(8)
    n, c = 3, 4
    module = fnn.CondInstanceNorm2dPlus(c, 5, backend=backend).to(device)
    x = make((n, c, 6, 5), torch.float32, device).requires_grad_()
    labels = torch.tensor([0, 3, 0], device=device)
    seen = {}
    real_op = fnn.cond_instance_norm_plus_lookup

    def op(x, labels, table, *args, **kwargs):
        seen["table"] = table
        return real_op(x, labels, table, *args, **kwargs)

    monkeypatch.setattr(fnn, "cond_instance_norm_plus_lookup", op)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = module(x, labels)
        y.backward(torch.randn_like(y))
    assert seen["table"] is module.embed.weight
    names = {e.name for e in prof.events()}
    forbidden = {"aten::embedding", "aten::slice_backward"}
    if backend != "torch":  # the reference backend's primitive returns three tensors; they are stacked
        forbidden |= {"aten::stack", "aten::cat"}
    assert not names & forbidden, names & forbidden
    if backend == "ext":
        assert "aten::index_select" not in names, "the fused kernels read the rows by label"
    gamma, alpha, beta = module.embed.weight.detach()[labels].view(n, 3, c).unbind(1)
    params = [t.clone().requires_grad_() for t in (gamma, alpha, beta)]
    y_plain = fastscore.cond_instance_norm_plus(x.detach(), *params, backend=backend)
    torch.testing.assert_close(y, y_plain)


@pytest.mark.parametrize("backend,device", backend_params())
def test_langevin_step_takes_stream_position_and_step_as_tensors(backend, device):
    """The CUDA-graph form: seed, offset, step size and noise scale as device tensors, same numbers."""
    x = make((3, 2, 5, 5), torch.float32, device)
    score = make((3, 2, 5, 5), torch.float32, device)
    want = reference.langevin_step_(x.double(), score.double(), 2e-3, 2**40 + 5, 123, 0.05)
    t = lambda v, dtype: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
    fastscore.langevin_step_(x, score, t(2e-3, torch.float32), t(2**40 + 5, torch.int64), t(123, torch.int64),
                             t(0.05, torch.float32), backend=backend)
    assert_close(x, want, torch.float32, "x")


POSITIONS = [(5, 2**32 + 7), (2**40 + 3, 2**33 - 2), (0, 0), (2**62 + 1, 2**62)]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("as_tensor", ["seed", "offset", "both"])
def test_perturb_and_dsm_loss_take_stream_position_as_tensors(backend, device, as_tensor):
    """The CUDA-graph form of perturb and dsm_loss: seed and offset as one-element int64 device tensors
    give bitwise the numbers of the ints (forward and gradients), offsets above 2^32 included."""
    t = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    for i, (seed, offset) in enumerate(POSITIONS):
        shape = (3, 2, 5, 7) if i % 2 else (2, 37)
        x = make(shape, torch.float32, device)
        if i % 2:
            x = x.contiguous(memory_format=torch.channels_last)
        sigma = torch.rand(shape[0], device=device) + 0.1
        seed_t = t(seed) if as_tensor in ("seed", "both") else seed
        offset_t = t(offset) if as_tensor in ("offset", "both") else offset
        want = fastscore.perturb(x, sigma, seed, offset, backend=backend)
        got = fastscore.perturb(x, sigma, seed_t, offset_t, backend=backend)
        assert torch.equal(got, want), f"perturb at {(seed, offset)}"
        assert got.stride() == want.stride()
        for reduction in ("none", "mean"):
            scores = make(shape, torch.float32, device, scale=2.0).requires_grad_()
            loss = fastscore.dsm_loss(scores, sigma, seed, offset, 1.5, reduction, backend=backend)
            loss_t = fastscore.dsm_loss(scores, sigma, seed_t, offset_t, 1.5, reduction, backend=backend)
            assert torch.equal(loss_t, loss), f"dsm_loss at {(seed, offset)}"
            grad_out = torch.rand_like(loss) + 0.5
            (g,) = torch.autograd.grad(loss, scores, grad_out)
            (g_t,) = torch.autograd.grad(loss_t, scores, grad_out)
            assert torch.equal(g_t, g), f"dscores at {(seed, offset)}"


@pytest.mark.parametrize("backend,device", backend_params())
def test_dsm_loss_backward_uses_the_forwards_tensor_position(backend, device):
    """Advancing the offset tensor in place after the loss (as a captured training step does) leaves
    the gradient at the forward's noise."""
    scores = make((2, 3, 4, 4), torch.float32, device).requires_grad_()
    sigma = torch.rand(2, device=device) + 0.1
    seed, offset = torch.tensor(9, device=device), torch.tensor(2**35 + 1, device=device)
    (want,) = torch.autograd.grad(fastscore.dsm_loss(scores, sigma, 9, 2**35 + 1, backend=backend), scores)
    loss = fastscore.dsm_loss(scores, sigma, seed, offset, backend=backend)
    seed.add_(1)
    offset.add_(scores.numel())
    (got,) = torch.autograd.grad(loss, scores)
    assert torch.equal(got, want)


def test_tensor_stream_positions_are_checked_on_the_cpu():
    x, sigma = make((2, 3), torch.float32, "cpu"), torch.ones(2)
    with pytest.raises(ValueError, match="seed must be in"):
        fastscore.perturb(x, sigma, torch.tensor(-1), 0)
    with pytest.raises(ValueError, match="offset must be in"):
        fastscore.dsm_loss(x, sigma, 0, torch.tensor(2**63 - 3))
    with pytest.raises(TypeError, match="offset given as a tensor must be one int64 element"):
        fastscore.perturb(x, sigma, 0, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="seed is on meta"):
        fastscore.dsm_loss(x, sigma, torch.tensor(1, device="meta"), 0)


# ---- the one contract: registration, gradients, what is differentiable ------------------------------

def _norm_args(device, dtype=torch.float32, channels_last=False):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = make((2, 3, 4, 5), dtype, device, fmt, shift=0.3).requires_grad_()
    gamma = make((2, 3), dtype, device, shift=1.0).requires_grad_()
    alpha = make((3,), dtype, device).requires_grad_()
    beta = make((2, 3), dtype, device).requires_grad_()
    return x, gamma, alpha, beta


@pytest.mark.parametrize("backend,device", backend_params())
def test_every_op_passes_opcheck(backend, device):
    """Schemas, fake kernels and the autograd registration of every public op, on every backend."""
    ops = torch.ops.fastscore
    for channels_last in (False, True):
        x, gamma, alpha, beta = _norm_args(device, channels_last=channels_last)
        torch.library.opcheck(ops.cond_instance_norm_plus, (x, gamma, alpha, beta, 1e-5, 1, backend))
        torch.library.opcheck(ops.cond_instance_norm_plus, (x, gamma, alpha, None, 1e-5, 0, backend))
        y, mean, rstd = ops.cond_instance_norm_plus(x, gamma, alpha, beta, 1e-5, 2, backend)
        dy = torch.randn_like(y)
        torch.library.opcheck(ops.cond_instance_norm_plus_backward,
                              (dy, x.detach(), gamma.detach(), alpha.detach(), beta.detach(), mean, rstd, 1e-5, 2,
                               backend))
        sigma = torch.rand(2, device=device) + 0.1
        position = torch.tensor(2**40 + 3, device=device)
        for seed_t, offset_t in ((None, None), (torch.tensor(7, device=device), position)):
            torch.library.opcheck(ops.perturb, (x.detach().clone().requires_grad_(), sigma, 11, 2**40 + 3, seed_t,
                                                offset_t, backend))
            torch.library.opcheck(ops.dsm_loss_per_sample, (x.detach().clone(), sigma, 7, 9, 2.0, seed_t, offset_t,
                                                            backend))
            torch.library.opcheck(ops.dsm_loss_per_sample_and_grad, (x.detach().clone().requires_grad_(), sigma, 7, 9,
                                                                     1.5, seed_t, offset_t, backend))
        step = torch.tensor([1e-3], device=device)
        torch.library.opcheck(ops.langevin_step_, (x.detach().clone(), torch.randn_like(x), 1e-3, 4, 6, 0.05,
                                                   None, None, None, None, backend))
        torch.library.opcheck(ops.langevin_step_, (x.detach().clone(), torch.randn_like(x), 0.0, 4, 0, -1.0,
                                                   step, None, torch.tensor([6], device=device), None, backend))
        labels = torch.tensor([2, 0], device=device)
        table = make((4, 9), torch.float32, device).requires_grad_()
        for k in (3, 2):
            torch.library.opcheck(ops.cond_instance_norm_plus_lookup, (x, labels, table[:, :3 * k], 1e-5, 1, backend))
        y, mean, rstd = ops.cond_instance_norm_plus_lookup(x, labels, table, 1e-5, 1, backend)
        torch.library.opcheck(ops.cond_instance_norm_plus_lookup_backward,
                              (torch.randn_like(y), x.detach(), labels, table.detach(), mean, rstd, 1e-5, 1, backend))
    torch.library.opcheck(ops.randn_, (torch.empty(37, device=device), 5, 3, backend))


@pytest.mark.parametrize("backend,device", backend_params(names=("torch", "ext")))
def test_gradcheck_in_float64(backend, device):
    """The one autograd, over the backward primitives of each backend that computes in float64."""
    x, gamma, alpha, beta = _norm_args(device, torch.float64)
    for activation in (None, "elu"):
        assert torch.autograd.gradcheck(
            lambda *t, activation=activation: fastscore.cond_instance_norm_plus(*t, activation=activation,
                                                                                backend=backend),
            (x, gamma, alpha, beta))
    table = make((4, 9), torch.float64, device, shift=0.5).requires_grad_()
    labels = torch.tensor([3, 3], device=device)
    assert torch.autograd.gradcheck(
        lambda x, table: fastscore.cond_instance_norm_plus_lookup(x, labels, table, activation="elu", backend=backend),
        (x, table))
    sigma = torch.rand(2, dtype=torch.float64, device=device) + 0.5
    assert torch.autograd.gradcheck(lambda t: fastscore.perturb(t, sigma, 4, 10, backend=backend), (x,))
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda t, reduction=reduction: fastscore.dsm_loss(t, sigma, 4, 10, 1.5, reduction, backend=backend),
            (x,))


@pytest.mark.parametrize("backend,device", backend_params())
def test_sigma_is_a_constant_of_the_objective(backend, device):
    """sigma, a noise level, gets no gradient from perturb or dsm_loss, on every backend alike."""
    x = make((3, 2, 4, 4), torch.float32, device).requires_grad_()
    sigma = (torch.rand(3, device=device) + 0.1).requires_grad_()
    loss = fastscore.dsm_loss(fastscore.perturb(x, sigma, 8, 0, backend=backend) * 2, sigma, 8, 0, backend=backend)
    dx, dsigma = torch.autograd.grad(loss, (x, sigma), allow_unused=True)
    assert dsigma is None and dx is not None and torch.isfinite(dx).all()
