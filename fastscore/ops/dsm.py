"""The denoising score-matching pair: perturb draws z from (seed, offset), dsm_loss regenerates it."""
from __future__ import annotations

import torch

from .. import dispatch
from ..noise import check_seed_offset
from . import checks

REDUCTIONS = ("mean", "sum", "none")


def perturb(x: torch.Tensor, sigma: torch.Tensor, seed: int, offset: int = 0, *, backend: str | None = None):
    """x + sigma[n] * z, with z.flatten()[i] = normal(seed, offset + i)."""
    checks.tensor("x", x)
    checks.sigma(sigma, x, "x")
    check_seed_offset(seed, offset, x.numel())
    return dispatch.resolve(backend, x.device).perturb(x, sigma, seed, offset)


def dsm_loss(
    scores: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    offset: int = 0,
    anneal_power: float = 2.0,
    reduction: str = "mean",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """l[n] = 0.5 * sigma[n]^p * sum_d (scores[n, d] + z[n, d] / sigma[n])^2 with the z of perturb.

    Called with the (seed, offset) that perturbed the data, this is ncsn's anneal_dsm_score_estimation;
    the noise is regenerated, never stored. Differentiable in scores.
    """
    checks.tensor("scores", scores)
    checks.sigma(sigma, scores, "scores")
    check_seed_offset(seed, offset, scores.numel())
    checks.finite_number("anneal_power", anneal_power)
    checks.choice("reduction", reduction, REDUCTIONS)
    impl = dispatch.resolve(backend, scores.device)
    return impl.dsm_loss(scores, sigma, seed, offset, float(anneal_power), reduction)
