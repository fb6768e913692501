"""langevin_step_(x, score, step_size, seed, offset, noise_scale): x += step * score + scale * z in place.

One read of x and score, one write of x; z is generated in the kernel from (seed, offset) and never
stored. step_size and noise_scale are Python numbers (kernel arguments) or one-element tensors (read
by the kernel from memory, so a CUDA-graph-captured sampler can change them between replays).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _common
from .noise import STREAM_ARGS, join64, launch_geometry, sample_chunk_normals


@triton.jit(do_not_specialize=STREAM_ARGS)
def _langevin_kernel(x_ptr, score_ptr, coeff_ptr, step, scale, N, D, C, HW,
                     seed_lo, seed_hi, off_lo, off_hi,
                     COEFFS_IN_MEMORY: tl.constexpr, CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    offset = join64(off_lo, off_hi)
    if COEFFS_IN_MEMORY:
        step = tl.load(coeff_ptr).to(tl.float32)
        scale = tl.load(coeff_ptr + 1).to(tl.float32)
    chunk = tl.program_id(0)
    # Contiguous x is passed as one sample of N * D elements (the update has nothing per sample), so
    # blocks are full whatever the sample size; channels_last x is walked per sample.
    for n in range(tl.program_id(1), N, tl.num_programs(1)):
        idx, valid, z = sample_chunk_normals(n, chunk, D, C, HW, seed_lo, seed_hi, offset,
                                             CHANNELS_LAST, GROUPS, BLOCK_C)
        x = tl.load(x_ptr + idx, mask=valid).to(tl.float32)
        s = tl.load(score_ptr + idx, mask=valid).to(tl.float32)
        tl.store(x_ptr + idx, (x + step * s + scale * z).to(x_ptr.dtype.element_ty), mask=valid)


def _launch(x, score, coeffs, step, scale, seed, offset):
    score = _common.like(score, x)
    n, d, c, hw, channels_last = _common.sample_geometry(x)
    if not channels_last:
        n, d = 1, n * d
    meta, grid = launch_geometry(n, d, c, hw, channels_last)
    _langevin_kernel[grid](x, score, coeffs if coeffs is not None else x, step, scale, n, d, c, hw,
                           *_common.stream_args(seed, offset), COEFFS_IN_MEMORY=coeffs is not None,
                           CHANNELS_LAST=channels_last, **meta)


@torch.library.custom_op("fastscore_triton::langevin_step_", mutates_args=("x",))
def langevin_op(x: torch.Tensor, score: torch.Tensor, step_size: float, noise_scale: float,
                seed: int, offset: int) -> None:
    _launch(x, score, None, step_size, noise_scale, seed, offset)


@langevin_op.register_fake
def _(x, score, step_size, noise_scale, seed, offset):
    return None


@torch.library.custom_op("fastscore_triton::langevin_step_coeffs_", mutates_args=("x",))
def langevin_coeffs_op(x: torch.Tensor, score: torch.Tensor, coeffs: torch.Tensor, seed: int, offset: int) -> None:
    """coeffs: float32 tensor [step_size, noise_scale] on x's device."""
    _launch(x, score, coeffs, 0.0, 0.0, seed, offset)


@langevin_coeffs_op.register_fake
def _(x, score, coeffs, seed, offset):
    return None


def _coeff_tensor(step_size, noise_scale, device):
    step = torch.as_tensor(step_size, dtype=torch.float32, device=device).reshape(1)
    if noise_scale is None:
        scale = torch.sqrt(2.0 * step)
    else:
        scale = torch.as_tensor(noise_scale, dtype=torch.float32, device=device).reshape(1)
    return torch.cat([step, scale])


def langevin_step_(x, score, step_size, seed, offset=0, noise_scale=None):
    # The kernel walks x in its own memory order; a non-dense x is updated through a dense copy.
    target = x if _common.layout(x) is not None else x.contiguous()
    if isinstance(step_size, torch.Tensor) or isinstance(noise_scale, torch.Tensor):
        langevin_coeffs_op(target, score, _coeff_tensor(step_size, noise_scale, x.device), int(seed), int(offset))
    else:
        scale = math.sqrt(2.0 * float(step_size)) if noise_scale is None else float(noise_scale)
        langevin_op(target, score, float(step_size), scale, int(seed), int(offset))
    if target is not x:
        x.copy_(target)
    return x
