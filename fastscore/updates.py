"""The updates every ladder sampler is made of: a few fused calls of x <- x + b * score + c * z each.

An update has a kind, the level labels its network calls are conditioned on, and up to two
coefficients, numbers (eager) or one-element device tensors (a captured CUDA graph reads them there):

    STEP       labels (i,),   coeffs (b, c):  x <- x + b s_i(x) + c z          (c None: sqrt(2 b))
    CORRECTOR  labels (i,),   coeffs (snr, alpha):
               eps = 2 alpha (snr E||z_n|| / mean_n ||s_i(x)_n||)^2,  x <- x + eps s_i(x) + sqrt(2 eps) z
    HEUN       labels (i, j), coeffs (h_i, h_j):
               x <- x + (h_i s_i(x) + h_j s_j(x + h_i s_i(x))) / 2                (no noise)

Annealed Langevin, consistent annealed sampling, the SMLD reverse diffusion and the probability-flow
Euler step are STEP updates with their own (b, c); the predictor-corrector's Langevin corrector is
CORRECTOR, whose one reduction is the per-sample norm of the score (score_sde divides by the drawn
noise's norm; its expectation over a sample's D elements is used instead, a constant within 1/sqrt(D)
of it, so the noise is drawn once, by the fused step); Heun's
step is HEUN. Every one runs as fastscore.langevin_step_ calls, so every backend runs them and the
noise is the stream of docs/DESIGN.md section 3 at the offset the sampling loop hands in.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .backend.protocol import Number, Position
from .ops import langevin_step_

STEP, CORRECTOR, HEUN = "step", "corrector", "heun"
KINDS = (STEP, CORRECTOR, HEUN)

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Coefficient = Number | None


@dataclass(frozen=True)
class Update:
    """One update of a sampler's plan (see the module docstring for what each kind computes)."""

    kind: str
    labels: tuple[int, ...]
    coeffs: tuple[float | None, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown update kind {self.kind!r}; known: {', '.join(KINDS)}")

    @property
    def draws_noise(self) -> bool:
        """Whether the update consumes noise (then the loop advances the stream past it)."""
        return self.kind == CORRECTOR or (self.kind == STEP and self.coeffs[1] != 0.0)

    @property
    def evaluations(self) -> int:
        """Network evaluations of one update."""
        return 2 if self.kind == HEUN else 1

    def tensor_coeffs(self) -> tuple[float, float]:
        """The coefficients as the two numbers a captured graph reads (STEP's default c written out)."""
        first, second = self.coeffs
        assert first is not None
        if self.kind == STEP and second is None:
            second = math.sqrt(2.0 * first)
        assert second is not None
        return first, second


def expected_noise_norm(numel: int) -> float:
    """E ||z|| for z ~ N(0, I_numel): sqrt(2) Gamma((numel + 1) / 2) / Gamma(numel / 2)."""
    return math.sqrt(2.0) * math.exp(math.lgamma((numel + 1) / 2) - math.lgamma(numel / 2))


def corrector_step_size(score: torch.Tensor, snr: Number, alpha: Number) -> torch.Tensor:
    """The Langevin corrector's step 2 alpha (snr E||z_n|| / mean_n ||score_n||)^2 as a 0-dim device
    tensor (the one reduction of the update; nothing is read back to the host)."""
    dtype = torch.float64 if score.dtype == torch.float64 else torch.float32
    norm = torch.linalg.vector_norm(score.reshape(score.shape[0], -1).to(dtype), dim=1).mean()
    step: torch.Tensor = 2.0 * alpha * (snr * expected_noise_norm(score[0].numel()) / norm) ** 2
    return step


def apply(kind: str, score: Score, x: torch.Tensor, labels: Sequence[torch.Tensor], coeffs: Sequence[Coefficient],
          seed: Position, offset: Position, backend: str | None = None) -> None:
    """Run one update of `kind` on x in place, the network called as score(x, labels[k])."""
    if kind == STEP:
        b, c = coeffs
        assert b is not None
        langevin_step_(x, score(x, labels[0]), b, seed, offset, c, backend=backend)
    elif kind == CORRECTOR:
        snr, alpha = coeffs
        assert snr is not None and alpha is not None
        s = score(x, labels[0])
        eps = corrector_step_size(s, snr, alpha)
        langevin_step_(x, s, eps, seed, offset, torch.sqrt(2.0 * eps), backend=backend)
    elif kind == HEUN:
        h_i, h_j = coeffs
        assert h_i is not None and h_j is not None
        # Three a=1 calls, no noise: x + h_i s / 2 now, the Euler point x + h_i s in a copy, then the
        # second slope at that point: x + (h_i s + h_j s') / 2 without keeping s.
        s = score(x, labels[0])
        euler = x.clone()
        langevin_step_(euler, s, h_i, seed, offset, 0.0, backend=backend)
        langevin_step_(x, s, 0.5 * h_i, seed, offset, 0.0, backend=backend)
        langevin_step_(x, score(euler, labels[1]), 0.5 * h_j, seed, offset, 0.0, backend=backend)
    else:
        raise ValueError(f"unknown update kind {kind!r}; known: {', '.join(KINDS)}")
