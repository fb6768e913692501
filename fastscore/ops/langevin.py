"""langevin_step_: one in-place Langevin update with noise from (seed, offset), registered once as
torch.ops.fastscore.langevin_step_ over the chosen backend's primitive."""
from __future__ import annotations

from typing import TypeVar

import torch

from ..backend.dispatch import module as backend_module
from ..backend.dispatch import resolved as resolved_backend
from ..backend.protocol import Number, Position, dense, like
from . import checks, eager

Tensor = torch.Tensor
_T = TypeVar("_T")


def langevin_step_(
    x: Tensor,
    score: Tensor,
    step_size: Number,
    seed: Position,
    offset: Position = 0,
    noise_scale: Number | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """x <- x + step_size * score + noise_scale * z in place; noise_scale defaults to sqrt(2 step_size).

    step_size and noise_scale are numbers or one-element float tensors on x's device; seed and offset
    are ints or one-element int64 tensors on x's device. Tensors let a CUDA graph that captured this
    call draw fresh noise at every replay (advance offset in the graph) and change the step per level.
    """
    checks.langevin_args(x, score, step_size, noise_scale)
    seed_n, offset_n, seed_t, offset_t = checks.stream_positions(seed, offset, x)
    # Numbers go to the op as numbers, tensors as tensors the kernel reads on the device (never here).
    step_n, step_t = (0.0, step_size) if isinstance(step_size, torch.Tensor) else (float(step_size), None)
    scale_n, scale_t = ((0.0, noise_scale) if isinstance(noise_scale, torch.Tensor)
                        else (-1.0 if noise_scale is None else float(noise_scale), None))
    target = dense(x)  # the kernels update memory in place: a strided x is updated through a dense copy
    args = (target, like(score, target), step_n, seed_n, offset_n, scale_n, step_t, seed_t, offset_t, scale_t,
            resolved_backend(backend, x.device))
    if eager.plain(x) and not eager.needs_grad(x, score, step_t, scale_t):
        _langevin_impl(*args)
        torch.autograd.graph.increment_version(target)  # as the registered op does for what it mutates
    else:
        torch.ops.fastscore.langevin_step_(*args)
    if target is not x:
        x.copy_(target)
    return x


def _langevin_impl(x: Tensor, score: Tensor, step_size: float, seed: int, offset: int, noise_scale: float,
                    step_size_t: Tensor | None, seed_t: Tensor | None, offset_t: Tensor | None,
                    noise_scale_t: Tensor | None, backend: str) -> None:
    """noise_scale < 0 stands for None (sqrt(2 step_size)); a given *_t tensor replaces its number."""
    def pick(tensor: Tensor | None, number: _T) -> Tensor | _T:
        return tensor if tensor is not None else number

    scale = pick(noise_scale_t, None if noise_scale < 0 else noise_scale)
    backend_module(backend).langevin_step_(x, score, pick(step_size_t, step_size), pick(seed_t, seed),
                                           pick(offset_t, offset), scale)


_langevin_step_ = torch.library.custom_op("fastscore::langevin_step_", _langevin_impl, mutates_args=("x",))


@_langevin_step_.register_fake
def _(x: Tensor, score: Tensor, step_size: float, seed: int, offset: int, noise_scale: float,
      step_size_t: Tensor | None, seed_t: Tensor | None, offset_t: Tensor | None, noise_scale_t: Tensor | None,
      backend: str) -> None:
    return None
