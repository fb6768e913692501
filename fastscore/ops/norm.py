"""cond_instance_norm_plus: CondInstanceNorm++ with an optional fused activation, and its lookup form.

cond_instance_norm_plus is registered once as torch.ops.fastscore.cond_instance_norm_plus (and its
backward), with one autograd formula over the chosen backend's norm_forward / norm_backward primitives.
cond_instance_norm_plus_lookup, the same norm reading each sample's parameters from an embedding's
weight by its label (what fastscore.nn.CondInstanceNorm2dPlus calls), is registered as
torch.ops.fastscore.cond_instance_norm_plus_lookup with its own autograd over the *_lookup primitives.
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


# ---- the lookup form ---------------------------------------------------------------------------------

def cond_instance_norm_plus_lookup(
    x: Tensor,
    labels: Tensor,
    table: Tensor,
    eps: float = 1e-5,
    activation: str | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """cond_instance_norm_plus with sample n's parameters in row labels[n] of table: (L, 3C) rows
    (gamma | alpha | beta), or (L, 2C) rows (gamma | alpha) and no beta, as the weight of an
    nn.Embedding(L, 3C) holds them. The same as

        gamma, alpha, beta = table[labels].view(N, 3, C).unbind(1)
        cond_instance_norm_plus(x, gamma, alpha, beta, eps, activation)

    in one call: the fused backends read the rows in place (no gathered copy), and the gradient of table
    is the per-sample parameter gradients added into their rows. Differentiable in x and table. labels
    (N,) int64 or int32 are not read on the host: a label outside [0, L) raises IndexError on the CPU and
    is a device-side assert on a GPU.
    """
    checks.lookup_args(x, labels, table, eps)
    try:
        code = ACTIVATION_CODES[activation]
    except (KeyError, TypeError):
        checks.choice("activation", activation, ACTIVATIONS)
        raise
    args = (dense(x), labels, table, float(eps), code, resolved_backend(backend, x.device))
    y: Tensor
    if not eager.plain(x):
        y = torch.ops.fastscore.cond_instance_norm_plus_lookup(*args)[0]
    elif eager.needs_grad(x, table):
        y = _LookupFunction.apply(*args)[0]
    else:
        y = _lookup_forward(*args)[0]
    return y


def _lookup_forward(x: Tensor, labels: Tensor, table: Tensor, eps: float, activation: int,
                    backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return backend_module(backend).norm_forward_lookup(x, labels, table, eps, activation)


_lookup = torch.library.custom_op("fastscore::cond_instance_norm_plus_lookup", _lookup_forward, mutates_args=())


@_lookup.register_fake
def _(x: Tensor, labels: Tensor, table: Tensor, eps: float, activation: int,
      backend: str) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.new_empty(x.shape[:2], dtype=acc_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _lookup_backward(grad_y: Tensor, x: Tensor, labels: Tensor, table: Tensor, mean: Tensor, rstd: Tensor,
                     eps: float, activation: int, backend: str) -> tuple[Tensor, Tensor]:
    """(dx, dtable): row n of the per-sample parameter gradients (N, K, C) added into row labels[n] of a
    zero table, in the arithmetic dtype, by the kernel an nn.Embedding's backward runs: the table gets
    the gradient the embedding gave it when the module called one (and no host sync on CUDA)."""
    dx, dgamma, dalpha, dbeta = backend_module(backend).norm_backward_lookup(
        grad_y, x, labels, table, mean, rstd, eps, activation)
    dparams = packed_param_grads(dgamma, dalpha, dbeta)
    dtable = torch.ops.aten.embedding_dense_backward(dparams.view(dparams.shape[0], -1), labels, table.shape[0],
                                                     -1, False)
    return dx, dtable if dtable.dtype == table.dtype else dtable.to(table.dtype)


_lookup_backward_op = torch.library.custom_op("fastscore::cond_instance_norm_plus_lookup_backward",
                                              _lookup_backward, mutates_args=())


@_lookup_backward_op.register_fake
def _(grad_y: Tensor, x: Tensor, labels: Tensor, table: Tensor, mean: Tensor, rstd: Tensor, eps: float,
      activation: int, backend: str) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), table.new_empty(table.shape)


def _lookup_setup(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor, float, int, str],
                  output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, labels, table, eps, activation, backend = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, labels, table, mean, rstd)
    ctx.args = (eps, activation, backend)


def _lookup_differentiate(ctx: Any, grad_y: Tensor, _grad_mean: Tensor | None, _grad_rstd: Tensor | None
                          ) -> tuple[Tensor | None, None, Tensor | None, None, None, None]:
    x, labels, table, mean, rstd = ctx.saved_tensors
    if grad_y is None:
        return None, None, None, None, None, None
    backward = (_lookup_backward if eager.plain(grad_y)
                else torch.ops.fastscore.cond_instance_norm_plus_lookup_backward)
    dx, dtable = backward(like(grad_y, x), x, labels, table, mean, rstd, *ctx.args)
    need = ctx.needs_input_grad
    return dx if need[0] else None, None, dtable if need[2] else None, None, None, None


_lookup.register_autograd(_lookup_differentiate, setup_context=_lookup_setup)
_LookupFunction = eager.function("_LookupFunction", _lookup_forward, _lookup_setup, _lookup_differentiate)
