"""The denoising score-matching pair: perturb draws z from (seed, offset), dsm_loss regenerates it.

Each is registered once (torch.ops.fastscore.perturb, .dsm_loss_per_sample and its backward) with one
autograd formula over the chosen backend's primitives; the loss's reduction is protocol.reduce_losses,
which a backend's dsm_reduced runs in the same call as the loss when nothing needs a gradient.
sigma, a noise level, is a constant of the objective: it gets no gradient, on any backend.
"""
from __future__ import annotations

from typing import Any

import torch

from ..backend.dispatch import module as backend_module
from ..backend.dispatch import resolved as resolved_backend
from ..backend.protocol import REDUCTIONS, Position, acc_dtype, dense, like, reduce_losses
from . import checks, eager

Tensor = torch.Tensor


def perturb(x: Tensor, sigma: Tensor, seed: Position, offset: Position = 0, *,
            backend: str | None = None) -> Tensor:
    """x + sigma[n] * z, with z.flatten()[i] = normal(seed, offset + i); in x's dtype and memory format.
    Differentiable in x (the identity); sigma gets no gradient.

    seed and offset are ints or one-element int64 tensors on x's device (read by the kernels on the
    device, never here), so a CUDA graph that captured this call can advance them between replays.
    """
    seed_n, offset_n, seed_t, offset_t = checks.noise_args("x", x, sigma, seed, offset)
    args = (dense(x), sigma, seed_n, offset_n, seed_t, offset_t, resolved_backend(backend, x.device))
    out: Tensor
    if not eager.plain(x):
        out = torch.ops.fastscore.perturb(*args)
    elif eager.needs_grad(x, sigma):
        out = _PerturbFunction.apply(*args)
    else:
        out = _perturb_impl(*args)
    return out


def dsm_loss(
    scores: Tensor,
    sigma: Tensor,
    seed: Position,
    offset: Position = 0,
    anneal_power: float = 2.0,
    reduction: str = "mean",
    *,
    backend: str | None = None,
) -> Tensor:
    """l[n] = 0.5 * sigma[n]^p * sum_d (scores[n, d] + z[n, d] / sigma[n])^2 with the z of perturb,
    reduced by "mean" (default), "sum" or "none" (the (N,) losses, in float32; float64 for float64).

    Called with the (seed, offset) that perturbed the data, this is ncsn's anneal_dsm_score_estimation;
    the noise is regenerated, never stored. Differentiable in scores; sigma gets no gradient. seed and
    offset: as for perturb; the backward regenerates the noise at the position the forward used.
    """
    seed_n, offset_n, seed_t, offset_t = checks.noise_args("scores", scores, sigma, seed, offset)
    checks.finite_number("anneal_power", anneal_power)
    checks.choice("reduction", reduction, REDUCTIONS)
    name = resolved_backend(backend, scores.device)
    args = (dense(scores), sigma, seed_n, offset_n, float(anneal_power), seed_t, offset_t, name)
    grad_mode = torch.is_grad_enabled()
    per_sample: Tensor
    if not eager.plain(scores):
        if scores.requires_grad and grad_mode:
            # The gradient is written in the forward, from the same draw of z, and kept for the backward.
            per_sample = torch.ops.fastscore.dsm_loss_per_sample_and_grad(*args)[0]
        else:
            per_sample = torch.ops.fastscore.dsm_loss_per_sample(*args)
    elif scores.requires_grad and grad_mode:
        per_sample = _DsmFunction.apply(*args)[0]   # the same autograd as the op's, called directly
    elif sigma.requires_grad and grad_mode:
        per_sample = torch.ops.fastscore.dsm_loss_per_sample(*args)  # the op's policy for sigma, as is
    elif reduction != "none":  # the loss and its reduction in one backend call
        return backend_module(name).dsm_reduced(args[0], sigma, seed, offset, args[4], reduction)
    else:
        per_sample = _dsm_impl(*args)
    return reduce_losses(per_sample, reduction)


# ---- registration and autograd ---------------------------------------------------------------------
# seed and offset reach the ops as ints and, for the tensor form, as the optional tensors seed_t and
# offset_t, which replace their int (position() below): torch.library schemas have no int-or-tensor type.

def position(number: int, tensor: Tensor | None) -> Position:
    return tensor if tensor is not None else number


def _perturb_impl(x: Tensor, sigma: Tensor, seed: int, offset: int, seed_t: Tensor | None, offset_t: Tensor | None,
                  backend: str) -> Tensor:
    return like(backend_module(backend).perturb(x, sigma, position(seed, seed_t), position(offset, offset_t)), x)


_perturb = torch.library.custom_op("fastscore::perturb", _perturb_impl, mutates_args=())


@_perturb.register_fake
def _(x: Tensor, sigma: Tensor, seed: int, offset: int, seed_t: Tensor | None, offset_t: Tensor | None,
      backend: str) -> Tensor:
    return torch.empty_like(x)


def _perturb_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.x_dtype = inputs[0].dtype


def _perturb_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    return grad.to(ctx.x_dtype), None, None, None, None, None, None


_perturb.register_autograd(_perturb_grad, setup_context=_perturb_setup)
_PerturbFunction = eager.function("_PerturbFunction", _perturb_impl, _perturb_setup, _perturb_grad)


def _dsm_impl(scores: Tensor, sigma: Tensor, seed: int, offset: int, anneal_power: float, seed_t: Tensor | None,
              offset_t: Tensor | None, backend: str) -> Tensor:
    return backend_module(backend).dsm_per_sample(scores, sigma, position(seed, seed_t), position(offset, offset_t),
                                                  anneal_power)


_dsm = torch.library.custom_op("fastscore::dsm_loss_per_sample", _dsm_impl, mutates_args=())


@_dsm.register_fake
def _(scores: Tensor, sigma: Tensor, seed: int, offset: int, anneal_power: float, seed_t: Tensor | None,
      offset_t: Tensor | None, backend: str) -> Tensor:
    return scores.new_empty(scores.shape[:1], dtype=acc_dtype(scores))


# The loss and d l[n] / d scores from one draw of the noise where the backend can: what dsm_loss runs
# when scores need a gradient. It keeps that gradient (scores' size) until the backward, which is then
# one product: dsm_loss's one autograd. (dsm_loss_per_sample, for the no-gradient case, has none.)
def _dsm_and_grad_impl(scores: Tensor, sigma: Tensor, seed: int, offset: int, anneal_power: float,
                       seed_t: Tensor | None, offset_t: Tensor | None, backend: str) -> tuple[Tensor, Tensor]:
    per_sample, unit_grad = backend_module(backend).dsm_per_sample_and_grad(
        scores, sigma, position(seed, seed_t), position(offset, offset_t), anneal_power)
    return per_sample, like(unit_grad, scores)


_dsm_and_grad = torch.library.custom_op("fastscore::dsm_loss_per_sample_and_grad", _dsm_and_grad_impl,
                                        mutates_args=())


@_dsm_and_grad.register_fake
def _(scores: Tensor, sigma: Tensor, seed: int, offset: int, anneal_power: float, seed_t: Tensor | None,
      offset_t: Tensor | None, backend: str) -> tuple[Tensor, Tensor]:
    return scores.new_empty(scores.shape[:1], dtype=acc_dtype(scores)), torch.empty_like(scores)


def _dsm_and_grad_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else the backward receives a zero-filled tensor of scores' size
    ctx.save_for_backward(output[1])


def _dsm_and_grad_grad(ctx: Any, grad: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
    (unit_grad,) = ctx.saved_tensors
    dscores = None
    if ctx.needs_input_grad[0] and grad is not None:
        dscores = (grad.reshape(-1, *([1] * (unit_grad.dim() - 1))) * unit_grad).to(unit_grad.dtype)
    return dscores, None, None, None, None, None, None, None


_dsm_and_grad.register_autograd(_dsm_and_grad_grad, setup_context=_dsm_and_grad_setup)
_DsmFunction = eager.function("_DsmFunction", _dsm_and_grad_impl, _dsm_and_grad_setup, _dsm_and_grad_grad)
