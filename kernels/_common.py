"""Host-side helpers shared by the Triton kernels: argument packing, layouts, launch limits.

Imported only once triton is known to import (fastscore.kernels loads the op modules lazily).
"""
from __future__ import annotations

import torch

from fastscore.backend.protocol import Position, is_channels_last

MASK32 = 0xFFFFFFFF
MAX_GRID_Y = 65535  # CUDA's limit on grid dimension 1; kernels loop over samples beyond it


def signed32(word: int) -> int:
    """A uint32 word as the int32 with the same bits: Triton types every such Python int as i32, so
    the kernel compiles once, whatever the value (an int >= 2^31 would be typed i64: a second build)."""
    return word - (1 << 32) if word >= (1 << 31) else word


def split64(value: int) -> tuple[int, int]:
    """(lo, hi) 32-bit halves of a seed or offset in [0, 2^63), as int32 bit patterns."""
    return signed32(value & MASK32), signed32((value >> 32) & MASK32)


def stream_args(seed: int, offset: int) -> tuple[int, int, int, int]:
    """Kernel arguments (seed_lo, seed_hi, offset_lo, offset_hi) of a noise-stream position."""
    return split64(int(seed)) + split64(int(offset))


def stream_position(seed: Position, offset: Position, device: torch.device
                    ) -> tuple[torch.Tensor | None, tuple[int, int, int, int]]:
    """(stream, args) for a kernel taking noise.stream_position's arguments: for int seed and offset,
    stream None and their halves as args; when either is a one-element tensor, stream is the int64
    pair [seed, offset] on the device (built there: no read-back, capturable) and args are zeros."""
    if not isinstance(seed, torch.Tensor) and not isinstance(offset, torch.Tensor):
        return None, stream_args(seed, offset)

    def one(value: Position) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.reshape(1).to(device=device, dtype=torch.int64)
        return torch.full((1,), value, dtype=torch.int64, device=device)

    return torch.cat([one(seed), one(offset)]), (0, 0, 0, 0)


def layout(t: torch.Tensor) -> str | None:
    """'contiguous' when memory order is logical order, 'channels_last' for NHWC, else None."""
    if t.is_contiguous():
        return "contiguous"
    return "channels_last" if is_channels_last(t) else None


def sample_geometry(t: torch.Tensor) -> tuple[int, int, int, int, bool]:
    """(N, D, C, HW, channels_last) of a dense tensor seen as N samples of D elements.

    C and HW only matter for channels_last, where the kernels map a memory position back to its
    logical index (the noise is addressed in logical order whatever the memory format).
    """
    n = t.shape[0] if t.dim() else 1
    d = t.numel() // max(n, 1)
    if layout(t) == "channels_last":
        return n, d, t.shape[1], t.shape[2] * t.shape[3], True
    return n, d, 1, 1, False
