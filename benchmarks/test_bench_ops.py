"""Op benchmarks: every available fastscore backend vs the reference eager vs torch.compile of it.

Sizes: on the CPU the targets of issue 5 (norm x = 32x128x32x32 float32; langevin_step_, dsm_loss and
perturb at 100x3x32x32); on CUDA the issue-4 shapes (norm x = 128x128x32x32 float32; the others at
100x3x32x32 and at 64M elements). The compiled baseline of the noise-using ops is the natural user
code with torch.randn_like noise (the Philox reference stream is opaque to Inductor), so it measures
what a user would otherwise write, not the reference stream.

    python -m pytest benchmarks/test_bench_ops.py -s     (ratios print at the end)
"""
from __future__ import annotations

import math

import pytest
import torch

import fastscore
from fastscore import reference

from conftest import DEVICE, implementations

NORM_SHAPE = (128, 128, 32, 32) if DEVICE == "cuda" else (32, 128, 32, 32)
FLAT_SHAPES = [(100, 3, 32, 32)] + ([(64, 1024, 32, 32)] if DEVICE == "cuda" else [])  # 64 * 2^20 = 64M
ROUNDS = 20 if DEVICE == "cuda" else 10  # each group also compiles the reference: keep GPU runs short
IMPLS = implementations()


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


# ---- cond_instance_norm_plus ---------------------------------------------------------------------

def _norm_inputs(requires_grad: bool):
    torch.manual_seed(0)
    n, c = NORM_SHAPE[:2]
    x = (torch.randn(NORM_SHAPE, device=DEVICE) * 2 + 0.5).requires_grad_(requires_grad)
    gamma = (torch.randn(n, c, device=DEVICE) * 0.2 + 1).requires_grad_(requires_grad)
    alpha = torch.randn(n, c, device=DEVICE).requires_grad_(requires_grad)
    beta = torch.randn(n, c, device=DEVICE).requires_grad_(requires_grad)
    return x, gamma, alpha, beta


def _norm_fn(impl):
    if impl == "reference":
        return lambda *a: reference.cond_instance_norm_plus(*a, 1e-5, "elu")
    if impl == "compiled":
        return _compiled(lambda *a: reference.cond_instance_norm_plus(*a, 1e-5, "elu"))
    return lambda *a: fastscore.cond_instance_norm_plus(*a, activation="elu", backend=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_norm_forward(run, impl):
    inputs = _norm_inputs(False)
    fn = _norm_fn(impl)
    with torch.no_grad():
        run(f"norm forward {'x'.join(map(str, NORM_SHAPE))} fp32 elu", impl, lambda: fn(*inputs), ROUNDS,
            2 * inputs[0].numel() * 4)


@pytest.mark.parametrize("impl", IMPLS)
def test_norm_forward_backward(run, impl):
    inputs = _norm_inputs(True)
    grad = torch.randn(NORM_SHAPE, device=DEVICE)
    fn = _norm_fn(impl)

    def step():
        y = fn(*inputs)
        torch.autograd.grad(y, inputs, grad)

    run(f"norm forward+backward {'x'.join(map(str, NORM_SHAPE))} fp32 elu", impl, step, ROUNDS,
        5 * inputs[0].numel() * 4)


# ---- the noise-using ops ---------------------------------------------------------------------------

def _natural_langevin(x, score, step):
    # What a user writes without fastscore: torch's own generator for the noise.
    x.add_(step * score + math.sqrt(2 * step) * torch.randn_like(x))
    return x


def _natural_dsm(scores, sigma, power):
    z = torch.randn_like(scores)
    s = sigma.view(-1, *([1] * (scores.dim() - 1)))
    return (0.5 * sigma**power * ((scores + z / s) ** 2).flatten(1).sum(1)).mean()


def _natural_perturb(x, sigma):
    return x + sigma.view(-1, *([1] * (x.dim() - 1))) * torch.randn_like(x)


def _flat_id(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("shape", FLAT_SHAPES, ids=_flat_id)
@pytest.mark.parametrize("impl", IMPLS)
def test_langevin_step(run, impl, shape):
    x = torch.randn(shape, device=DEVICE)
    score = torch.randn(shape, device=DEVICE)
    step = 1e-4
    if impl == "reference":
        fn = lambda: reference.langevin_step_(x, score, step, 1, 0)  # noqa: E731
    elif impl == "compiled":
        compiled = _compiled(_natural_langevin)
        fn = lambda: compiled(x, score, step)  # noqa: E731
    else:
        fn = lambda: fastscore.langevin_step_(x, score, step, 1, 0, backend=impl)  # noqa: E731
    with torch.no_grad():
        run(f"langevin_step_ {_flat_id(shape)} fp32", impl, fn, ROUNDS, 3 * x.numel() * 4)


@pytest.mark.parametrize("shape", FLAT_SHAPES, ids=_flat_id)
@pytest.mark.parametrize("impl", IMPLS)
def test_dsm_loss_forward_backward(run, impl, shape):
    scores = torch.randn(shape, device=DEVICE, requires_grad=True)
    sigma = torch.rand(shape[0], device=DEVICE) + 0.1
    if impl == "reference":
        loss_fn = lambda: reference.dsm_loss(scores, sigma, 1, 0, 2.0, "mean")  # noqa: E731
    elif impl == "compiled":
        compiled = _compiled(_natural_dsm)
        loss_fn = lambda: compiled(scores, sigma, 2.0)  # noqa: E731
    else:
        loss_fn = lambda: fastscore.dsm_loss(scores, sigma, 1, 0, backend=impl)  # noqa: E731

    def step():
        torch.autograd.grad(loss_fn(), scores)

    run(f"dsm_loss forward+backward {_flat_id(shape)} fp32", impl, step, ROUNDS, 3 * scores.numel() * 4)


@pytest.mark.parametrize("shape", FLAT_SHAPES, ids=_flat_id)
@pytest.mark.parametrize("impl", IMPLS)
def test_perturb(run, impl, shape):
    x = torch.randn(shape, device=DEVICE)
    sigma = torch.rand(shape[0], device=DEVICE) + 0.1
    if impl == "reference":
        fn = lambda: reference.perturb(x, sigma, 1, 0)  # noqa: E731
    elif impl == "compiled":
        compiled = _compiled(_natural_perturb)
        fn = lambda: compiled(x, sigma)  # noqa: E731
    else:
        fn = lambda: fastscore.perturb(x, sigma, 1, 0, backend=impl)  # noqa: E731
    with torch.no_grad():
        run(f"perturb {_flat_id(shape)} fp32", impl, fn, ROUNDS, 2 * x.numel() * 4)


@pytest.mark.parametrize("shape", FLAT_SHAPES, ids=_flat_id)
@pytest.mark.parametrize("impl", IMPLS)
def test_dsm_loss_forward(run, impl, shape):
    scores = torch.randn(shape, device=DEVICE)
    sigma = torch.rand(shape[0], device=DEVICE) + 0.1
    if impl == "reference":
        fn = lambda: reference.dsm_loss(scores, sigma, 1, 0, 2.0, "mean")  # noqa: E731
    elif impl == "compiled":
        compiled = _compiled(_natural_dsm)
        fn = lambda: compiled(scores, sigma, 2.0)  # noqa: E731
    else:
        fn = lambda: fastscore.dsm_loss(scores, sigma, 1, 0, backend=impl)  # noqa: E731
    with torch.no_grad():
        run(f"dsm_loss forward {_flat_id(shape)} fp32", impl, fn, ROUNDS, scores.numel() * 4)
