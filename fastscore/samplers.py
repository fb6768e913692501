"""The sampler family over a trained noise ladder, beside annealed Langevin (fastscore.sampling).

Each is a plan of fastscore.updates over the visited levels sigma_1 > ... > sigma_K (the trained ladder
or a sub-ladder), with sigma_{K+1} = 0, so that the last update of every sampler but annealed Langevin
lands on the noise-free data (its last step is the Tweedie denoise x + sigma_K^2 s):

- ConsistentAnnealed (Jolicoeur-Martineau et al. 2021, consistent annealed sampling): each step
  x <- x + eta sigma_i^2 s_i(x) + beta sigma' z, where sigma' is the noise level the step must leave:
  sigma_i for the first n_steps_each - 1 steps of level i, sigma_{i+1} for its last. If x = data +
  sigma_i e and s is exact, the step leaves data + (1 - eta) sigma_i e + beta sigma' z, so
  beta = sqrt(1 - (gamma (1 - eta))^2) with gamma = sigma_i / sigma' makes its noise exactly sigma'
  (gamma is the ladder's ratio sigma_i / sigma_{i+1} on the last step of a level, 1 on the others).
  That needs eta >= 1 - 1 / gamma at every level: a coarse ladder needs a large eta.
- ReverseDiffusion (SMLD's ancestral step, Song et al. 2021 appendix): from sigma_i to sigma_{i+1},
  x <- x + (sigma_i^2 - sigma_{i+1}^2) s_i(x) + sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2) z, the
  exact Gaussian posterior step; it is ConsistentAnnealed's step at eta = 1 - sigma_{i+1}^2 / sigma_i^2.
- PredictorCorrector (Song et al. 2021, score_sde's PC sampler): at each level, n_corrector Langevin
  corrector steps (step 2 (snr ||z|| / ||s||)^2, the norms averaged over the batch, ||z|| its
  expectation; see fastscore.updates), then the ReverseDiffusion predictor.
- ProbabilityFlow: the probability-flow ODE dx / dsigma = -sigma s(x, sigma) from level to level with
  no noise: Euler x <- x + (sigma_i - sigma_{i+1}) sigma_i s_i(x), or Heun (Euler's point, then the
  mean of the two slopes; the last step, to sigma = 0, where there is no score, stays Euler).

All share LadderSampler's sample(n or x_init, seed, progress, callback) and inpaint.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .sampling import AnnealedLangevin, LadderSampler, Level, check_positive_int, check_positive_number
from .updates import CORRECTOR, HEUN, STEP, Update

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _ancestral(label: int, sigma: float, nxt: float) -> Update:
    """SMLD's ancestral step from sigma to nxt (nxt = 0: the Tweedie denoise, no noise)."""
    return Update(STEP, (label,), (sigma**2 - nxt**2, nxt * math.sqrt(1.0 - (nxt / sigma) ** 2)))


class ConsistentAnnealed(LadderSampler):
    """Consistent annealed sampling. eta: the step as a fraction of sigma_i^2 (the paper's eta; annealed
    Langevin's step_lr / sigma_L^2); n_steps_each: steps per level (the paper's 1)."""

    name = "consistent annealed"

    def __init__(self, model: Model, sigmas: Sequence[float] | torch.Tensor, n_steps_each: int = 1,
                 eta: float = 1.0, **common: Any):
        super().__init__(model, sigmas, **common)
        self.n_steps_each = check_positive_int("n_steps_each", n_steps_each)
        self.eta = check_positive_number("eta", eta)
        if self.eta > 1.0:
            raise ValueError(f"eta must be in (0, 1] (a step past the denoised point overshoots), got {eta}")
        ratio = max(sigma / nxt for _, sigma, nxt in self.ladder() if nxt > 0) if len(self.levels) > 1 else 1.0
        if self.eta < 1.0 - 1.0 / ratio - 1e-12:
            raise ValueError(f"eta {eta} is too small for this ladder: consistency needs eta >= 1 - 1/gamma = "
                             f"{1.0 - 1.0 / ratio:.4g} (gamma = {ratio:.4g}, the largest ratio of consecutive sigmas)")

    def plan(self) -> tuple[Level, ...]:
        eta = self.eta
        levels = []
        for label, sigma, nxt in self.ladder():
            updates = []
            for t in range(self.n_steps_each):
                target = sigma if t < self.n_steps_each - 1 else nxt
                c = target * math.sqrt(max(0.0, 1.0 - (sigma / target * (1.0 - eta)) ** 2)) if target > 0 else 0.0
                updates.append(Update(STEP, (label,), (eta * sigma**2, c)))
            levels.append(Level(label, sigma, tuple(updates)))
        return tuple(levels)


class ReverseDiffusion(LadderSampler):
    """SMLD reverse diffusion: one ancestral step per visited level, the last one to sigma = 0."""

    name = "reverse diffusion"

    def plan(self) -> tuple[Level, ...]:
        return tuple(Level(label, sigma, (_ancestral(label, sigma, nxt),)) for label, sigma, nxt in self.ladder())


class PredictorCorrector(LadderSampler):
    """Predictor-corrector: n_corrector Langevin corrector steps at signal-to-noise ratio snr, then the
    ReverseDiffusion predictor, at every visited level (score_sde runs snr 0.16 for CIFAR-10's VE SDE)."""

    name = "predictor-corrector"

    def __init__(self, model: Model, sigmas: Sequence[float] | torch.Tensor, n_corrector: int = 1,
                 snr: float = 0.16, **common: Any):
        super().__init__(model, sigmas, **common)
        self.n_corrector = check_positive_int("n_corrector", n_corrector) if n_corrector != 0 else 0
        self.snr = check_positive_number("snr", snr)

    def plan(self) -> tuple[Level, ...]:
        return tuple(Level(label, sigma, (Update(CORRECTOR, (label,), (self.snr, 1.0)),) * self.n_corrector
                           + (_ancestral(label, sigma, nxt),))
                     for label, sigma, nxt in self.ladder())


class ProbabilityFlow(LadderSampler):
    """The deterministic probability-flow ODE over the visited levels; method "euler" or "heun"."""

    METHODS = ("euler", "heun")

    def __init__(self, model: Model, sigmas: Sequence[float] | torch.Tensor, method: str = "heun",
                 **common: Any):
        super().__init__(model, sigmas, **common)
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}, got {method!r}")
        self.method = method
        self.name = f"probability flow ({method})"

    def plan(self) -> tuple[Level, ...]:
        levels = []
        ladder = self.ladder()
        for k, (label, sigma, nxt) in enumerate(ladder):
            if self.method == "heun" and nxt > 0:
                update = Update(HEUN, (label, ladder[k + 1][0]), ((sigma - nxt) * sigma, (sigma - nxt) * nxt))
            else:
                update = Update(STEP, (label,), ((sigma - nxt) * sigma, 0.0))
            levels.append(Level(label, sigma, (update,)))
        return tuple(levels)


#: the samplers by their command-line name
SAMPLERS: dict[str, type[LadderSampler]] = {
    "langevin": AnnealedLangevin, "consistent": ConsistentAnnealed, "reverse": ReverseDiffusion,
    "pc": PredictorCorrector, "euler": ProbabilityFlow, "heun": ProbabilityFlow,
}


def create(name: str, model: Model, sigmas: Sequence[float] | torch.Tensor, steps: int | None = None,
           **options: Any) -> LadderSampler:
    """The sampler called `name` in SAMPLERS; steps: the updates per level of those that have several
    (annealed Langevin's and consistent annealing's steps per level, the corrector steps of "pc");
    options: the class's other arguments."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    cls = SAMPLERS[name]
    if name in ("euler", "heun"):
        options["method"] = name
    if steps is not None:
        key = {"langevin": "n_steps_each", "consistent": "n_steps_each", "pc": "n_corrector"}.get(name)
        if key is None:
            raise ValueError(f"the {name} sampler takes one step per noise level; choose fewer levels instead "
                             "of steps")
        options[key] = steps
    return cls(model, sigmas, **options)
