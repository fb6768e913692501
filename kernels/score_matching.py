"""The DSM loss per sample, l[n] = 0.5 * sigma[n]^p * sum_d (scores[n, d] + z[n, d] / sigma[n])^2.

Forward: one read of scores; each program sums its chunk of one sample into a float32 partial, and
a one-program kernel reduces the partials in a fixed order (deterministic, no atomics) and applies
0.5 * sigma^p. Backward: one read of scores, one write of d scores = g[n] * sigma[n]^p *
(scores + z / sigma); the noise is regenerated, never stored. With scores needing a gradient, the
forward's pass also writes the gradient of a unit loss, sigma^p * (scores + z / sigma), from the same
draw of z (dsm_per_sample_and_grad): one pass and one draw for the loss and its gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore.backend.protocol import Position, Tensor, acc_dtype

from . import _common
from .noise import STREAM_ARGS, launch_geometry, sample_chunk_normals, stream_position

FINAL_BLOCK_N = 64
FINAL_BLOCK_K = 32


@triton.jit
def _pow(base, exponent):
    """base^exponent for base > 0 in float32 (sigma is checked positive at the public boundary)."""
    return tl.exp2(exponent * tl.log2(base))


@triton.jit(do_not_specialize=STREAM_ARGS)
def _partial_kernel(scores_ptr, sigma_ptr, partial_ptr, unit_grad_ptr, stream_ptr, power, N, D, C, HW, seed_lo, seed_hi,
                    off_lo, off_hi, POSITION_IN_MEMORY: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                    GROUPS: tl.constexpr, BLOCK_C: tl.constexpr, WITH_GRAD: tl.constexpr):
    seed_lo, seed_hi, offset = stream_position(stream_ptr, seed_lo, seed_hi, off_lo, off_hi, POSITION_IN_MEMORY)
    chunk = tl.program_id(0)
    chunks = tl.num_programs(0)
    n = tl.program_id(1)
    while n < N:
        idx, valid, z = sample_chunk_normals(n, chunk, D, C, HW, seed_lo, seed_hi, offset,
                                             CHANNELS_LAST, GROUPS, BLOCK_C)
        s = tl.load(scores_ptr + idx, mask=valid).to(tl.float32)
        sigma = tl.load(sigma_ptr + n).to(tl.float32)
        r = tl.where(valid, s + z / sigma, 0.0)
        sq = tl.ravel(r * r, can_reorder=True)  # a channels_last block is 2-D
        tl.store(partial_ptr + tl.cast(n, tl.int64) * chunks + chunk, tl.sum(sq, axis=0))
        if WITH_GRAD:
            tl.store(unit_grad_ptr + idx, (_pow(sigma, power) * r).to(unit_grad_ptr.dtype.element_ty), mask=valid)
        n += tl.num_programs(1)


@triton.jit
def _finish_kernel(partial_ptr, sigma_ptr, out_ptr, N, chunks, power, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n0 = 0
    while n0 < N:
        rows = n0 + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        k0 = 0
        while k0 < chunks:
            cols = k0 + tl.arange(0, BLOCK_K)
            mask = row_ok[:, None] & (cols[None, :] < chunks)
            acc += tl.load(partial_ptr + rows.to(tl.int64)[:, None] * chunks + cols[None, :], mask=mask, other=0.0)
            k0 += BLOCK_K
        sigma = tl.load(sigma_ptr + rows, mask=row_ok, other=1.0).to(tl.float32)
        per_sample = 0.5 * _pow(sigma, power) * tl.sum(acc, axis=1)
        tl.store(out_ptr + rows, per_sample.to(out_ptr.dtype.element_ty), mask=row_ok)
        n0 += BLOCK_N


@triton.jit(do_not_specialize=STREAM_ARGS)
def _backward_kernel(grad_ptr, scores_ptr, sigma_ptr, out_ptr, stream_ptr, power,
                     N, D, C, HW, seed_lo, seed_hi, off_lo, off_hi, POSITION_IN_MEMORY: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr, BLOCK_C: tl.constexpr):
    seed_lo, seed_hi, offset = stream_position(stream_ptr, seed_lo, seed_hi, off_lo, off_hi, POSITION_IN_MEMORY)
    chunk = tl.program_id(0)
    n = tl.program_id(1)
    while n < N:
        idx, valid, z = sample_chunk_normals(n, chunk, D, C, HW, seed_lo, seed_hi, offset,
                                             CHANNELS_LAST, GROUPS, BLOCK_C)
        sigma = tl.load(sigma_ptr + n).to(tl.float32)
        g = tl.load(grad_ptr + n).to(tl.float32)
        coef = g * _pow(sigma, power)
        s = tl.load(scores_ptr + idx, mask=valid).to(tl.float32)
        tl.store(out_ptr + idx, (coef * (s + z / sigma)).to(out_ptr.dtype.element_ty), mask=valid)
        n += tl.num_programs(1)


def dsm_per_sample(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float) -> Tensor:
    """(N,) losses: the backend primitive (fastscore/backend/protocol.py)."""
    return _losses(scores, sigma, seed, offset, anneal_power, None)


def dsm_per_sample_and_grad(scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                            anneal_power: float) -> tuple[Tensor, Tensor]:
    """(N,) losses and d l[n] / d scores (scores' dtype and layout) from one draw of z: the primitive."""
    unit_grad = torch.empty_like(scores)
    return _losses(scores, sigma, seed, offset, anneal_power, unit_grad), unit_grad


def _losses(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float,
            unit_grad: Tensor | None) -> Tensor:
    sigma = sigma.contiguous()
    stream, stream_args = _common.stream_position(seed, offset, scores.device)
    n, d, c, hw, channels_last = _common.sample_geometry(scores)
    meta, grid = launch_geometry(n, d, c, hw, channels_last)
    partial = torch.empty((n, grid[0]), device=scores.device, dtype=torch.float32)
    _partial_kernel[grid](scores, sigma, partial, scores if unit_grad is None else unit_grad,
                          scores if stream is None else stream, anneal_power, n, d, c, hw, *stream_args,
                          POSITION_IN_MEMORY=stream is not None, CHANNELS_LAST=channels_last,
                          WITH_GRAD=unit_grad is not None, **meta)
    out = torch.empty((n,), device=scores.device, dtype=acc_dtype(scores))
    _finish_kernel[(1,)](partial, sigma, out, n, grid[0], anneal_power, BLOCK_N=FINAL_BLOCK_N,
                         BLOCK_K=FINAL_BLOCK_K)
    return out


def dsm_backward(grad: Tensor, scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                 anneal_power: float) -> Tensor:
    """d scores for per-sample loss gradients grad (N,): the backend primitive."""
    sigma, grad = sigma.contiguous(), grad.contiguous()
    stream, stream_args = _common.stream_position(seed, offset, scores.device)
    out = torch.empty_like(scores)
    n, d, c, hw, channels_last = _common.sample_geometry(scores)
    meta, grid = launch_geometry(n, d, c, hw, channels_last)
    _backward_kernel[grid](grad, scores, sigma, out, scores if stream is None else stream, anneal_power, n, d, c, hw,
                           *stream_args, POSITION_IN_MEMORY=stream is not None, CHANNELS_LAST=channels_last, **meta)
    return out
