"""dsm_loss: l[n] = 0.5 * sigma[n]^p * sum_d (scores[n, d] + z[n, d] / sigma[n])^2, z regenerated.

Forward: one read of scores; each program sums its chunk of one sample into a float32 partial, and
a one-program kernel reduces the partials in a fixed order (deterministic, no atomics), applies
0.5 * sigma^p and the reduction. Backward: one read of scores, one write of d scores =
g[n] * sigma[n]^p * (scores + z / sigma) (g / N for "mean"); the noise is regenerated, never stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from .noise import STREAM_ARGS, join64, launch_geometry, sample_chunk_normals

REDUCTION_CODES = {"mean": 0, "sum": 1, "none": 2}
FINAL_BLOCK_N = 64
FINAL_BLOCK_K = 32


@triton.jit
def _pow(base, exponent):
    """base^exponent for base > 0 in float32 (sigma is checked positive at the public boundary)."""
    return tl.exp2(exponent * tl.log2(base))


@triton.jit(do_not_specialize=STREAM_ARGS)
def _partial_kernel(scores_ptr, sigma_ptr, partial_ptr, N, D, C, HW, seed_lo, seed_hi, off_lo, off_hi,
                    CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr, BLOCK_C: tl.constexpr):
    offset = join64(off_lo, off_hi)
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
        n += tl.num_programs(1)


@triton.jit
def _finish_kernel(partial_ptr, sigma_ptr, out_ptr, N, chunks, power,
                   REDUCTION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    total = tl.full([], 0.0, tl.float32)
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
        if REDUCTION == 2:
            tl.store(out_ptr + rows, per_sample.to(out_ptr.dtype.element_ty), mask=row_ok)
        else:
            total += tl.sum(tl.where(row_ok, per_sample, 0.0), axis=0)
        n0 += BLOCK_N
    if REDUCTION == 0:
        tl.store(out_ptr, (total / N).to(out_ptr.dtype.element_ty))
    elif REDUCTION == 1:
        tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


@triton.jit(do_not_specialize=STREAM_ARGS)
def _backward_kernel(grad_ptr, grad_stride, inv_count, scores_ptr, sigma_ptr, out_ptr, power,
                     N, D, C, HW, seed_lo, seed_hi, off_lo, off_hi,
                     CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr, BLOCK_C: tl.constexpr):
    offset = join64(off_lo, off_hi)
    chunk = tl.program_id(0)
    n = tl.program_id(1)
    while n < N:
        idx, valid, z = sample_chunk_normals(n, chunk, D, C, HW, seed_lo, seed_hi, offset,
                                             CHANNELS_LAST, GROUPS, BLOCK_C)
        sigma = tl.load(sigma_ptr + n).to(tl.float32)
        g = tl.load(grad_ptr + tl.cast(n, tl.int64) * grad_stride).to(tl.float32) * inv_count
        coef = g * _pow(sigma, power)
        s = tl.load(scores_ptr + idx, mask=valid).to(tl.float32)
        tl.store(out_ptr + idx, (coef * (s + z / sigma)).to(out_ptr.dtype.element_ty), mask=valid)
        n += tl.num_programs(1)


def _loss_meta(scores, reduction):
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    shape = (scores.shape[0],) if reduction == "none" else ()
    return shape, dtype


@torch.library.custom_op("fastscore_triton::dsm_loss", mutates_args=())
def dsm_loss_op(scores: torch.Tensor, sigma: torch.Tensor, seed: int, offset: int,
                anneal_power: float, reduction: str) -> torch.Tensor:
    scores = _common.dense(scores)
    sigma = sigma.contiguous()
    shape, dtype = _loss_meta(scores, reduction)
    n, d, c, hw, channels_last = _common.sample_geometry(scores)
    meta, grid = launch_geometry(n, d, c, hw, channels_last)
    partial = torch.empty((n, grid[0]), device=scores.device, dtype=torch.float32)
    _partial_kernel[grid](scores, sigma, partial, n, d, c, hw, *_common.stream_args(seed, offset),
                          CHANNELS_LAST=channels_last, **meta)
    out = torch.empty(shape, device=scores.device, dtype=dtype)
    _finish_kernel[(1,)](partial, sigma, out, n, grid[0], anneal_power, REDUCTION=REDUCTION_CODES[reduction],
                         BLOCK_N=FINAL_BLOCK_N, BLOCK_K=FINAL_BLOCK_K)
    return out


@dsm_loss_op.register_fake
def _(scores, sigma, seed, offset, anneal_power, reduction):
    shape, dtype = _loss_meta(scores, reduction)
    return scores.new_empty(shape, dtype=dtype)


@torch.library.custom_op("fastscore_triton::dsm_loss_backward", mutates_args=())
def dsm_loss_backward_op(grad: torch.Tensor, scores: torch.Tensor, sigma: torch.Tensor, seed: int,
                         offset: int, anneal_power: float, reduction: str) -> torch.Tensor:
    scores = _common.dense(scores)
    sigma = sigma.contiguous()
    out = torch.empty_like(scores)
    n, d, c, hw, channels_last = _common.sample_geometry(scores)
    meta, grid = launch_geometry(n, d, c, hw, channels_last)
    grad_stride = grad.stride(0) if grad.dim() else 0
    inv_count = 1.0 / n if reduction == "mean" else 1.0
    _backward_kernel[grid](grad, grad_stride, inv_count, scores, sigma, out, anneal_power, n, d, c, hw,
                           *_common.stream_args(seed, offset), CHANNELS_LAST=channels_last, **meta)
    return out


@dsm_loss_backward_op.register_fake
def _(grad, scores, sigma, seed, offset, anneal_power, reduction):
    return torch.empty_like(_common.dense(scores))


def _setup_context(ctx, inputs, output):
    scores, sigma, seed, offset, anneal_power, reduction = inputs
    ctx.save_for_backward(scores, sigma)
    ctx.args = (seed, offset, anneal_power, reduction)


def _backward(ctx, grad):
    scores, sigma = ctx.saved_tensors
    dscores = dsm_loss_backward_op(grad, scores, sigma, *ctx.args) if ctx.needs_input_grad[0] else None
    return dscores, None, None, None, None, None


dsm_loss_op.register_autograd(_backward, setup_context=_setup_context)


def dsm_loss(scores, sigma, seed, offset=0, anneal_power=2.0, reduction="mean"):
    return dsm_loss_op(scores, sigma, int(seed), int(offset), float(anneal_power), reduction)
