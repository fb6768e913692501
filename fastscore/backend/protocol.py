"""The backend contract: the primitives every backend implements, with one schema and one meaning.

A backend computes; it does not check arguments, register ops, differentiate or reduce. The public ops
(fastscore/ops/) check their inputs, register one torch.library op each, attach one autograd formula
built from these primitives, sum per-sample parameter gradients over N for shared (C,) parameters,
and reduce losses: written once for every backend.

Conventions for every primitive:
  - Inputs arrive checked: shapes, dtypes and devices match; x is dense (contiguous or channels_last).
  - "acc" is the arithmetic dtype: float64 for float64 inputs, float32 otherwise (bfloat16, float16,
    float32 storage alike). Statistics and per-sample values are returned in acc.
  - seed and offset: ints in [0, 2^63); for perturb, the dsm primitives and langevin_step_
    also one-element int64 tensors on the data's device that the kernel reads on the device (so a
    captured CUDA graph can advance them between replays), with the same meaning as the ints. The
    i-th element of a tensor in logical (N, C, H, W) order uses normal(seed, offset + i) of the noise
    stream (docs/DESIGN.md section 3), whatever its memory format.
  - activation: an int code of ACTIVATION_CODES.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

Tensor = torch.Tensor
Number = float | Tensor   # a float, or a one-element float tensor on the data's device
Position = int | Tensor   # an int, or a one-element int64 tensor on the data's device

#: activation name -> the int code the primitives take (the one place these codes are defined)
ACTIVATION_CODES = {None: 0, "elu": 1, "relu": 2}


def acc_dtype(t: Tensor) -> torch.dtype:
    """The arithmetic ("acc") dtype for data stored as t: float64 for float64, float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def is_channels_last(t: Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also in logical order, as when C == 1 or H*W == 1)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(t: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def dense(t: Tensor) -> Tensor:
    """t itself when its memory is in logical or NHWC order (what the kernels address), else a copy."""
    return t if t.is_contiguous() or is_channels_last(t) else t.contiguous()


def like(t: Tensor, ref: Tensor) -> Tensor:
    """t laid out as the dense ref (a copy only when the strides differ), so one index walks both."""
    return t if t.stride() == ref.stride() else t.contiguous(memory_format=memory_format_of(ref))


#: the reductions of dsm_loss
REDUCTIONS = ("mean", "sum", "none")


def reduce_losses(per_sample: Tensor, reduction: str) -> Tensor:
    """Per-sample losses reduced as dsm_loss's reduction says: the one place the reduction is written."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def gathered(labels: Tensor, table: Tensor, c: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """The lookup form's gamma, alpha, beta (None for a (L, 2C) table) as (N, C) views of one gather of
    table's rows labels."""
    rows = table.index_select(0, labels)
    blocks = rows.view(rows.shape[0], -1, c).unbind(1)
    return blocks[0], blocks[1], (blocks[2] if len(blocks) == 3 else None)


NormOutputs = tuple[Tensor, Tensor, Tensor]                # y, mean, rstd
NormGrads = tuple[Tensor, Tensor, Tensor, Tensor | None]   # dx, dgamma, dalpha, dbeta


def lookup_by_gathering(norm_forward: Callable[..., NormOutputs], norm_backward: Callable[..., NormGrads]
                        ) -> tuple[Callable[..., NormOutputs], Callable[..., NormGrads]]:
    """norm_forward_lookup and norm_backward_lookup for a backend without lookup kernels: one gather of
    the rows (gathered), then its own norm_forward / norm_backward on them."""
    def norm_forward_lookup(x: Tensor, labels: Tensor, table: Tensor, eps: float,
                            activation: int) -> NormOutputs:
        return norm_forward(x, *gathered(labels, table, x.shape[1]), eps, activation)

    def norm_backward_lookup(grad_y: Tensor, x: Tensor, labels: Tensor, table: Tensor, mean: Tensor, rstd: Tensor,
                             eps: float, activation: int) -> NormGrads:
        return norm_backward(grad_y, x, *gathered(labels, table, x.shape[1]), mean, rstd, eps, activation)

    return norm_forward_lookup, norm_backward_lookup


class Backend(Protocol):
    def unavailable_reason(self, device: torch.device) -> str | None:
        """None when the primitives can run on device, else one sentence saying why not."""

    def norm_forward(self, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float,
                     activation: int) -> tuple[Tensor, Tensor, Tensor]:
        """(y, mean, rstd): y = act(gamma ((x - mu) rstd + alpha muhat) + beta) in x's dtype and memory
        format; mean and rstd = 1 / sqrt(var + eps) per plane, (N, C) in acc. gamma, alpha, beta are
        (N, C) or (C,) each (any mix), with any strides (slices of an embedding's rows, transposes,
        expanded tensors): a backend reads them in place, it does not copy them to make them contiguous."""

    def norm_backward(self, grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None,
                      mean: Tensor, rstd: Tensor, eps: float, activation: int
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(dx, dgamma, dalpha, dbeta) for the forward that returned mean and rstd: dx in x's dtype and
        memory format; the parameter gradients per sample, (N, C) in acc, whatever the parameters'
        shapes (the caller sums over N for (C,) parameters); dbeta None when beta is None. A backend
        should return them as the rows [:, 0], [:, 1] (and [:, 2]) of one contiguous (N, K, C) buffer
        (K = 3 with beta, else 2): the layout of an embedding's (gamma | alpha | beta) rows, which the
        op then hands to autograd without a copy (see packed_param_grads in fastscore/ops/norm.py)."""

    def norm_forward_lookup(self, x: Tensor, labels: Tensor, table: Tensor, eps: float,
                            activation: int) -> tuple[Tensor, Tensor, Tensor]:
        """norm_forward with sample n's parameters in row labels[n] ((N,), int64 or int32) of table: (L, 3C) rows
        (gamma | alpha | beta), or (L, 2C) rows (gamma | alpha) and no beta; an embedding's weight, any
        strides. A label out of range raises IndexError on the CPU, a device-side assert elsewhere."""

    def norm_backward_lookup(self, grad_y: Tensor, x: Tensor, labels: Tensor, table: Tensor, mean: Tensor,
                             rstd: Tensor, eps: float, activation: int
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """norm_backward of norm_forward_lookup: the parameter gradients per sample as there (the caller
        adds row n into the table's row labels[n])."""

    def perturb(self, x: Tensor, sigma: Tensor, seed: Position, offset: Position) -> Tensor:
        """x + sigma[n] z in x's dtype (any dense layout; the caller restores x's memory format)."""

    def dsm_per_sample(self, scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                       anneal_power: float) -> Tensor:
        """l[n] = 0.5 sigma[n]^p sum_d (scores[n, d] + z[n, d] / sigma[n])^2, (N,) in acc."""

    def dsm_reduced(self, scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float,
                    reduction: str) -> Tensor:
        """reduce_losses(dsm_per_sample(...), reduction) for "mean" or "sum": a 0-d tensor in acc, in one
        call where the backend can (for a small batch a separate reduction costs more host time than the
        loss). What dsm_loss runs when nothing needs a gradient."""

    def dsm_per_sample_and_grad(self, scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                                anneal_power: float) -> tuple[Tensor, Tensor]:
        """(l, g): dsm_per_sample's losses and g = d l[n] / d scores = sigma[n]^p (scores + z / sigma[n])
        (dsm_backward for a gradient of ones) in scores' dtype and shape, from one draw of z where the
        backend can: the loss's forward when scores need a gradient, whose backward is then grad[n] g."""

    def dsm_backward(self, grad: Tensor, scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                     anneal_power: float) -> Tensor:
        """d scores = grad[n] sigma[n]^p (scores + z / sigma[n]) for grad (N,) in acc, in scores' dtype
        and shape (any dense layout). The ops use dsm_per_sample_and_grad; this is the same gradient for
        any incoming grad, which backends without a one-draw kernel build it from, and tests compare."""

    def langevin_step_(self, x: Tensor, score: Tensor, step_size: Number, seed: Position, offset: Position,
                       noise_scale: Number | None) -> None:
        """x <- x + step_size score + noise_scale z in place; noise_scale None means sqrt(2 step_size)."""

    def randn_(self, out: Tensor, seed: int, offset: int) -> None:
        """Fill the dense tensor out with z, z.flatten()[i] = normal(seed, offset + i), in out's dtype."""
