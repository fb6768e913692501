"""Property-based tests (hypothesis) of every public op on every backend and device, against the float64
reference (fastscore/backend/reference.py) and the noise stream (fastscore/noise.py).

Drawn per example: shapes (N = 1, C = 1, one-pixel planes, odd sizes, C past a channels_last tile),
memory layouts (contiguous, channels_last, slices with a storage offset or a step, transposes), every
storage dtype, parameter layouts ((N, C), (C,), expanded, transposed, strided, embedding slices),
activations, seeds and offsets anywhere in [0, 2^63) and near the 32-bit words of the seed, the
offset and the Philox counter (offset div 4), given as ints or as one-element int64 tensors; and for
the Triton norm, the tiling paths (one-pass, looping tiles, planes split into ranges). Bad input
(one mutation of a valid call) must raise the ValueError/TypeError naming the argument.

Budgets are fixed (derandomize=True: the same examples every run) and small on the CPU, where Triton
runs in its interpreter; FASTSCORE_FUZZ_SCALE multiplies them (e.g. 10 for a longer local hunt), and
on a GPU the budget is GPU_EXAMPLES per test. With FASTSCORE_FUZZ_COUNTS set to a file, the number of
examples each test ran is appended to it as JSON lines (benchmarks/RESULTS.md has the table).
"""
import contextlib
import json
import math
import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastscore
from fastscore.backend import reference
from fastscore.backend.protocol import memory_format_of
from fastscore.noise import MAX_SEED, normal_stream

from helpers import backend_params, poisoned_empty

SCALE = float(os.environ.get("FASTSCORE_FUZZ_SCALE", "1"))
CPU_EXAMPLES = {"torch": 100, "ext": 100, "triton": 12}   # per test and backend on the CPU
GPU_EXAMPLES = 150
F64_BACKENDS = ("torch", "ext")   # the backends that compute in float64 for float64 inputs
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
WORD = 2**32
LIMIT = MAX_SEED + 1              # 2^63: seeds < LIMIT, offset + numel <= LIMIT

COUNTS: dict = {}


def fuzz_settings(backend, device, weight=1.0):
    base = GPU_EXAMPLES if device == "cuda" else CPU_EXAMPLES[backend]
    return settings(max_examples=max(1, round(base * weight * SCALE)), deadline=None, derandomize=True,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def counted(test_name, backend, device):
    key = (test_name, backend, device)
    COUNTS[key] = COUNTS.get(key, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    path = os.environ.get("FASTSCORE_FUZZ_COUNTS")
    if path and COUNTS:
        with open(path, "a") as f:
            for (name, backend, device), n in sorted(COUNTS.items()):
                f.write(json.dumps({"test": name, "backend": backend, "device": device, "examples": n}) + "\n")


# ---- strategies ----------------------------------------------------------------------------------

def near(points, below, above, lo=0, hi=MAX_SEED):
    """Integers within [p - below, p + above] of one of points, clipped to [lo, hi]."""
    return st.tuples(st.sampled_from(points), st.integers(-below, above)).map(
        lambda t: min(max(t[0] + t[1], lo), hi))


def seeds():
    edges = [0, 2**31, WORD, 2**62, MAX_SEED]
    return st.one_of(st.integers(0, MAX_SEED), near(edges, 3, 3), st.integers(0, 1000))


def offsets(numel):
    """Offsets in [0, min(2^63 - numel, 2^63 - 1)]: anywhere, and close below or above the carries of the offset's low
    word (2^32), the counter's low word (offset div 4 = 2^32), their int32 sign bits, and the end."""
    hi = min(LIMIT - numel, MAX_SEED)
    edges = [0, 2**31, WORD, 4 * 2**31, 4 * WORD, 4 * WORD * 3, 2**62, LIMIT]
    return st.one_of(st.integers(0, hi), near(edges, numel + 5, 5, hi=hi), st.integers(0, 64))


def position_forms():
    return st.sampled_from(["ints", "seed", "offset", "both"])


def as_forms(seed, offset, form, device):
    t = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    return (t(seed) if form in ("seed", "both") else seed), (t(offset) if form in ("offset", "both") else offset)


@st.composite
def image_shapes(draw, device, max_numel=None):
    """(N, C, H, W): C small or past a 32-channel tile; H, W from 1, numel bounded."""
    gpu = device == "cuda"
    max_numel = max_numel or (200_000 if gpu else 400)
    n = draw(st.integers(1, 9 if gpu else 3))
    c = draw(st.one_of(st.integers(1, 6), st.integers(31, 70 if gpu else 36)))
    cap = max(1, max_numel // (n * c))
    h = draw(st.integers(1, max(1, min(80 if gpu else 11, cap))))
    w = draw(st.integers(1, max(1, min(80 if gpu else 11, cap // h))))
    return n, c, h, w


@st.composite
def flat_shapes(draw, device):
    """Shapes of rank 1 to 4 for the elementwise ops (4-D most often)."""
    rank = draw(st.sampled_from([1, 2, 3, 4, 4, 4]))
    if rank == 4:
        return draw(image_shapes(device))
    gpu = device == "cuda"
    n = draw(st.integers(1, 9 if gpu else 4))
    rest = draw(st.lists(st.integers(1, 300 if gpu else 13), min_size=rank - 1, max_size=rank - 1))
    return (n, *rest)


X_LAYOUTS = ["contiguous", "channels_last", "batch_slice", "step_slice", "transposed", "channels_last_slice"]


def layouts_for(shape):
    ok = [k for k in X_LAYOUTS if len(shape) == 4 or not k.startswith("channels_last")]
    return st.sampled_from(ok if len(shape) > 1 else [k for k in ok if k != "transposed"])


def make(shape, layout, dtype, device, gen, scale=1.0, shift=0.0):
    """A tensor of `shape` with fresh values, laid out as `layout` (a view into a larger buffer for the
    slices), as a leaf that does not require grad."""
    def fill(s):  # on the device before any view is taken (.to would make a strided view dense)
        return (torch.randn(s, generator=gen) * scale + shift).to(device=device, dtype=dtype)

    shape = tuple(shape)
    if layout == "channels_last":
        t = fill(shape).contiguous(memory_format=torch.channels_last)
    elif layout == "batch_slice":     # contiguous with a storage offset
        t = fill((shape[0] + 1, *shape[1:]))[1:]
    elif layout == "step_slice":      # every other element of the last dimension
        t = fill((*shape[:-1], 2 * shape[-1]))[..., ::2]
    elif layout == "transposed":      # the last two dimensions swapped in memory
        t = fill((*shape[:-2], shape[-1], shape[-2])).transpose(-1, -2)
    elif layout == "channels_last_slice":
        t = fill((*shape[:-1], shape[-1] + 1)).contiguous(memory_format=torch.channels_last)[..., 1:]
    else:
        t = fill(shape)
    assert t.shape == shape
    return t


def tolerances(dtype, backend, noisy):
    """(rtol, atol) against the float64 reference: 2e-2 for half types; 1e-9 for float64 on a backend
    that computes in float64 (except where the float32 noise stream is involved: its float32 rounding
    differs across backends at 1e-5, the tolerance tests/test_noise.py holds it to); 1e-5 otherwise."""
    if dtype in (torch.bfloat16, torch.float16):
        return 2e-2, 2e-2
    if dtype == torch.float64 and backend in F64_BACKENDS and not noisy:
        return 1e-9, 1e-9
    return 1e-5, 1e-5


def check_close(got, want, tol, name, extra_atol=0.0, scale=1.0):
    assert not torch.isnan(got).any(), f"{name} has NaN (unwritten elements?)"
    rtol, atol = tol
    torch.testing.assert_close(got.double().cpu() / scale, want.double().cpu() / scale, rtol=rtol,
                               atol=atol + extra_atol / scale, msg=lambda m: f"{name}: {m}")


# ---- cond_instance_norm_plus -----------------------------------------------------------------------

PARAM_KINDS = ["nc", "c", "c_strided", "expanded", "transposed", "nc_strided"]


def param_leaf(kind, n, c, dtype, device, gen, shift):
    """(leaf, view): the tensor autograd differentiates, and how the op sees it ((N, C) or (C,))."""
    shapes = {"nc": (n, c), "c": (c,), "c_strided": (2 * c,), "expanded": (c,), "transposed": (c, n),
              "nc_strided": (n, 2 * c)}
    views = {"nc": lambda t: t, "c": lambda t: t, "c_strided": lambda t: t[::2],
             "expanded": lambda t: t.expand(n, c), "transposed": lambda t: t.t(),
             "nc_strided": lambda t: t[:, ::2]}
    leaf = (torch.randn(shapes[kind], generator=gen) * 0.5 + shift).to(device=device, dtype=dtype)
    return leaf, views[kind]


@contextlib.contextmanager
def triton_tiling(backend, tiling):
    """The Triton norm's paths: one-pass (default), looping small tiles, planes split into ranges."""
    if backend != "triton" or tiling == "default":
        yield
        return
    from fastscore.kernels import instance_norm as nm
    patches = dict(SAMPLE_TILE=0, TILE=16, CHANNELS_LAST_PLANES=4, SAMPLE_BLOCK_C=2,
                   TARGET_PROGRAMS=1 if tiling == "tiles" else 4096)
    with contextlib.ExitStack() as stack:
        for name, value in patches.items():
            stack.enter_context(mock.patch.object(nm, name, value))
        yield


@st.composite
def norm_cases(draw, device, backend):
    shape = draw(image_shapes(device))
    dtype = draw(st.sampled_from(DTYPES))
    return dict(
        shape=shape, dtype=dtype, layout=draw(st.sampled_from(X_LAYOUTS)),
        embedding=draw(st.booleans()),
        kinds=[draw(st.sampled_from(PARAM_KINDS)) for _ in range(3)],
        param_dtype=draw(st.sampled_from([dtype, torch.float32])),
        has_beta=draw(st.booleans()), activation=draw(st.sampled_from([None, "elu", "relu"])),
        eps=draw(st.sampled_from([1e-5, 1e-5, 1e-3, 0.1])),
        scale=draw(st.sampled_from([0.1, 1.0, 2.0, 30.0])), shift=draw(st.sampled_from([0.0, 0.5, -3.0])),
        tiling=draw(st.sampled_from(["default", "tiles", "ranges"])) if backend == "triton" else "default",
        seed=draw(st.integers(0, 2**31)))


def _norm_with_views(x, leaves, views, embedding, has_beta, c, eps, activation, acc, op):
    """op(x, gamma, alpha, beta) with the parameters viewed from leaves converted to acc (None: as is)."""
    conv = (lambda t: t) if acc is None else (lambda t: t.detach().to(acc).requires_grad_())
    rx, rleaves = conv(x), [conv(t) for t in leaves]
    if embedding:
        params = [rleaves[0][:, :c], rleaves[0][:, c:2 * c], rleaves[0][:, 2 * c:] if has_beta else None]
    else:
        params = [view(t) for view, t in zip(views, rleaves, strict=False)] + ([] if has_beta else [None])
    return op(rx, *params, eps, activation), [rx, *rleaves]


def check_norm_case(case, backend, device):
    """One example of test_fuzz_norm_forward_backward (callable on its own to replay a case)."""
    n, c, h, w = shape = case["shape"]
    dtype, pdtype = case["dtype"], case["param_dtype"]
    gen = torch.Generator().manual_seed(case["seed"])
    x = make(shape, case["layout"], dtype, device, gen, case["scale"], case["shift"]).requires_grad_()
    k = 3 if case["has_beta"] else 2
    if case["embedding"]:   # one (N, K C) embedding row per sample: gamma | alpha | beta column blocks
        emb = (torch.randn(n, k * c, generator=gen) * 0.5).to(device=device, dtype=pdtype)
        emb[:, :c] += 1.0
        leaves, views = [emb.requires_grad_()], []
    else:
        pairs = [param_leaf(kind, n, c, pdtype, device, gen, 1.0 if i == 0 else 0.0)
                 for i, kind in enumerate(case["kinds"][:k])]
        leaves, views = [p[0].requires_grad_() for p in pairs], [p[1] for p in pairs]
    args = (leaves, views, case["embedding"], case["has_beta"], c, case["eps"], case["activation"])

    def op(x, gamma, alpha, beta, eps, activation):
        return fastscore.cond_instance_norm_plus(x, gamma, alpha, beta, eps, activation, backend=backend)

    with triton_tiling(backend, case["tiling"]), poisoned_empty():
        y, inputs = _norm_with_views(x, *args, acc=None, op=op)
        assert y.dtype == dtype and y.shape == x.shape
        assert y.is_contiguous(memory_format=memory_format_of(x)), "y must keep x's memory format"
        dy = make(shape, "contiguous", dtype, device, gen).contiguous(memory_format=memory_format_of(x))
        grads = list(torch.autograd.grad(y, inputs, dy))
    for g, t in zip(grads, inputs, strict=True):
        assert g.shape == t.shape and g.dtype == t.dtype

    ref = reference.cond_instance_norm_plus
    y64, in64 = _norm_with_views(x, *args, acc=torch.float64, op=ref)
    grads64 = list(torch.autograd.grad(y64, in64, dy.double()))
    # The reference run in the op's arithmetic dtype measures the conditioning at these inputs
    # (muhat = (mu - m) / sqrt(v + eps) amplifies the rounding of near-equal channel means): allow
    # twice its error, as tests/test_ops.py does.
    exact = dtype == torch.float64 and backend in F64_BACKENDS
    acc = torch.float64 if exact else torch.float32
    y32, in32 = _norm_with_views(x, *args, acc=acc, op=ref)
    grads32 = list(torch.autograd.grad(y32, in32, dy.to(acc)))
    tol = tolerances(dtype, backend, noisy=False)
    check_close(y, y64, tol, f"y {case}", 2 * (y32.double() - y64).abs().max().item())

    if case["activation"] == "relu":   # at ReLU's kink the slope flips with rounding: no test of dx
        pre, _ = _norm_with_views(x, *args, acc=torch.float64,
                                  op=lambda *a: ref(*a[:-1], None))
        kink = pre.abs() < 1e-4 * max(pre.abs().max().item(), 1e-30)
        if dtype in (torch.bfloat16, torch.float16):
            kink = pre.abs() < 2e-2 * max(pre.abs().max().item(), 1e-30)
        grads[0], grads64[0], grads32[0] = (torch.where(kink, 0, g.to(kink.device)) for g in
                                            (grads[0], grads64[0], grads32[0]))
    # dx carries rstd (up to 1/sqrt(eps)) times cancelling terms; parameter grads are sums over
    # N*H*W terms: scale each tolerance as tests/test_ops.py does.
    rstd_max = (x.detach().double().var((2, 3), unbiased=False) + case["eps"]).rsqrt().max().item()
    for i, (g, g64, g32) in enumerate(zip(grads, grads64, grads32, strict=True)):
        scale = max(1.0, rstd_max / 10) if i == 0 else max(1.0, g64.abs().max().item())
        # A parameter's gradient comes back in its dtype (float32 parameters of a float64 x).
        g_tol = tol if g.dtype == dtype else tolerances(g.dtype, backend, noisy=False)
        check_close(g, g64, g_tol, f"grad {i} {case}", 2 * (g32.double() - g64).abs().max().item(), scale)


@pytest.mark.parametrize("backend,device", backend_params())
def test_fuzz_norm_forward_backward(backend, device):
    @fuzz_settings(backend, device)
    @given(case=norm_cases(device, backend))
    def run(case):
        counted("norm", backend, device)
        check_norm_case(case, backend, device)

    run()


# ---- the noise ops -----------------------------------------------------------------------------

def sigmas(n, device, gen, dtype):
    """Positive noise levels from 0.01 to 10, log-uniform."""
    return (10 ** (torch.rand(n, generator=gen) * 3 - 2)).to(device=device, dtype=dtype)


@st.composite
def noise_cases(draw, device):
    shape = draw(flat_shapes(device))
    numel = math.prod(shape)
    dtype = draw(st.sampled_from(DTYPES))
    return dict(shape=shape, dtype=dtype, layout=draw(layouts_for(shape)),
                sigma_dtype=draw(st.sampled_from([torch.float32, dtype])),
                seed=draw(seeds()), offset=draw(offsets(numel)), form=draw(position_forms()),
                values_seed=draw(st.integers(0, 2**31)))


@pytest.mark.parametrize("backend,device", backend_params())
def test_fuzz_perturb(backend, device):
    @fuzz_settings(backend, device)
    @given(case=noise_cases(device))
    def run(case):
        counted("perturb", backend, device)
        gen = torch.Generator().manual_seed(case["values_seed"])
        dtype, seed, offset = case["dtype"], case["seed"], case["offset"]
        x = make(case["shape"], case["layout"], dtype, device, gen, 2.0)
        sigma = sigmas(x.shape[0], device, gen, case["sigma_dtype"])
        with poisoned_empty():
            got = fastscore.perturb(x, sigma, seed, offset, backend=backend)
            got_t = fastscore.perturb(x, sigma, *as_forms(seed, offset, case["form"], device), backend=backend)
        assert got.dtype == dtype and got.shape == x.shape
        assert got.is_contiguous(memory_format=memory_format_of(x)), "perturb must keep x's memory format"
        assert torch.equal(got_t, got), "a tensor stream position must give the int's numbers bitwise"
        want = reference.perturb(x.double(), sigma.double(), seed, offset)
        check_close(got, want, tolerances(dtype, backend, noisy=True), f"perturb {case}")

    run()


@st.composite
def dsm_cases(draw, device):
    case = draw(noise_cases(device))
    case.update(power=draw(st.one_of(st.sampled_from([0.0, 1.0, 1.5, 2.0]), st.floats(0.0, 3.0))),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])), grad=draw(st.booleans()))
    return case


@pytest.mark.parametrize("backend,device", backend_params())
def test_fuzz_dsm_loss(backend, device):
    @fuzz_settings(backend, device)
    @given(case=dsm_cases(device))
    def run(case):
        counted("dsm_loss", backend, device)
        gen = torch.Generator().manual_seed(case["values_seed"])
        dtype, seed, offset, power = case["dtype"], case["seed"], case["offset"], case["power"]
        scores = make(case["shape"], case["layout"], dtype, device, gen, 3.0).requires_grad_(case["grad"])
        sigma = sigmas(scores.shape[0], device, gen, case["sigma_dtype"])
        positions = as_forms(seed, offset, case["form"], device)
        with poisoned_empty():
            loss = fastscore.dsm_loss(scores, sigma, seed, offset, power, case["reduction"], backend=backend)
            loss_t = fastscore.dsm_loss(scores, sigma, *positions, power, case["reduction"], backend=backend)
        assert torch.equal(loss_t, loss), "a tensor stream position must give the int's loss bitwise"
        rs = scores.detach().double().requires_grad_()
        want = reference.dsm_loss(rs, sigma.double(), seed, offset, power, case["reduction"])
        assert loss.shape == want.shape
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        scale = max(1.0, want.abs().max().item())
        # A float32 sum of many terms whatever the storage dtype: float32 tolerance (fp16 as test_ops).
        loss_tol = tolerances(torch.float16 if dtype == torch.float16 else torch.float32, backend, noisy=True)
        check_close(loss, want, loss_tol, f"loss {case}", scale=scale)
        if not case["grad"]:
            return
        grad_out = torch.rand(want.shape, generator=gen, dtype=torch.float64) + 0.5
        with poisoned_empty():
            (g,) = torch.autograd.grad(loss, scores, grad_out.to(device=device, dtype=loss.dtype))
            (g_t,) = torch.autograd.grad(loss_t, scores, grad_out.to(device=device, dtype=loss.dtype))
        assert torch.equal(g_t, g), "a tensor stream position must give the int's gradient bitwise"
        (g64,) = torch.autograd.grad(want, rs, grad_out)
        assert g.dtype == dtype and g.shape == scores.shape
        gscale = max(1.0, g64.abs().max().item())
        check_close(g, g64, tolerances(dtype, backend, noisy=True), f"dscores {case}", scale=gscale)

    run()


@st.composite
def langevin_cases(draw, device):
    case = draw(noise_cases(device))
    step = draw(st.one_of(st.just(0.0), st.floats(1e-6, 0.1)))
    case.update(step=step, noise=draw(st.one_of(st.none(), st.just(0.0), st.floats(1e-4, 1.0))),
                step_tensor=draw(st.booleans()), noise_tensor=draw(st.booleans()),
                score_dtype=draw(st.sampled_from([case["dtype"], torch.float32])),
                score_layout=draw(layouts_for(case["shape"])))
    return case


@pytest.mark.parametrize("backend,device", backend_params())
def test_fuzz_langevin_step_(backend, device):
    @fuzz_settings(backend, device)
    @given(case=langevin_cases(device))
    def run(case):
        counted("langevin_step_", backend, device)
        gen = torch.Generator().manual_seed(case["values_seed"])
        dtype, seed, offset, step, noise = case["dtype"], case["seed"], case["offset"], case["step"], case["noise"]
        x = make(case["shape"], case["layout"], dtype, device, gen)
        base = x._base if x._base is not None else x
        # Which elements of the buffer x is a view of belong to x: the rest must stay untouched.
        mine = torch.zeros_like(base, dtype=torch.bool)
        mine.as_strided(x.shape, x.stride(), x.storage_offset() - base.storage_offset()).fill_(True)
        before = base.clone()
        score = make(case["shape"], case["score_layout"], case["score_dtype"], device, gen, 5.0)
        t = lambda v: torch.tensor([v], dtype=torch.float32, device=device)  # noqa: E731
        step_arg = t(step) if case["step_tensor"] else step
        noise_arg = t(noise) if case["noise_tensor"] and noise is not None else noise
        # The reference takes the float32 values the kernels read from tensors.
        step_ref = float(torch.tensor(step, dtype=torch.float32)) if case["step_tensor"] else step
        noise_ref = (float(torch.tensor(noise, dtype=torch.float32)) if case["noise_tensor"] and noise is not None
                     else noise)
        want = reference.langevin_step_(x.detach().double().clone(), score.double(), step_ref, seed, offset,
                                        noise_ref)
        x_t = x.clone()
        with poisoned_empty():
            out = fastscore.langevin_step_(x, score, step_arg, seed, offset, noise_arg, backend=backend)
            fastscore.langevin_step_(x_t, score, step_arg, *as_forms(seed, offset, case["form"], device), noise_arg,
                                     backend=backend)
        assert out is x, "langevin_step_ must return x"
        assert torch.equal(base[~mine], before[~mine]), "langevin_step_ wrote outside x"
        assert torch.equal(x_t, x), "a tensor stream position must give the int's update bitwise"
        check_close(x, want, tolerances(dtype, backend, noisy=True), f"x {case}")

    run()


@st.composite
def randn_cases(draw, device):
    rank = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0 if rank else 1, 9), min_size=rank, max_size=rank)))
    numel = math.prod(shape)
    return dict(shape=shape, dtype=draw(st.sampled_from(DTYPES)), seed=draw(seeds()),
                offset=draw(offsets(numel)), split=draw(st.integers(0, 40)))


@pytest.mark.parametrize("backend,device", backend_params())
def test_fuzz_randn(backend, device):
    @fuzz_settings(backend, device, weight=2)
    @given(case=randn_cases(device))
    def run(case):
        counted("randn", backend, device)
        shape, dtype, seed, offset = case["shape"], case["dtype"], case["seed"], case["offset"]
        with poisoned_empty():
            z = fastscore.randn(shape, seed, offset, device=device, dtype=dtype, backend=backend)
        assert z.shape == torch.Size(shape) and z.dtype == dtype and z.device.type == device
        numel = z.numel()
        want = normal_stream(numel, seed, offset).reshape(shape)
        # bf16/fp16: one rounding of the float32 stream, which may differ across backends by 1e-7.
        tol = (0.0, 0.0) if backend == "torch" else (1e-5, 1e-5)
        if dtype in (torch.bfloat16, torch.float16):
            tol = tolerances(dtype, backend, noisy=True)
        check_close(z, want.to(dtype), tol, f"randn {case}")
        # Addressing: a draw that starts k positions later is the tail of this one, bitwise.
        k = min(case["split"], numel - 1)  # offset + numel may be 2^63, itself out of range
        if numel:
            tail = fastscore.randn(numel - k, seed, offset + k, device=device, dtype=dtype, backend=backend)
            assert torch.equal(tail, z.flatten()[k:]), f"randn at offset + {k} is not the tail, {case}"

    run()


# ---- bad input -------------------------------------------------------------------------------------
# Each case is (op, mutation, exception, match, host_only): host_only mutations are value checks, a
# ValueError on the CPU but a device-side assert on a GPU (which would poison the CUDA context).

def _nan_at(t, i, value):
    t = t.clone()
    t.view(-1)[i % t.numel()] = value
    return t


MUTATIONS = {
    "x_list": (lambda a, r: a.update(x=a["x"].tolist()), TypeError, "{x} must be a torch.Tensor", False),
    "x_int": (lambda a, r: a.update(x=a["x"].to(r.choice([torch.int32, torch.int64, torch.uint8, torch.bool]))),
              TypeError, "{x} must be float32", False),
    "x_complex": (lambda a, r: a.update(x=a["x"].to(torch.complex64)), TypeError, "{x} must be float32", False),
    "x_empty": (lambda a, r: a.update(x=a["x"][:, :0]), ValueError, "{x} must not be empty", False),
    "sigma_nonfinite": (lambda a, r: a.update(sigma=_nan_at(a["sigma"], r.randrange(99),
                                                            r.choice([math.nan, math.inf, -math.inf]))),
                        ValueError, "sigma must be finite", True),
    "sigma_nonpositive": (lambda a, r: a.update(sigma=_nan_at(a["sigma"], r.randrange(99), r.choice([0.0, -0.5]))),
                          ValueError, "sigma must be > 0", True),
    "sigma_length": (lambda a, r: a.update(sigma=torch.ones(a["x"].shape[0] + 1, device=a["x"].device)),
                     ValueError, r"sigma must have shape \(N,\)", False),
    "sigma_rank": (lambda a, r: a.update(sigma=a["sigma"][:, None]), ValueError, "sigma must be 1-D", False),
    "sigma_int": (lambda a, r: a.update(sigma=a["sigma"].long()), TypeError, "sigma must be float", False),
    "sigma_float": (lambda a, r: a.update(sigma=1.0), TypeError, "sigma must be a torch.Tensor", False),
    "sigma_meta": (lambda a, r: a.update(sigma=a["sigma"].to("meta")), ValueError, "sigma is on meta", False),
    "seed_range": (lambda a, r: a.update(seed=r.choice([-1, -2**63, LIMIT, 2**64 + 3])), ValueError,
                   "seed must be in", False),
    "seed_type": (lambda a, r: a.update(seed=r.choice([1.0, "3", None, True])), TypeError, "seed must be an int",
                  False),
    "offset_range": (lambda a, r: a.update(offset=r.choice([-1, LIMIT, LIMIT - a["x"].numel() + 1 + r.randrange(9)])),
                     ValueError, "offset must be in", False),
    "offset_type": (lambda a, r: a.update(offset=r.choice([0.5, "0", False])), TypeError, "offset must be an int",
                    False),
    "seed_tensor_negative": (lambda a, r: a.update(seed=torch.tensor(-1 - r.randrange(2**40))), ValueError,
                             "seed must be in", True),
    "offset_tensor_range": (lambda a, r: a.update(offset=torch.tensor(r.choice(
        [-1, -2**63] + ([LIMIT - a["x"].numel() + 1] if a["x"].numel() > 1 else [])))),
                            ValueError, "offset must be in", True),
    "seed_tensor_dtype": (lambda a, r: a.update(seed=torch.tensor(3, dtype=r.choice([torch.int32, torch.float32]),
                                                                  device=a["x"].device)),
                          TypeError, "seed given as a tensor must be one int64 element", False),
    "offset_tensor_numel": (lambda a, r: a.update(offset=torch.tensor([1, 2], device=a["x"].device)),
                            TypeError, "offset given as a tensor must be one int64 element", False),
    "seed_tensor_meta": (lambda a, r: a.update(seed=torch.tensor(1, device="meta")), ValueError, "seed is on meta",
                         False),
}
NORM_MUTATIONS = {
    "x_list": MUTATIONS["x_list"], "x_int": MUTATIONS["x_int"], "x_empty": MUTATIONS["x_empty"],
    "x_rank": (lambda a, r: a.update(x=r.choice([a["x"][0], a["x"][..., None], a["x"][0, 0]])), ValueError,
               "x must be 4-D", False),
    "param_shape": (lambda a, r: a.update({r.choice(["gamma", "alpha", "beta"]): r.choice([
        torch.ones(a["x"].shape[1] + 1), torch.ones(a["x"].shape[0] + 1, a["x"].shape[1]),
        torch.ones(a["x"].shape[0], a["x"].shape[1] + 1), torch.ones(a["x"].shape[0], a["x"].shape[1], 1)])}),
                    ValueError, "(gamma|alpha|beta) must have shape", False),
    "param_int": (lambda a, r: a.update({r.choice(["gamma", "alpha", "beta"]): torch.ones(a["x"].shape[1],
                                                                                         dtype=torch.int64)}),
                  TypeError, "(gamma|alpha|beta) must be float", False),
    "param_meta": (lambda a, r: a.update({r.choice(["gamma", "alpha", "beta"]): torch.ones(a["x"].shape[1],
                                                                                          device="meta")}),
                   ValueError, "(gamma|alpha|beta) is on meta", False),
    "param_number": (lambda a, r: a.update({r.choice(["gamma", "alpha"]): 1.0}), TypeError,
                     "(gamma|alpha) must be a torch.Tensor", False),
    "eps_value": (lambda a, r: a.update(eps=r.choice([0.0, -1e-5, math.nan, math.inf])), ValueError, "eps must be",
                  False),
    "eps_type": (lambda a, r: a.update(eps=r.choice(["1e-5", None, True])), TypeError, "eps must be a number", False),
    "activation": (lambda a, r: a.update(activation=r.choice(["gelu", "ELU", 1, "none"])), ValueError,
                   "activation must be one of", False),
}
DSM_MUTATIONS = {
    "power_value": (lambda a, r: a.update(anneal_power=r.choice([math.nan, math.inf])), ValueError,
                    "anneal_power must be finite", False),
    "power_type": (lambda a, r: a.update(anneal_power=r.choice(["2", None])), TypeError,
                   "anneal_power must be a number", False),
    "reduction": (lambda a, r: a.update(reduction=r.choice(["max", None, "MEAN"])), ValueError,
                  "reduction must be one of", False),
}
LANGEVIN_MUTATIONS = {
    "step_value": (lambda a, r: a.update(step_size=r.choice([-1e-3, -math.inf, math.nan, math.inf])), ValueError,
                   "step_size must be", False),
    "step_type": (lambda a, r: a.update(step_size=r.choice(["big", None, True])), TypeError,
                  "step_size must be a number", False),
    "step_tensor_negative": (lambda a, r: a.update(step_size=torch.tensor([-1e-3])), ValueError,
                             "step_size must be >= 0", True),
    "step_tensor_numel": (lambda a, r: a.update(step_size=torch.full((2,), 1e-3, device=a["x"].device)), ValueError,
                          "step_size must be a number or a one-element tensor", False),
    "step_tensor_int": (lambda a, r: a.update(step_size=torch.tensor(r.choice([0, 1]),
                                                                     dtype=r.choice([torch.int64, torch.bool]),
                                                                     device=a["x"].device)),
                        TypeError, "step_size given as a tensor must be float", False),
    "noise_value": (lambda a, r: a.update(noise_scale=r.choice([-1.0, math.nan])), ValueError, "noise_scale must be",
                    False),
    "score_shape": (lambda a, r: a.update(score=a["score"][..., :-1] if a["score"].shape[-1] > 1
                                          else a["score"][..., None]), ValueError, "score must have x's shape", False),
    "score_int": (lambda a, r: a.update(score=a["score"].int()), TypeError, "score must be float", False),
    "score_meta": (lambda a, r: a.update(score=a["score"].to("meta")), ValueError, "score is on meta", False),
}
OPS = {
    "perturb": {**MUTATIONS},
    "dsm_loss": {**MUTATIONS, **DSM_MUTATIONS},
    "langevin_step_": {**{k: v for k, v in MUTATIONS.items() if not k.startswith("sigma")}, **LANGEVIN_MUTATIONS},
    "cond_instance_norm_plus": NORM_MUTATIONS,
}
X_NAME = {"dsm_loss": "scores"}


def _valid_args(op, shape, device, gen):
    x = torch.randn(shape, generator=gen).to(device)
    n, c = shape[:2]
    if op == "cond_instance_norm_plus":
        return dict(x=x, gamma=torch.ones(n, c, device=device), alpha=torch.zeros(c, device=device),
                    beta=torch.zeros(n, c, device=device), eps=1e-5, activation=None)
    args = dict(x=x, sigma=torch.rand(n, generator=gen).to(device) + 0.1, seed=0, offset=0)
    if op == "dsm_loss":
        args.update(anneal_power=2.0, reduction="mean")
    if op == "langevin_step_":
        del args["sigma"]
        args.update(score=torch.randn(shape, generator=gen).to(device), step_size=1e-3, noise_scale=None)
    return args


def _call(op, args, backend):
    args = dict(args)
    if op == "dsm_loss":
        args["scores"] = args.pop("x")
    return getattr(fastscore, op)(**args, backend=backend)


@pytest.mark.parametrize("backend,device", backend_params())
def test_fuzz_bad_input_gets_the_named_error(backend, device):
    """Every mutation of a drawn valid call, one at a time: the documented exception naming the argument,
    before any kernel runs (langevin_step_ leaves x untouched); never a crash, a hang or an answer."""
    import random

    @fuzz_settings(backend, device)
    @given(op=st.sampled_from(sorted(OPS)), shape=image_shapes(device, max_numel=200), rseed=st.integers(0, 2**31))
    def run(op, shape, rseed):
        rnd = random.Random(rseed)
        for name, (mutate, exc, match, host_only) in sorted(OPS[op].items()):
            if host_only and device != "cpu":
                continue
            counted("bad_input", backend, device)
            args = _valid_args(op, shape, device, torch.Generator().manual_seed(rseed))
            mutate(args, rnd)
            x = args["x"]
            before = x.clone() if isinstance(x, torch.Tensor) and x.device.type != "meta" else None
            with pytest.raises(exc, match=match.format(x=X_NAME.get(op, "x"))):
                _call(op, args, backend)
            if op == "langevin_step_" and before is not None:
                assert torch.equal(x, before), f"a rejected langevin_step_ ({name}) must leave x untouched"

    run()


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("op", ["perturb", "dsm_loss", "langevin_step_", "randn"])
def test_the_last_stream_positions_are_accepted_and_one_past_is_rejected(backend, device, op):
    """offset + numel == 2^63 is in range (normal(seed, 2^63 - 1) is the last number), as int and as
    tensor; one more is a ValueError naming offset (on the CPU; a device assert on a GPU)."""
    shape = (2, 3, 2, 2)
    numel = math.prod(shape)
    x, sigma = torch.randn(shape).to(device), torch.rand(2).to(device) + 0.1
    t = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    want = normal_stream(numel, MAX_SEED, LIMIT - numel).reshape(shape)

    def call(offset):
        if op == "randn":
            return fastscore.randn(shape, MAX_SEED, offset, device=device, backend=backend)
        if op == "perturb":
            return (fastscore.perturb(x, sigma, MAX_SEED, offset, backend=backend) - x) / sigma[:, None, None, None]
        if op == "dsm_loss":
            return fastscore.dsm_loss(x, sigma, MAX_SEED, offset, reduction="none", backend=backend)
        y = torch.zeros_like(x)
        return fastscore.langevin_step_(y, x, 0.0, MAX_SEED, offset, 1.0, backend=backend)

    forms = [LIMIT - numel] + ([t(LIMIT - numel)] if op != "randn" else [])
    for offset in forms:
        got = call(offset)
        if op == "dsm_loss":
            want_l = reference.dsm_loss(x.double(), sigma.double(), MAX_SEED, LIMIT - numel, reduction="none")
            torch.testing.assert_close(got.double().cpu(), want_l, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    if device == "cpu":
        for offset in [LIMIT - numel + 1] + ([t(LIMIT - numel + 1)] if op != "randn" else []):
            with pytest.raises(ValueError, match="offset must be in"):
                call(offset)


@pytest.mark.parametrize("backend,device", backend_params())
def test_randn_rejects_offset_two_to_the_63_even_when_empty(backend, device):
    """Offsets lie in [0, 2^63) whatever the size: offset 2^63 is a ValueError naming offset."""
    for shape in ((0,), (3, 0)):
        with pytest.raises(ValueError, match="offset must be in"):
            fastscore.randn(shape, 1, LIMIT, device=device, backend=backend)
