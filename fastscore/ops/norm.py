"""cond_instance_norm_plus: CondInstanceNorm++ with an optional fused activation."""
from __future__ import annotations

import torch

from .. import dispatch
from . import checks

ACTIVATIONS = (None, "elu", "relu")


def cond_instance_norm_plus(
    x: torch.Tensor,
    gamma: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor | None = None,
    eps: float = 1e-5,
    activation: str | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """y = act(gamma * ((x - mu) / sqrt(var + eps) + alpha * muhat) + beta), per DESIGN.md section 2.

    x is (N, C, H, W), contiguous or channels_last (y keeps its memory format); gamma, alpha and beta
    are (N, C) (per-sample, gathered from an embedding) or (C,) (shared). Differentiable in x, gamma,
    alpha and beta.
    """
    checks.tensor("x", x, dim=4)
    for name, p in (("gamma", gamma), ("alpha", alpha)):
        checks.per_channel(name, p, x)
    checks.per_channel("beta", beta, x, optional=True)
    checks.finite_number("eps", eps, positive=True)
    checks.choice("activation", activation, ACTIVATIONS)
    impl = dispatch.resolve(backend, x.device)
    return impl.cond_instance_norm_plus(x, gamma, alpha, beta, float(eps), activation)
