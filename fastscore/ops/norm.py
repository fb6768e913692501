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
from . import checks, eager

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
    checks.norm_args(x, gamma, alpha, beta, eps)
    try:
        code = ACTIVATION_CODES[activation]
    except (KeyError, TypeError):  # not one of them, or not even hashable
        checks.choice("activation", activation, ACTIVATIONS)
        raise
    args = (dense(x), gamma, alpha, beta, float(eps), code, resolved_backend(backend, x.device))
    y: Tensor
    if not eager.plain(x):
        y = torch.ops.fastscore.cond_instance_norm_plus(*args)[0]
    elif eager.needs_grad(x, gamma, alpha, beta):
        y = _NormFunction.apply(*args)[0]
    else:
        y = _norm_forward(*args)[0]
    return y


def _norm_forward(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float, activation: int,
                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y, and the per-plane statistics kept for the backward."""
    return backend_module(backend).norm_forward(x, gamma, alpha, beta, eps, activation)


_forward = torch.library.custom_op("fastscore::cond_instance_norm_plus", _norm_forward, mutates_args=())


@_forward.register_fake
def _(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float, activation: int,
      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.new_empty(x.shape[:2], dtype=acc_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def packed_param_grads(dgamma: Tensor, dalpha: Tensor, dbeta: Tensor | None) -> Tensor:
    """The per-sample parameter grads as one (N, K, C) tensor, rows dgamma, dalpha (, dbeta): the buffer
    they are views of when a backend wrote them that way (no copy), else a stacked copy."""
    grads = [g for g in (dgamma, dalpha, dbeta) if g is not None]
    base = dgamma._base
    n, c = dgamma.shape
    if (base is not None and base.shape == (n, len(grads), c) and base.is_contiguous()
            and all(g._base is base and g.stride() == (len(grads) * c, 1)
                    and g.storage_offset() == base.storage_offset() + i * c for i, g in enumerate(grads))):
        return base
    return torch.stack(grads, dim=1)


def _norm_backward(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor,
                   rstd: Tensor, eps: float, activation: int, backend: str) -> tuple[Tensor, Tensor]:
    """(dx, dparams): dparams (N, K, C) holds the parameter gradients per sample, rows dgamma, dalpha and,
    with beta (K = 3), dbeta: the layout of an embedding's (gamma | alpha | beta) rows."""
    dx, dgamma, dalpha, dbeta = backend_module(backend).norm_backward(
        grad_y, x, gamma, alpha, beta, mean, rstd, eps, activation)
    return dx, packed_param_grads(dgamma, dalpha, dbeta)


_backward = torch.library.custom_op("fastscore::cond_instance_norm_plus_backward", _norm_backward,
                                    mutates_args=())


@_backward.register_fake
def _(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor, rstd: Tensor,
      eps: float, activation: int, backend: str) -> tuple[Tensor, Tensor]:
    k = 3 if beta is not None else 2
    return torch.empty_like(x), x.new_empty((x.shape[0], k, x.shape[1]), dtype=acc_dtype(x))


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor, Tensor | None, float, int, str],
                   output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, gamma, alpha, beta, eps, activation, backend = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero-filled gradients of mean and rstd for the backward to ignore
    ctx.save_for_backward(x, gamma, alpha, beta, mean, rstd)
    ctx.args = (eps, activation, backend)


def _in_shape_of(grad: Tensor, param: Tensor) -> Tensor:
    """A per-sample (N, C) gradient as the gradient of param: summed over N for a shared (C,) one. An
    (N, C) one stays a view into the (N, K, C) buffer when the dtypes agree, so the gradients of gamma,
    alpha and beta sliced from one embedding row reach its backward as that buffer (fastscore/nn.py)."""
    grad = grad if param.dim() == 2 else grad.sum(0)
    return grad if grad.dtype == param.dtype else grad.to(param.dtype)


def _differentiate(ctx: Any, grad_y: Tensor, _grad_mean: Tensor | None, _grad_rstd: Tensor | None
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, None, None, None]:
    x, gamma, alpha, beta, mean, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    if grad_y is None:  # unmaterialised: nothing reached y
        return None, None, None, None, None, None, None
    # The registered backward op while traced; its primitive directly in plain eager (fastscore/ops/eager.py).
    backward = _norm_backward if eager.plain(grad_y) else torch.ops.fastscore.cond_instance_norm_plus_backward
    dx, dparams = backward(like(grad_y, x), x, gamma, alpha, beta, mean, rstd, *ctx.args)
    rows = dparams.unbind(1)
    return (dx if need[0] else None,
            _in_shape_of(rows[0], gamma) if need[1] else None,
            _in_shape_of(rows[1], alpha) if need[2] else None,
            _in_shape_of(rows[2], beta) if beta is not None and need[3] else None,
            None, None, None)


_forward.register_autograd(_differentiate, setup_context=_setup_context)
_NormFunction = eager.function("_NormFunction", _norm_forward, _setup_context, _differentiate)
