"""cond_instance_norm_plus: CondInstanceNorm++ with an optional fused activation.

The public op, registered once as torch.ops.fastscore.cond_instance_norm_plus (and its backward), with
one autograd formula over the chosen backend's norm_forward / norm_backward primitives.
"""
from __future__ import annotations

from typing import Any

import torch

from ..backend.dispatch import module as backend_module
from ..backend.dispatch import resolved as resolved_backend
from ..backend.protocol import ACTIVATION_CODES, acc_dtype, dense, like
from . import checks

Tensor = torch.Tensor
ACTIVATIONS = tuple(ACTIVATION_CODES)


def cond_instance_norm_plus(
    x: Tensor,
    gamma: Tensor,
    alpha: Tensor,
    beta: Tensor | None = None,
    eps: float = 1e-5,
    activation: str | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """y = act(gamma * ((x - mu) / sqrt(var + eps) + alpha * muhat) + beta), per docs/DESIGN.md section 2.

    x is (N, C, H, W), contiguous or channels_last (y keeps its memory format); gamma, alpha and beta
    are (N, C) (per-sample, gathered from an embedding) or (C,) (shared). Differentiable in x, gamma,
    alpha and beta, on every backend alike.
    """
    checks.tensor("x", x, dim=4)
    for name, p in (("gamma", gamma), ("alpha", alpha)):
        checks.per_channel(name, p, x)
    checks.per_channel("beta", beta, x, optional=True)
    checks.finite_number("eps", eps, positive=True)
    checks.choice("activation", activation, ACTIVATIONS)
    y: Tensor
    y, _, _ = torch.ops.fastscore.cond_instance_norm_plus(
        dense(x), gamma, alpha, beta, float(eps), ACTIVATION_CODES[activation], resolved_backend(backend, x.device))
    return y


@torch.library.custom_op("fastscore::cond_instance_norm_plus", mutates_args=())
def _forward(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float, activation: int,
             backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y, and the per-plane statistics kept for the backward."""
    return backend_module(backend).norm_forward(x, gamma, alpha, beta, eps, activation)


@_forward.register_fake
def _(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float, activation: int,
      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.new_empty(x.shape[:2], dtype=acc_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("fastscore::cond_instance_norm_plus_backward", mutates_args=())
def _backward(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor,
              rstd: Tensor, eps: float, activation: int, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dgamma, dalpha, dbeta), the parameter gradients per sample (N, C); dbeta empty without beta."""
    dx, dgamma, dalpha, dbeta = backend_module(backend).norm_backward(
        grad_y, x, gamma, alpha, beta, mean, rstd, eps, activation)
    return dx, dgamma, dalpha, dbeta if dbeta is not None else dgamma.new_empty(0)


@_backward.register_fake
def _(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor, rstd: Tensor,
      eps: float, activation: int, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dgamma, dalpha = (x.new_empty(x.shape[:2], dtype=acc_dtype(x)) for _ in range(2))
    dbeta = x.new_empty(x.shape[:2] if beta is not None else (0,), dtype=acc_dtype(x))
    return torch.empty_like(x), dgamma, dalpha, dbeta


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor, Tensor | None, float, int, str],
                   output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, gamma, alpha, beta, eps, activation, backend = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, gamma, alpha, beta, mean, rstd)
    ctx.args = (eps, activation, backend)


def _in_shape_of(grad: Tensor, param: Tensor) -> Tensor:
    """A per-sample (N, C) gradient as the gradient of param: summed over N for a shared (C,) one."""
    return (grad if param.dim() == 2 else grad.sum(0)).to(param.dtype)


def _differentiate(ctx: Any, grad_y: Tensor, _grad_mean: Tensor | None, _grad_rstd: Tensor | None
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, None, None, None]:
    x, gamma, alpha, beta, mean, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dgamma, dalpha, dbeta = torch.ops.fastscore.cond_instance_norm_plus_backward(
        like(grad_y, x), x, gamma, alpha, beta, mean, rstd, *ctx.args)
    return (dx if need[0] else None,
            _in_shape_of(dgamma, gamma) if need[1] else None,
            _in_shape_of(dalpha, alpha) if need[2] else None,
            _in_shape_of(dbeta, beta) if beta is not None and need[3] else None,
            None, None, None)


_forward.register_autograd(_differentiate, setup_context=_setup_context)
