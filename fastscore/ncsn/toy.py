"""The toy experiment of Song & Ermon 2019 (their Figure 3): why Langevin dynamics needs annealing.

Data: p = 0.2 N((-5,-5), I) + 0.8 N((5,5), I). Both samplers use the exact score, so any error comes
from the dynamics alone:
- plain Langevin on the data score, T = 1000 steps of eps = 0.1 from a uniform start in [-8, 8]^2: in
  the low-density gap between the modes the score carries no information about the weights, so each
  chain falls into whichever mode's basin it starts in and the mode weights come out near 1/2 each;
- annealed Langevin (fastscore.AnnealedLangevin) on the score of p convolved with N(0, sigma^2 I),
  sigmas geometric from 20 to 1 (10 levels), T = 100 per level, ncsn's step rule a_i = eps sigma_i^2 /
  sigma_L^2: at sigma = 20 the two modes overlap and chains move between them, so the weights come out
  right.
The result is printed as recovered mode weights and drawn as three scatter panels in one PNG.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..ops import langevin_step_
from ..sampling import AnnealedLangevin
from ..schedule import noise_levels

WEIGHTS = (0.2, 0.8)
MEANS = ((-5.0, -5.0), (5.0, 5.0))
BOX = 8.0           # uniform start in [-BOX, BOX]^2
STEP = 0.1          # eps: plain Langevin's step, annealed Langevin's step at the smallest sigma
PLAIN_STEPS = 1000
ANNEAL_SIGMAS = tuple(noise_levels(20.0, 1.0, 10).tolist())  # 20 ... 1
ANNEAL_STEPS = 100
NEAR = 5.0          # a sample counts for a mode when it lies within this distance of its mean


def mixture_score(x: torch.Tensor, sigma) -> torch.Tensor:
    """Exact score of p convolved with N(0, sigma^2 I): every component becomes N(m_k, (1 + sigma^2) I),
    so grad log p_sigma(x) = (sum_k r_k(x) m_k - x) / (1 + sigma^2) with r_k the posterior weights.

    x: (N, 2); sigma: a number or an (N,) tensor (one level per sample).
    """
    means = torch.tensor(MEANS, dtype=x.dtype, device=x.device)
    log_w = torch.tensor(WEIGHTS, dtype=x.dtype, device=x.device).log()
    var = 1.0 + torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1) ** 2  # (N, 1) or (1, 1)
    sq_dist = ((x.unsqueeze(1) - means) ** 2).sum(-1)                                     # (N, K)
    logits = log_w - sq_dist / (2.0 * var)
    # Softmax and the weighted mean written elementwise: on these (N, 2) shapes torch's softmax and mm
    # kernels spend milliseconds on threading overhead, elementwise ops microseconds.
    posterior = (logits - logits.amax(dim=1, keepdim=True)).exp()
    posterior = posterior / posterior.sum(dim=1, keepdim=True)
    return ((posterior.unsqueeze(-1) * means).sum(1) - x) / var


class MixtureScore:
    """The exact score as a noise-conditional "model": model(x, labels) = score at sigmas[labels]."""

    def __init__(self, sigmas):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return mixture_score(x, self.sigmas.to(x.device)[labels])


def sample_mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """n exact samples of p."""
    component = torch.multinomial(torch.tensor(WEIGHTS), n, replacement=True, generator=generator)
    return torch.tensor(MEANS)[component] + torch.randn(n, 2, generator=generator)


def plain_langevin(x: torch.Tensor, seed: int, n_steps: int = PLAIN_STEPS, step: float = STEP) -> torch.Tensor:
    """x <- x + eps grad log p(x) + sqrt(2 eps) z on the data score, noise from the fastscore stream."""
    x = x.clone()
    for t in range(n_steps):
        langevin_step_(x, mixture_score(x, 0.0), step, seed, t * x.numel())
    return x


def annealed_langevin(x: torch.Tensor, seed: int, progress: bool = False) -> torch.Tensor:
    sampler = AnnealedLangevin(MixtureScore(ANNEAL_SIGMAS), ANNEAL_SIGMAS, n_steps_each=ANNEAL_STEPS, step_lr=STEP)
    return sampler.sample(x, seed=seed, progress=progress)


def mode_weights(x: torch.Tensor) -> tuple[float, ...]:
    """Fraction of samples within NEAR of each mode's mean (in MEANS order), then the fraction near none."""
    dist = torch.cdist(x.double(), torch.tensor(MEANS, dtype=torch.float64))  # (N, K)
    nearest = dist.argmin(dim=1)
    near = dist.min(dim=1).values < NEAR
    fractions = [float(((nearest == k) & near).double().mean()) for k in range(len(MEANS))]
    return (*fractions, float((~near).double().mean()))


@dataclass
class ToyResult:
    seed: int
    exact: torch.Tensor      # (n, 2) samples of p
    plain: torch.Tensor      # (n, 2) plain Langevin
    annealed: torch.Tensor   # (n, 2) annealed Langevin

    def weights(self) -> dict[str, tuple[float, ...]]:
        return {name: mode_weights(getattr(self, name)) for name in ("exact", "plain", "annealed")}


def run(n_samples: int = 1000, seed: int = 0, progress: bool = False) -> ToyResult:
    """Exact samples, plain and annealed Langevin from the same uniform start; all fixed by `seed`."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    generator = torch.Generator().manual_seed(seed)
    exact = sample_mixture(n_samples, generator)
    start = (torch.rand(n_samples, 2, generator=generator) * 2.0 - 1.0) * BOX
    plain_seed, annealed_seed = torch.randint(0, 2**62, (2,), generator=generator).tolist()
    return ToyResult(seed, exact, plain_langevin(start, plain_seed), annealed_langevin(start, annealed_seed, progress))


def report(result: ToyResult) -> str:
    """The recovered mode weights of each sampler against the truth, as a small table."""
    mode_names = [f"({m[0]:g},{m[1]:g})" for m in MEANS]
    lines = [
        f"mixture {WEIGHTS[0]} N({mode_names[0]}, I) + {WEIGHTS[1]} N({mode_names[1]}, I); "
        f"{result.exact.shape[0]} samples each, seed {result.seed}",
        f"{'':20}" + "".join(f"{'near ' + name:>16}" for name in mode_names) + f"{'elsewhere':>12}",
        f"{'true weights':20}" + "".join(f"{w:16.3f}" for w in WEIGHTS) + f"{'':>12}",
    ]
    labels = {
        "exact": "exact samples",
        "plain": f"Langevin ({PLAIN_STEPS} st)",
        "annealed": f"annealed ({len(ANNEAL_SIGMAS)}x{ANNEAL_STEPS})",
    }
    for name, w in result.weights().items():
        lines.append(f"{labels[name]:20}" + "".join(f"{v:16.3f}" for v in w[:-1]) + f"{w[-1]:12.3f}")
    return "\n".join(lines)


def draw(result: ToyResult, path: str | os.PathLike, panel: int = 320, extent: float = 12.0) -> str:
    """Three scatter panels (exact, plain, annealed) side by side in one PNG, drawn with Pillow."""
    from PIL import Image, ImageDraw  # deferred: only needed when a picture is written

    title_height, gap = 22, 8
    picture = Image.new("RGB", (3 * panel + 4 * gap, panel + title_height + 2 * gap), "white")
    pen = ImageDraw.Draw(picture)
    weights = result.weights()
    titles = {"exact": "exact samples", "plain": "Langevin", "annealed": "annealed Langevin"}

    def to_pixel(x, y, left, top):
        # Data coordinates in [-extent, extent]^2 to pixels, y pointing up.
        return (left + (x + extent) / (2 * extent) * (panel - 1), top + (extent - y) / (2 * extent) * (panel - 1))

    for i, name in enumerate(("exact", "plain", "annealed")):
        left, top = gap + i * (panel + gap), gap + title_height
        w = weights[name]
        pen.text((left + 4, gap), f"{titles[name]}: {w[0]:.2f} / {w[1]:.2f}", fill="black")
        pen.rectangle((left, top, left + panel - 1, top + panel - 1), outline=(160, 160, 160))
        x0, y0 = to_pixel(0.0, 0.0, left, top)
        pen.line((left, y0, left + panel - 1, y0), fill=(225, 225, 225))
        pen.line((x0, top, x0, top + panel - 1), fill=(225, 225, 225))
        for x, y in getattr(result, name).tolist():
            if abs(x) < extent and abs(y) < extent:
                px, py = to_pixel(x, y, left, top)
                pen.rectangle((px - 1, py - 1, px + 1, py + 1), fill=(30, 90, 200))
        for mx, my in MEANS:  # red crosses on the true modes
            px, py = to_pixel(mx, my, left, top)
            pen.line((px - 6, py, px + 6, py), fill=(220, 30, 30), width=2)
            pen.line((px, py - 6, px, py + 6), fill=(220, 30, 30), width=2)
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    picture.save(path, format="PNG")
    return path
