"""langevin_step_: one in-place Langevin update with noise from (seed, offset)."""
from __future__ import annotations

import torch

from .. import dispatch
from ..noise import check_seed_offset
from . import checks


def langevin_step_(
    x: torch.Tensor,
    score: torch.Tensor,
    step_size,
    seed: int,
    offset: int = 0,
    noise_scale=None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """x <- x + step_size * score + noise_scale * z in place; noise_scale defaults to sqrt(2 step_size).

    step_size and noise_scale are numbers or one-element float tensors on x's device; seed and offset
    are ints or one-element int64 tensors on x's device. Tensors let a CUDA graph that captured this
    call draw fresh noise at every replay (advance offset in the graph) and change the step per level.
    """
    checks.tensor("x", x)
    checks.tensor("score", score)
    if score.shape != x.shape:
        raise ValueError(f"score must have x's shape {tuple(x.shape)}, got {tuple(score.shape)}")
    checks.same_device("score", score, "x", x)
    checks.finite_number("step_size", step_size, non_negative=True)
    if noise_scale is not None:
        checks.finite_number("noise_scale", noise_scale, non_negative=True)
    tensors = [(n, v) for n, v in (("seed", seed), ("offset", offset)) if isinstance(v, torch.Tensor)]
    for name, value in tensors:
        checks.stream_position(name, value, x)
    if not tensors:
        check_seed_offset(seed, offset, x.numel())
    for name, value in (("step_size", step_size), ("noise_scale", noise_scale)):
        if isinstance(value, torch.Tensor):
            checks.same_device(name, value, "x", x)
    return dispatch.resolve(backend, x.device).langevin_step_(x, score, step_size, seed, offset, noise_scale)
