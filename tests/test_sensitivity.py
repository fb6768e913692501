"""Cases chosen so that a plausible slip fails loudly: eps outside the square root, the EMA's rate
swapped with its complement. Each was checked by planting the slip and seeing the test fail."""
import pytest
import torch

import fastscore
from fastscore.ncsn.training import EMA

from helpers import backend_params


def explicit_norm(x, gamma, alpha, beta, eps):
    """DESIGN.md section 2's formula, written out again in float64 (not reference.py's code)."""
    x, gamma, alpha, beta = (t.double() for t in (x, gamma, alpha, beta))
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    m = mu.mean(dim=1, keepdim=True)
    v = mu.var(dim=1, unbiased=True, keepdim=True)
    muhat = (mu - m) / torch.sqrt(v + eps)
    return gamma[:, :, None, None] * ((x - mu) / torch.sqrt(var + eps) + alpha[:, :, None, None] * muhat) \
        + beta[:, :, None, None]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("case", ["quiet planes", "large eps", "equal channel means"])
def test_eps_sits_inside_both_square_roots(backend, device, case):
    """Plane variances of 1e-6 against eps 1e-5, eps 0.5 against unit variances, and channel means 1e-4
    apart: moving eps out of a square root changes y by a factor of about 3 or more in each case."""
    g = torch.Generator().manual_seed(3)
    n, c, h, w = 2, 5, 6, 7
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    eps = 1e-5
    if case == "quiet planes":
        x = 1e-3 * x
    elif case == "large eps":
        eps = 0.5
    else:  # the channel means nearly equal: muhat's denominator is mostly eps
        x = x - x.mean(dim=(2, 3), keepdim=True) + 1e-4 * torch.arange(c, dtype=torch.float64)[:, None, None]
    gamma, alpha, beta = (torch.randn(n, c, generator=g, dtype=torch.float64) for _ in range(3))
    inputs = [t.to(device=device, dtype=torch.float32).requires_grad_() for t in (x, gamma, alpha, beta)]
    y = fastscore.cond_instance_norm_plus(*inputs, eps=eps, backend=backend)
    want = explicit_norm(x, gamma, alpha, beta, eps)
    torch.testing.assert_close(y.double().cpu(), want, rtol=1e-4, atol=1e-4)
    dy = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(y, inputs, dy.to(device=device, dtype=torch.float32))
    ref = [t.clone().requires_grad_() for t in (x, gamma, alpha, beta)]
    want_grads = torch.autograd.grad(explicit_norm(*ref, eps), ref, dy)
    for name, got, expected in zip(("x", "gamma", "alpha", "beta"), grads, want_grads, strict=True):
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-4, atol=1e-4 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_ema_follows_its_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, rate=0.9)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for k, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[k], 0.9 * start[k] + 0.1 * p.detach(), rtol=0, atol=1e-6)
