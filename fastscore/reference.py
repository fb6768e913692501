"""The plain-PyTorch ground truth of every fused op (DESIGN.md section 2).

Slow, obvious and exact: each function is the formula written out with torch ops, so autograd
gives the backward. Arithmetic is float32 whatever the storage dtype, float64 for float64 inputs
(so gradcheck can run on it). Inputs are assumed valid: the public functions in fastscore.ops
check them before any backend runs. This module is also the `torch` backend.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .noise import randn as _noise_randn


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _per_sample(p: torch.Tensor | None, n: int, c: int, dtype: torch.dtype) -> torch.Tensor | float:
    """A (N, C) or (C,) parameter as an (N, C, 1, 1) or (1, C, 1, 1) tensor in the compute dtype."""
    if p is None:
        return 0.0
    return p.to(dtype).reshape(-1, c, 1, 1)


def cond_instance_norm_plus(x, gamma, alpha, beta=None, eps=1e-5, activation=None):
    n, c = x.shape[0], x.shape[1]
    dtype = compute_dtype(x)
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
    memory_format = (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )
    return y.to(x.dtype).contiguous(memory_format=memory_format)


def _broadcast_per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape((-1,) + (1,) * (like.dim() - 1))


def perturb(x, sigma, seed, offset=0):
    dtype = compute_dtype(x)
    z = _noise_randn(x.shape, seed, offset, device=x.device, dtype=dtype)
    return (x.to(dtype) + _broadcast_per_sample(sigma.to(dtype), x) * z).to(x.dtype)


def dsm_loss(scores, sigma, seed, offset=0, anneal_power=2.0, reduction="mean"):
    dtype = compute_dtype(scores)
    z = _noise_randn(scores.shape, seed, offset, device=scores.device, dtype=dtype)
    s = sigma.to(dtype)
    residual = scores.to(dtype) + z / _broadcast_per_sample(s, scores)
    per_sample = 0.5 * s**anneal_power * (residual**2).reshape(residual.shape[0], -1).sum(dim=1)
    return reduce_losses(per_sample, reduction)


def reduce_losses(per_sample, reduction):
    """dsm_loss's reduction of its (N,) per-sample losses: "mean", "sum" or "none"."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def langevin_step_(x, score, step_size, seed, offset=0, noise_scale=None):
    # Tensor arguments (for CUDA graphs on the fused backends) are read back here: plain and slow.
    seed, offset = int(seed), int(offset)
    step_size = step_size.item() if isinstance(step_size, torch.Tensor) else step_size
    noise_scale = noise_scale.item() if isinstance(noise_scale, torch.Tensor) else noise_scale
    if noise_scale is None:
        noise_scale = math.sqrt(2.0 * float(step_size))
    dtype = compute_dtype(x)
    z = _noise_randn(x.shape, seed, offset, device=x.device, dtype=dtype)
    # x.copy_ rather than x.add_ so autograd can still differentiate through a cloned x (gradcheck).
    x.copy_(x.to(dtype) + step_size * score.to(dtype) + noise_scale * z)
    return x


def randn(shape, seed, offset=0, device=None, dtype=torch.float32):
    return _noise_randn(shape, seed, offset, device=device, dtype=dtype)


def unavailable_reason(device: torch.device) -> str | None:
    return None
