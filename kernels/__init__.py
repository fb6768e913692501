"""The `triton` backend: Triton kernels of the backend primitives (installed as fastscore.kernels).

The functions below are the primitives of fastscore/backend/protocol.py; one module per op family
(instance_norm, perturbation, score_matching, langevin, noise) holds the kernels and their launchers.
Registration, autograd and reductions belong to the public ops (fastscore/ops/), not to this backend.

This module must import cheaply and never fail: triton is imported when availability is first asked
for, each op module when its op first runs (a function-level `from . import`, which torch.compile can
trace). Kernels run on CUDA, or on the CPU in Triton's interpreter when TRITON_INTERPRET=1 was set
before triton was imported.

Loops whose bounds are runtime values (kernel arguments, program ids) are written as `while` loops,
not `for ... in range(...)`: triton 3.6's interpreter turns a range bound into a Python int in a way
numpy >= 2.4 rejects (triton-lang/triton#9171, fixed after 3.6), while the compiler emits the same
PTX for these kernels either way. `range` stays for constexpr bounds. .ci/floors runs triton 3.6.
"""
from __future__ import annotations

import functools
import os

import torch

from fastscore.backend.protocol import Number, Position, Tensor, lookup_by_gathering, reduce_losses


@functools.cache
def _import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"triton cannot be imported ({type(exc).__name__}: {exc}); install it with `pip install triton`"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device: torch.device | str) -> str | None:
    """None if the Triton kernels can run on `device`, else a sentence saying why not."""
    device = torch.device(device)
    reason = _import_error()
    if reason is not None:
        return reason
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is visible to torch"
        if _interpreting():
            return "TRITON_INTERPRET=1 is set, so Triton runs kernels in its CPU interpreter, not on CUDA"
        return None
    if device.type == "cpu":
        if not _interpreting():
            return ("Triton kernels run on the CPU only in Triton's interpreter: set TRITON_INTERPRET=1 "
                    "before triton is imported")
        return None
    return f"Triton kernels run on CUDA devices (or the CPU with TRITON_INTERPRET=1), not on {device.type}"


def norm_forward(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float,
                 activation: int) -> tuple[Tensor, Tensor, Tensor]:
    from . import instance_norm
    return instance_norm.norm_forward(x, gamma, alpha, beta, eps, activation)


def norm_backward(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor,
                  rstd: Tensor, eps: float, activation: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    from . import instance_norm
    return instance_norm.norm_backward(grad_y, x, gamma, alpha, beta, mean, rstd, eps, activation)


# One gather of the rows, then the kernels above (they read the gathered views in place).
norm_forward_lookup, norm_backward_lookup = lookup_by_gathering(norm_forward, norm_backward)


def perturb(x: Tensor, sigma: Tensor, seed: Position, offset: Position) -> Tensor:
    from . import perturbation
    return perturbation.perturb(x, sigma, seed, offset)


def dsm_per_sample(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float) -> Tensor:
    from . import score_matching
    return score_matching.dsm_per_sample(scores, sigma, seed, offset, anneal_power)


def dsm_reduced(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float,
                reduction: str) -> Tensor:
    return reduce_losses(dsm_per_sample(scores, sigma, seed, offset, anneal_power), reduction)


def dsm_per_sample_and_grad(scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                            anneal_power: float) -> tuple[Tensor, Tensor]:
    from . import score_matching
    return score_matching.dsm_per_sample_and_grad(scores, sigma, seed, offset, anneal_power)


def dsm_backward(grad: Tensor, scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                 anneal_power: float) -> Tensor:
    from . import score_matching
    return score_matching.dsm_backward(grad, scores, sigma, seed, offset, anneal_power)


def langevin_step_(x: Tensor, score: Tensor, step_size: Number, seed: Position, offset: Position,
                   noise_scale: Number | None) -> None:
    from . import langevin
    langevin.langevin_step_(x, score, step_size, seed, offset, noise_scale)


def randn_(out: Tensor, seed: int, offset: int) -> None:
    from . import noise
    noise.randn_(out, seed, offset)
