"""The noise stream of docs/DESIGN.md section 3 in Triton, and the randn_ primitive on it.

normal(seed, j) = lane j % 4 of Box-Muller applied to Philox4x32-10(counter = j // 4, key = seed).
Everything is uint32 arithmetic (tl.umulhi for the high product word); the 64-bit counter and seed
arrive as 32-bit halves (see _common.stream_args) so one compiled kernel serves every value.

One Philox call serves 4 consecutive stream positions, its four lanes interleaved into place, in
both memory formats (sample_chunk_normals, what every flat kernel calls):
  contiguous    - a block is a run of consecutive groups of 4 (memory order is logical order).
  channels_last - a block is a [4 * GROUPS positions, BLOCK_C channels] tile of one sample: along a
                  channel's plane the positions are consecutive in the stream, so each row of the
                  tile gets whole Philox groups, and the tile is laid out channel-fastest, the
                  direction that is contiguous in NHWC memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastscore.backend.protocol import Tensor

from . import _common

# Globals read inside @triton.jit functions must be constexpr (compiled Triton rejects other globals).
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
TWO_PI = tl.constexpr(6.283185307179586)
TWO_POW_M24 = tl.constexpr(5.9604644775390625e-08)
# Noise-stream arguments arrive as 32-bit halves; never specialize on their values (== 1, % 16), so one
# compiled kernel serves every seed and offset.
STREAM_ARGS = ["seed_lo", "seed_hi", "off_lo", "off_hi"]
MAX_GROUPS = 512  # Philox groups per program: blocks of up to 2048 elements


@triton.jit
def join64(lo, hi):
    """The int64 whose 32-bit halves arrive as int32 bit patterns lo, hi."""
    return (hi.to(tl.int64) << 32) + lo.to(tl.uint32, bitcast=True).to(tl.int64)


@triton.jit
def stream_position(stream_ptr, seed_lo, seed_hi, off_lo, off_hi, IN_MEMORY: tl.constexpr):
    """(seed_lo, seed_hi, offset): from the kernel arguments, or, IN_MEMORY (the CUDA-graph form), from
    the int64 pair [seed, offset] at stream_ptr, read on the device."""
    if IN_MEMORY:
        seed = tl.load(stream_ptr)
        seed_lo = (seed & 0xFFFFFFFF).to(tl.uint32).to(tl.int32, bitcast=True)
        seed_hi = (seed >> 32).to(tl.int32)
        offset = tl.load(stream_ptr + 1)
    else:
        offset = join64(off_lo, off_hi)
    return seed_lo, seed_hi, offset


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Random123) on uint32 tensors c0..c3 with uint32 key words k0, k1."""
    for r in tl.static_range(10):
        if r > 0:
            k0 = k0 + tl.full([], PHILOX_W0, tl.uint32)
            k1 = k1 + tl.full([], PHILOX_W1, tl.uint32)
        m0 = tl.full([], PHILOX_M0, tl.uint32)
        m1 = tl.full([], PHILOX_M1, tl.uint32)
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def uniform01(u):
    """f(u) = ((u >> 8) + 0.5) * 2^-24 in float32: never 0 or 1, so log and Box-Muller are safe."""
    return ((u >> 8).to(tl.float32) + 0.5) * TWO_POW_M24


@triton.jit
def philox_words(k, seed_lo, seed_hi):
    """The four Philox output words of counter k (int64 tensor) under key (seed_lo, seed_hi)."""
    c0 = (k & 0xFFFFFFFF).to(tl.uint32)
    c1 = (k >> 32).to(tl.uint32)
    zero = tl.zeros_like(c0)
    k0 = seed_lo.to(tl.uint32, bitcast=True)
    k1 = seed_hi.to(tl.uint32, bitcast=True)
    return philox4x32_10(c0, c1, zero, zero, k0, k1)


@triton.jit
def normals4(k, seed_lo, seed_hi):
    """Lanes 0..3 of normal(seed, 4k + lane) for an int64 tensor of counters k."""
    u0, u1, u2, u3 = philox_words(k, seed_lo, seed_hi)
    r01 = tl.sqrt_rn(-2.0 * tl.log(uniform01(u0)))
    a01 = TWO_PI * uniform01(u1)
    r23 = tl.sqrt_rn(-2.0 * tl.log(uniform01(u2)))
    a23 = TWO_PI * uniform01(u3)
    return r01 * tl.cos(a01), r01 * tl.sin(a01), r23 * tl.cos(a23), r23 * tl.sin(a23)


@triton.jit
def sample_chunk_normals(n, chunk, D, C, HW, seed_lo, seed_hi, offset,
                         CHANNELS_LAST: tl.constexpr, GROUPS: tl.constexpr, BLOCK_C: tl.constexpr):
    """Block `chunk` of sample n of a dense tensor of N samples of D elements.

    Returns (idx, valid, z): int64 memory indices of a block, which of them are elements of sample n,
    and z = normal(seed, offset + logical index) for each.

    Contiguous ([4 * GROUPS]): blocks tile sample n's Philox groups from the group holding its first
    element (elements of neighbouring samples in the first and last group are masked off); a sample
    takes cdiv(D + 3, 4 * GROUPS) blocks.
    Channels_last ([4 * GROUPS, BLOCK_C]): block = (position chunk, channel block); channel c's row
    starts at the group holding (n, c, 0), so a row is shifted by that element's lane s_c: the tile
    holds positions chunk * 4 * GROUPS - s_c + t. A sample takes cdiv(HW + 3, 4 * GROUPS) *
    cdiv(C, BLOCK_C) blocks.
    """
    BLOCK: tl.constexpr = 4 * GROUPS
    start = tl.cast(n, tl.int64) * D
    if CHANNELS_LAST:
        channel_blocks = tl.cdiv(C, BLOCK_C)
        hw_chunk = (chunk // channel_blocks).to(tl.int64)
        c = (chunk % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
        first = offset + start + c.to(tl.int64) * HW                 # stream index of (n, c, 0)
        k = (first // 4 + hw_chunk * GROUPS)[:, None] + tl.arange(0, GROUPS)[None, :]
        n0, n1, n2, n3 = normals4(k, seed_lo, seed_hi)               # [BLOCK_C, GROUPS] each
        z = tl.trans(tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3)))   # [BLOCK, BLOCK_C]
        hw = hw_chunk * BLOCK + tl.arange(0, BLOCK)[:, None] - (first % 4)[None, :]
        valid = (hw >= 0) & (hw < HW) & (c < C)[None, :]
        idx = start + hw * C + c[None, :]
    else:
        k = (offset + start) // 4 + chunk.to(tl.int64) * GROUPS + tl.arange(0, GROUPS)
        n0, n1, n2, n3 = normals4(k, seed_lo, seed_hi)
        z = tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))   # lane order 0, 1, 2, 3
        first = (offset + start) // 4 * 4 + chunk.to(tl.int64) * BLOCK - offset
        idx = first + tl.arange(0, BLOCK)
        valid = (idx >= start) & (idx < start + D)
    return idx, valid, z


CHANNELS_LAST_BLOCK_C = 32  # channels per channels_last tile


def launch_geometry(n: int, d: int, c: int = 1, hw: int = 1,
                    channels_last: bool = False) -> tuple[dict[str, int], tuple[int, int]]:
    """(meta, grid) of a flat kernel over N samples of D elements: meta holds GROUPS, BLOCK_C and
    num_warps, grid = (blocks per sample, samples), the samples looped past CUDA's grid limit."""
    if channels_last:
        block_c = min(triton.next_power_of_2(c), CHANNELS_LAST_BLOCK_C)
        groups = min(max(1, MAX_GROUPS // block_c), triton.next_power_of_2(triton.cdiv(hw + 3, 4)))
        blocks = triton.cdiv(hw + 3, 4 * groups) * triton.cdiv(c, block_c)
    else:
        block_c = 1
        groups = min(MAX_GROUPS, triton.next_power_of_2(triton.cdiv(d + 3, 4)))
        blocks = triton.cdiv(d + 3, 4 * groups)
    meta = dict(GROUPS=groups, BLOCK_C=block_c, num_warps=num_warps_for(groups * block_c))
    return meta, (blocks, min(n, _common.MAX_GRID_Y))


def num_warps_for(groups: int) -> int:
    """Warps for a block of 4 * groups elements."""
    return 8 if groups >= 512 else 4


@triton.jit(do_not_specialize=STREAM_ARGS)
def _randn_kernel(out_ptr, numel, seed_lo, seed_hi, off_lo, off_hi, GROUPS: tl.constexpr, BLOCK_C: tl.constexpr):
    offset = join64(off_lo, off_hi)
    idx, valid, z = sample_chunk_normals(tl.program_id(1), tl.program_id(0), numel, 1, 1,
                                         seed_lo, seed_hi, offset, False, GROUPS, BLOCK_C)
    tl.store(out_ptr + idx, z.to(out_ptr.dtype.element_ty), mask=valid)


def randn_(out: Tensor, seed: int, offset: int) -> None:
    """Fill the dense tensor out with the stream in logical order: the backend primitive."""
    numel = out.numel()
    if numel:
        target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
        meta, grid = launch_geometry(1, numel)
        _randn_kernel[grid](target, numel, *_common.stream_args(seed, offset), **meta)
        if target is not out:
            out.copy_(target)
