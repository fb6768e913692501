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

from fastscore.backend.protocol import Number, Position, Tensor

from . import _common
from .noise import STREAM_ARGS, launch_geometry, sample_chunk_normals, stream_position


@triton.jit(do_not_specialize=STREAM_ARGS)
def _langevin_kernel(x_ptr, score_ptr, coeff_ptr, stream_ptr, step, scale, N, D, C, HW,
                     seed_lo, seed_hi, off_lo, off_hi,
                     ARGS_IN_MEMORY: tl.constexpr, CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    if ARGS_IN_MEMORY:
        step = tl.load(coeff_ptr).to(tl.float32)
        scale = tl.load(coeff_ptr + 1).to(tl.float32)
    seed_lo, seed_hi, offset = stream_position(stream_ptr, seed_lo, seed_hi, off_lo, off_hi, ARGS_IN_MEMORY)
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


def _launch(x: Tensor, score: Tensor, coeffs: Tensor | None, stream: Tensor | None, step: float, scale: float,
            seed: int, offset: int) -> None:
    n, d, c, hw, channels_last = _common.sample_geometry(x)
    if not channels_last:
        n, d = 1, n * d
    meta, grid = launch_geometry(n, d, c, hw, channels_last)
    in_memory = coeffs is not None
    _langevin_kernel[grid](x, score, coeffs if in_memory else x, stream if in_memory else x, step, scale,
                           n, d, c, hw, *_common.stream_args(seed, offset), ARGS_IN_MEMORY=in_memory,
                           CHANNELS_LAST=channels_last, **meta)


def _one(value: Number | Position, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A one-element device tensor: tensors as they are, numbers by a fill kernel (no host copy, so
    this is safe inside CUDA graph capture)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(1).to(device=device, dtype=dtype)
    return torch.full((1,), value, dtype=dtype, device=device)


def langevin_step_(x: Tensor, score: Tensor, step_size: Number, seed: Position, offset: Position,
                   noise_scale: Number | None) -> None:
    """x += step_size score + noise_scale z in place: the backend primitive (fastscore/backend/protocol.py)."""
    if any(isinstance(v, torch.Tensor) for v in (step_size, noise_scale, seed, offset)):
        step = _one(step_size, torch.float32, x.device)
        scale = torch.sqrt(2.0 * step) if noise_scale is None else _one(noise_scale, torch.float32, x.device)
        stream = torch.cat([_one(seed, torch.int64, x.device), _one(offset, torch.int64, x.device)])
        _launch(x, score, torch.cat([step, scale]), stream, 0.0, 0.0, 0, 0)
    else:
        scale_value = math.sqrt(2.0 * float(step_size)) if noise_scale is None else float(noise_scale)
        _launch(x, score, None, None, float(step_size), scale_value, int(seed), int(offset))
