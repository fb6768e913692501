"""perturb(x, sigma, seed, offset) = x + sigma[n] * z in one pass, z regenerated from (seed, offset).

One read of x, one write of the result, no noise tensor. Contiguous x is tiled as one flat range
(blocks independent of the sample size); channels_last x per sample (see noise.sample_chunk_normals).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore.backend.protocol import Position, Tensor

from . import _common
from .noise import STREAM_ARGS, launch_geometry, sample_chunk_normals, stream_position


@triton.jit(do_not_specialize=STREAM_ARGS)
def _perturb_kernel(x_ptr, sigma_ptr, out_ptr, stream_ptr, N, D, C, HW, seed_lo, seed_hi, off_lo, off_hi,
                    POSITION_IN_MEMORY: tl.constexpr, FLAT: tl.constexpr, INDEX_32: tl.constexpr,
                    CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr, BLOCK_C: tl.constexpr):
    seed_lo, seed_hi, offset = stream_position(stream_ptr, seed_lo, seed_hi, off_lo, off_hi, POSITION_IN_MEMORY)
    chunk = tl.program_id(0)
    if FLAT:
        # Contiguous x: programs tile the whole tensor's Philox groups regardless of sample bounds
        # (full blocks even for small or odd D); each element finds its sample's sigma.
        idx, valid, z = sample_chunk_normals(0, chunk, N * D, 1, 1, seed_lo, seed_hi, offset, False, GROUPS,
                                              BLOCK_C)
        sample = idx.to(tl.int32) // D if INDEX_32 else idx // D
        s = tl.load(sigma_ptr + sample, mask=valid, other=1.0).to(tl.float32)
        x = tl.load(x_ptr + idx, mask=valid).to(tl.float32)
        tl.store(out_ptr + idx, (x + s * z).to(out_ptr.dtype.element_ty), mask=valid)
    else:
        n = tl.program_id(1)
        while n < N:
            idx, valid, z = sample_chunk_normals(n, chunk, D, C, HW, seed_lo, seed_hi, offset,
                                                 CHANNELS_LAST, GROUPS, BLOCK_C)
            s = tl.load(sigma_ptr + n).to(tl.float32)
            x = tl.load(x_ptr + idx, mask=valid).to(tl.float32)
            tl.store(out_ptr + idx, (x + s * z).to(out_ptr.dtype.element_ty), mask=valid)
            n += tl.num_programs(1)


def perturb(x: Tensor, sigma: Tensor, seed: Position, offset: Position) -> Tensor:
    """x + sigma[n] z in x's layout: the backend primitive (fastscore/backend/protocol.py)."""
    sigma = sigma.contiguous()
    stream, stream_args = _common.stream_position(seed, offset, x.device)
    out = torch.empty_like(x)
    n, d, c, hw, channels_last = _common.sample_geometry(x)
    flat = not channels_last
    meta, grid = launch_geometry(1, n * d) if flat else launch_geometry(n, d, c, hw, channels_last)
    _perturb_kernel[grid](x, sigma, out, x if stream is None else stream, n, d, c, hw, *stream_args,
                          POSITION_IN_MEMORY=stream is not None, FLAT=flat, INDEX_32=x.numel() < 2**31,
                          CHANNELS_LAST=channels_last, **meta)
    return out
