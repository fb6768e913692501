"""The counter-based noise stream of DESIGN.md section 3, in plain torch.

normal(seed, j) is a pure function of (seed, j), so any backend on any device can regenerate the
noise an op used from (seed, offset) alone instead of storing it. This module is the ground truth
for the stream; the kernels reimplement it and are tested against it.

uint32 arithmetic is emulated in int64 tensors (torch has no full uint32 support): every value is
kept in [0, 2^32) and products are split into 16-bit halves so they never overflow int64.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.types import Device

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MAX_SEED = 2**63 - 1


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product of the constant a and the uint32 tensor b."""
    b_lo = b & 0xFFFF
    b_hi = b >> 16
    p_lo = a * b_lo  # < 2^48
    p_hi = a * b_hi  # < 2^48, weight 2^16
    low_sum = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2^49
    lo = low_sum & MASK32
    hi = (p_hi >> 16) + (low_sum >> 32)
    return hi, lo


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 words; key words are python ints."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_from_bits(u: torch.Tensor) -> torch.Tensor:
    """f(u) = ((u >> 8) + 0.5) * 2^-24 in float32, the rounding every backend must reproduce."""
    return ((u >> 8).to(torch.float32) + 0.5) * (2.0**-24)


def box_muller(u_radius: torch.Tensor, u_angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    radius = torch.sqrt(-2.0 * torch.log(uniform_from_bits(u_radius)))
    angle = (2.0 * math.pi) * uniform_from_bits(u_angle)
    return radius * torch.cos(angle), radius * torch.sin(angle)


def check_seed_offset(seed: object, offset: object, numel: int = 0) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int in [0, 2^63), got {type(seed).__name__}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int in [0, 2^63), got {type(offset).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    if not 0 <= offset <= MAX_SEED or offset + numel > MAX_SEED + 1:  # 2^63 itself even when numel == 0
        raise ValueError(f"offset must be in [0, 2^63 - numel), got {offset} for {numel} draws")


def normal_stream(numel: int, seed: int, offset: int = 0, device: Device = None) -> torch.Tensor:
    """float32 tensor of normal(seed, offset + i) for i in range(numel)."""
    check_seed_offset(seed, offset, numel)
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first_block = offset // 4
    last_block = (offset + numel - 1) // 4
    k = torch.arange(first_block, last_block + 1, dtype=torch.int64, device=device)
    zeros = torch.zeros_like(k)
    u0, u1, u2, u3 = philox4x32((k & MASK32, k >> 32, zeros, zeros), (seed & MASK32, seed >> 32))
    n0, n1 = box_muller(u0, u1)
    n2, n3 = box_muller(u2, u3)
    lanes = torch.stack((n0, n1, n2, n3), dim=1).reshape(-1)
    start = offset - 4 * first_block
    # A copy rather than a view at an odd storage offset: compiled callers expect aligned outputs.
    return lanes[start : start + numel].clone() if start else lanes[:numel]


@torch.library.custom_op("fastscore_reference::normal_stream", mutates_args=())
def _normal_stream_op(numel: int, seed: int, offset: int, device: torch.device) -> torch.Tensor:
    return normal_stream(numel, seed, offset, device)


@_normal_stream_op.register_fake
def _(numel: int, seed: int, offset: int, device: torch.device) -> torch.Tensor:
    return torch.empty(numel, dtype=torch.float32, device=device)


def randn(shape: int | Sequence[int], seed: int, offset: int = 0, device: Device = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals z with z.flatten()[i] = normal(seed, offset + i), reference implementation.

    Behind an opaque custom op so torch.compile calls it rather than inlining ten unrolled Philox
    rounds of int64 arithmetic into one fused expression, which Inductor takes minutes to lower.
    """
    shape = torch.Size(shape if not isinstance(shape, int) else (shape,))
    device = torch.device(device) if device is not None else torch.device("cpu")
    stream: torch.Tensor = _normal_stream_op(shape.numel(), seed, offset, device)
    return stream.reshape(shape).to(dtype)
