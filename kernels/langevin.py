"""langevin_step_(x, score, step_size, seed, offset, noise_scale): x += step * score + scale * z in place.

One read of x and score, one write of x; z is generated in the kernel from (seed, offset) and never
stored. Arguments are Python numbers (kernel arguments), or, when any of them is a tensor, all four
are read by the kernel from two small device tensors (coefficients [step_size, noise_scale] and
stream position [seed, offset]), so a CUDA-graph-captured sampler can change the step and advance
the offset between replays.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _common
from .noise import STREAM_ARGS, join64, launch_geometry, sample_chunk_normals


@triton.jit(do_not_specialize=STREAM_ARGS)
def _langevin_kernel(x_ptr, score_ptr, coeff_ptr, stream_ptr, step, scale, N, D, C, HW,
                     seed_lo, seed_hi, off_lo, off_hi,
                     ARGS_IN_MEMORY: tl.constexpr, CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    if ARGS_IN_MEMORY:
        step = tl.load(coeff_ptr).to(tl.float32)
        scale = tl.load(coeff_ptr + 1).to(tl.float32)
        seed = tl.load(stream_ptr)
        seed_lo = (seed & 0xFFFFFFFF).to(tl.uint32).to(tl.int32, bitcast=True)
        seed_hi = (seed >> 32).to(tl.int32)
        offset = tl.load(stream_ptr + 1)
    else:
        offset = join64(off_lo, off_hi)
    chunk = tl.program_id(0)
    # Contiguous x is passed as one sample of N * D elements (the update has nothing per sample), so
    # blocks are full whatever the sample size; channels_last x is walked per sample.
    n = tl.program_id(1)
    while n < N:
        idx, valid, z = sample_chunk_normals(n, chunk, D, C, HW, seed_lo, seed_hi, offset,
                                             CHANNELS_LAST, GROUPS, BLOCK_C)
        x = tl.load(x_ptr + idx, mask=valid).to(tl.float32)
        s = tl.load(score_ptr + idx, mask=valid).to(tl.float32)
        tl.store(x_ptr + idx, (x + step * s + scale * z).to(x_ptr.dtype.element_ty), mask=valid)
        n += tl.num_programs(1)


def _launch(x, score, coeffs, stream, step, scale, seed, offset):
    score = _common.like(score, x)
    n, d, c, hw, channels_last = _common.sample_geometry(x)
    if not channels_last:
        n, d = 1, n * d
    meta, grid = launch_geometry(n, d, c, hw, channels_last)
    in_memory = coeffs is not None
    _langevin_kernel[grid](x, score, coeffs if in_memory else x, stream if in_memory else x, step, scale,
                           n, d, c, hw, *_common.stream_args(seed, offset), ARGS_IN_MEMORY=in_memory,
                           CHANNELS_LAST=channels_last, **meta)


@torch.library.custom_op("fastscore_triton::langevin_step_", mutates_args=("x",))
def langevin_op(x: torch.Tensor, score: torch.Tensor, step_size: float, noise_scale: float,
                seed: int, offset: int) -> None:
    _launch(x, score, None, None, step_size, noise_scale, seed, offset)


@langevin_op.register_fake
def _(x, score, step_size, noise_scale, seed, offset):
    return None


@torch.library.custom_op("fastscore_triton::langevin_step_device_", mutates_args=("x",))
def langevin_device_op(x: torch.Tensor, score: torch.Tensor, coeffs: torch.Tensor, stream: torch.Tensor) -> None:
    """coeffs: float32 [step_size, noise_scale], stream: int64 [seed, offset], both on x's device."""
    _launch(x, score, coeffs, stream, 0.0, 0.0, 0, 0)


@langevin_device_op.register_fake
def _(x, score, coeffs, stream):
    return None


def _one(value, dtype, device):
    """A one-element device tensor: tensors as they are, numbers by a fill kernel (no host copy, so
    this is safe inside CUDA graph capture)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(1).to(device=device, dtype=dtype)
    return torch.full((1,), value, dtype=dtype, device=device)


def _device_args(step_size, noise_scale, seed, offset, device):
    step = _one(step_size, torch.float32, device)
    scale = torch.sqrt(2.0 * step) if noise_scale is None else _one(noise_scale, torch.float32, device)
    stream = torch.cat([_one(seed, torch.int64, device), _one(offset, torch.int64, device)])
    return torch.cat([step, scale]), stream


def langevin_step_(x, score, step_size, seed, offset=0, noise_scale=None):
    # The kernel walks x in its own memory order; a non-dense x is updated through a dense copy.
    target = x if _common.layout(x) is not None else x.contiguous()
    if any(isinstance(v, torch.Tensor) for v in (step_size, noise_scale, seed, offset)):
        langevin_device_op(target, score, *_device_args(step_size, noise_scale, seed, offset, x.device))
    else:
        scale = math.sqrt(2.0 * float(step_size)) if noise_scale is None else float(noise_scale)
        langevin_op(target, score, float(step_size), scale, int(seed), int(offset))
    if target is not x:
        x.copy_(target)
    return x
