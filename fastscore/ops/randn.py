"""fastscore.randn: the noise stream of DESIGN.md section 3 on any backend."""
from __future__ import annotations

import torch

from .. import dispatch
from ..noise import check_seed_offset


def randn(shape, seed: int, offset: int = 0, device=None, dtype=torch.float32, *, backend: str | None = None):
    """Standard normals z of `shape` with z.flatten()[i] = normal(seed, offset + i)."""
    shape = torch.Size((shape,) if isinstance(shape, int) else shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {tuple(shape)}")
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    check_seed_offset(seed, offset, shape.numel())
    device = torch.device(device) if device is not None else torch.device("cpu")
    return dispatch.resolve(backend, device).randn(shape, seed, offset, device, dtype)
