"""The noise-level ladder sigma_1 > ... > sigma_L, and annealed Langevin's step sizes on it.

One function computes the ladder for training, sampling, configs and benchmarks, so a model is always
sampled on the levels it was trained on.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SCHEDULES = ("geometric", "linear")


def noise_levels(begin: float, end: float, n: int, schedule: str = "geometric") -> torch.Tensor:
    """n levels from `begin` down to `end` as a float32 tensor: evenly spaced in log (ncsn's
    np.exp(np.linspace(np.log(begin), np.log(end), n))) or evenly spaced ("linear").

    Computed in float64 the way numpy's linspace does (start + i * step, the last value set to the end
    exactly), then rounded once to float32, so the levels are ncsn's.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"the number of noise levels must be an integer >= 1, got {n!r}")
    begin, end = float(begin), float(end)
    if not (math.isfinite(begin) and math.isfinite(end) and begin > 0 and end > 0):
        raise ValueError(f"the noise levels' ends must be finite and > 0, got {begin} and {end}")
    if schedule not in SCHEDULES:
        raise ValueError(f"the noise schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    lo, hi = (math.log(begin), math.log(end)) if schedule == "geometric" else (begin, end)
    if n == 1:
        values = [lo]
    else:
        step = (hi - lo) / (n - 1)
        values = [lo + i * step for i in range(n - 1)] + [hi]
    if schedule == "geometric":
        values = [math.exp(v) for v in values]
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def langevin_step_sizes(sigmas: Sequence[float], step_lr: float) -> tuple[float, ...]:
    """Annealed Langevin's step size per level, ncsn's rule in double precision: step_lr * (sigma_i / sigma_L)^2."""
    return tuple(step_lr * (s / sigmas[-1]) ** 2 for s in sigmas)
