"""The plain-PyTorch ground truth of every fused op (docs/DESIGN.md section 2), and the `torch` backend.

Slow, obvious and exact: cond_instance_norm_plus, perturb, dsm_loss, langevin_step_ and randn are the
formulas written out with torch ops (the oracle the tests hold every backend to; autograd gives their
gradients). Arithmetic is float32 whatever the storage dtype, float64 for float64 inputs, so gradcheck
runs on it. The primitives of protocol.py (norm_forward, norm_backward, perturb, dsm_per_sample,
dsm_backward, langevin_step_, randn_) are built from the same formulas. Inputs are assumed valid:
the public ops check them before any backend runs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.types import Device

from ..noise import randn as _noise_randn
from .protocol import (
    ACTIVATION_CODES,
    Number,
    Position,
    Tensor,
    acc_dtype,
    lookup_by_gathering,
    memory_format_of,
    reduce_losses,
)


def _per_sample(p: torch.Tensor | None, n: int, c: int, dtype: torch.dtype) -> torch.Tensor | float:
    """A (N, C) or (C,) parameter as an (N, C, 1, 1) or (1, C, 1, 1) tensor in the compute dtype."""
    if p is None:
        return 0.0
    return p.to(dtype).reshape(-1, c, 1, 1)


def cond_instance_norm_plus(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None = None, eps: float = 1e-5,
                            activation: str | None = None) -> Tensor:
    n, c = x.shape[0], x.shape[1]
    dtype = acc_dtype(x)
    xf = x.to(dtype)
    mu = xf.mean(dim=(2, 3), keepdim=True)                          # (N, C, 1, 1)
    var = ((xf - mu) ** 2).mean(dim=(2, 3), keepdim=True)            # biased
    if c > 1:
        m = mu.mean(dim=1, keepdim=True)                             # (N, 1, 1, 1)
        v = ((mu - m) ** 2).sum(dim=1, keepdim=True) / (c - 1)       # unbiased
        muhat = (mu - m) / torch.sqrt(v + eps)
    else:
        muhat = torch.zeros_like(mu)
    h = (xf - mu) / torch.sqrt(var + eps) + _per_sample(alpha, n, c, dtype) * muhat
    y = _per_sample(gamma, n, c, dtype) * h + _per_sample(beta, n, c, dtype)
    if activation == "elu":
        y = F.elu(y)
    elif activation == "relu":
        y = F.relu(y)
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def _broadcast_per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape((-1,) + (1,) * (like.dim() - 1))


def _ints(seed: Position, offset: Position) -> tuple[int, int]:
    """Tensor positions (the CUDA-graph form, for the fused backends) are read back here: plain and slow."""
    return int(seed), int(offset)


def perturb(x: Tensor, sigma: Tensor, seed: Position, offset: Position = 0) -> Tensor:
    dtype = acc_dtype(x)
    z = _noise_randn(x.shape, *_ints(seed, offset), device=x.device, dtype=dtype)
    return (x.to(dtype) + _broadcast_per_sample(sigma.to(dtype), x) * z).to(x.dtype)


def dsm_loss(scores: Tensor, sigma: Tensor, seed: Position, offset: Position = 0, anneal_power: float = 2.0,
             reduction: str = "mean") -> Tensor:
    dtype = acc_dtype(scores)
    z = _noise_randn(scores.shape, *_ints(seed, offset), device=scores.device, dtype=dtype)
    s = sigma.to(dtype)
    residual = scores.to(dtype) + z / _broadcast_per_sample(s, scores)
    per_sample = 0.5 * s**anneal_power * (residual**2).reshape(residual.shape[0], -1).sum(dim=1)
    return _reduce(per_sample, reduction)


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample.sum() if reduction == "sum" else per_sample


def langevin_step_(x: Tensor, score: Tensor, step_size: Number, seed: Position, offset: Position = 0,
                   noise_scale: Number | None = None) -> Tensor:
    # Tensor arguments (for CUDA graphs on the fused backends) are read back here: plain and slow.
    seed, offset = _ints(seed, offset)
    step_size = step_size.item() if isinstance(step_size, torch.Tensor) else step_size
    noise_scale = noise_scale.item() if isinstance(noise_scale, torch.Tensor) else noise_scale
    if noise_scale is None:
        noise_scale = math.sqrt(2.0 * float(step_size))
    dtype = acc_dtype(x)
    z = _noise_randn(x.shape, seed, offset, device=x.device, dtype=dtype)
    # x.copy_ rather than x.add_ so autograd can still differentiate through a cloned x (gradcheck).
    x.copy_(x.to(dtype) + step_size * score.to(dtype) + noise_scale * z)
    return x


def randn(shape: int | Sequence[int], seed: int, offset: int = 0, device: Device = None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    return _noise_randn(shape, seed, offset, device=device, dtype=dtype)


# ---- the primitives of the torch backend -----------------------------------------------------------

_ACTIVATION_NAMES = {code: name for name, code in ACTIVATION_CODES.items()}


def unavailable_reason(device: torch.device) -> str | None:
    return None


def norm_forward(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float,
                 activation: int) -> tuple[Tensor, Tensor, Tensor]:
    dtype = acc_dtype(x)
    xf = x.to(dtype)
    mean = xf.mean(dim=(2, 3))
    rstd = (((xf - mean[:, :, None, None]) ** 2).mean(dim=(2, 3)) + eps).rsqrt()
    return cond_instance_norm_plus(x, gamma, alpha, beta, eps, _ACTIVATION_NAMES[activation]), mean, rstd


def norm_backward(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor,
                  rstd: Tensor, eps: float, activation: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    # The formula's gradient written out (a backend runs below autograd, so it cannot ask autograd):
    # with xhat = (x - mu) rstd, h = xhat + alpha muhat, g = gamma h + beta, dg = dy act'(g),
    # S1 = sum dg and S2 = sum dg xhat over each plane, the parameter grads are S2 + alpha muhat S1,
    # gamma muhat S1 and S1; dx is the instance norm's gamma rstd (dg - S1/HW - xhat S2/HW) plus what
    # reaches mu through muhat = (mu - m) / sqrt(v + eps), spread evenly over the plane.
    dtype = acc_dtype(x)
    n, c = x.shape[:2]
    hw = x.shape[2] * x.shape[3]
    mean, rstd = mean.to(dtype), rstd.to(dtype)
    xhat = (x.to(dtype) - mean[:, :, None, None]) * rstd[:, :, None, None]
    gamma_nc, alpha_nc = (p.to(dtype).expand(n, c) for p in (gamma, alpha))
    muhat, rv = _channel_standardised(mean, eps)
    pre = gamma_nc[:, :, None, None] * (xhat + (alpha_nc * muhat)[:, :, None, None]) \
        + (0.0 if beta is None else beta.to(dtype).expand(n, c)[:, :, None, None])
    dg = grad_y.to(dtype) * _activation_slope(pre, _ACTIVATION_NAMES[activation])
    s1, s2 = dg.sum(dim=(2, 3)), (dg * xhat).sum(dim=(2, 3))
    dx = (gamma_nc * rstd)[:, :, None, None] * (dg - s1[:, :, None, None] / hw - xhat * (s2 / hw)[:, :, None, None])
    if c > 1:
        d_muhat = alpha_nc * gamma_nc * s1
        g = rv * (d_muhat - muhat * (d_muhat * muhat).sum(dim=1, keepdim=True) / (c - 1))
        dx = dx + ((g - g.mean(dim=1, keepdim=True)) / hw)[:, :, None, None]
    dx = dx.to(x.dtype).contiguous(memory_format=memory_format_of(x))
    return dx, s2 + alpha_nc * muhat * s1, gamma_nc * muhat * s1, (s1 if beta is not None else None)


norm_forward_lookup, norm_backward_lookup = lookup_by_gathering(norm_forward, norm_backward)


def _channel_standardised(mean: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(muhat, rv): each plane mean standardised over its sample's channels, and 1 / sqrt(v + eps)."""
    c = mean.shape[1]
    if c == 1:
        return torch.zeros_like(mean), torch.ones_like(mean[:, :1])
    centred = mean - mean.mean(dim=1, keepdim=True)
    rv = ((centred**2).sum(dim=1, keepdim=True) / (c - 1) + eps).rsqrt()
    return centred * rv, rv


def _activation_slope(pre: Tensor, activation: str | None) -> Tensor:
    if activation == "elu":
        return torch.where(pre > 0, 1.0, pre.exp())
    if activation == "relu":
        return (pre > 0).to(pre.dtype)
    return torch.ones_like(pre)


def dsm_per_sample(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float) -> Tensor:
    return dsm_loss(scores, sigma, seed, offset, anneal_power, "none")


def dsm_reduced(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float,
                reduction: str) -> Tensor:
    return reduce_losses(dsm_per_sample(scores, sigma, seed, offset, anneal_power), reduction)


def dsm_per_sample_and_grad(scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                            anneal_power: float) -> tuple[Tensor, Tensor]:
    ones = torch.ones(scores.shape[0], dtype=acc_dtype(scores), device=scores.device)
    return (dsm_per_sample(scores, sigma, seed, offset, anneal_power),
            dsm_backward(ones, scores, sigma, seed, offset, anneal_power))


def dsm_backward(grad: Tensor, scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                 anneal_power: float) -> Tensor:
    dtype = acc_dtype(scores)
    z = _noise_randn(scores.shape, *_ints(seed, offset), device=scores.device, dtype=dtype)
    s = _broadcast_per_sample(sigma.to(dtype), scores)
    coef = _broadcast_per_sample(grad.to(dtype), scores) * s**anneal_power
    return (coef * (scores.to(dtype) + z / s)).to(scores.dtype)


def randn_(out: Tensor, seed: int, offset: int) -> None:
    out.copy_(_noise_randn(out.shape, seed, offset, device=out.device, dtype=out.dtype))
