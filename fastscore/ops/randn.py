"""fastscore.randn: the noise stream of docs/DESIGN.md section 3 on any backend."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.types import Device

from ..backend.dispatch import module as backend_module
from ..backend.dispatch import resolved as resolved_backend
from ..noise import check_seed_offset


def randn(shape: int | Sequence[int], seed: int, offset: int = 0, device: Device = None,
          dtype: torch.dtype = torch.float32, *, backend: str | None = None) -> torch.Tensor:
    """Standard normals z of `shape` with z.flatten()[i] = normal(seed, offset + i)."""
    shape = torch.Size((shape,) if isinstance(shape, int) else shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {tuple(shape)}")
    if dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    check_seed_offset(seed, offset, shape.numel())
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty(shape, dtype=dtype, device=device)
    torch.ops.fastscore.randn_(out, int(seed), int(offset), resolved_backend(backend, device))
    return out


@torch.library.custom_op("fastscore::randn_", mutates_args=("out",))
def _randn_(out: torch.Tensor, seed: int, offset: int, backend: str) -> None:
    backend_module(backend).randn_(out, seed, offset)


@_randn_.register_fake
def _(out: torch.Tensor, seed: int, offset: int, backend: str) -> None:
    return None
