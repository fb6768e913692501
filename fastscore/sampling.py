"""The one sampling loop over a trained noise ladder, the sampler base class, and annealed Langevin.

A sampler is a plan: for each noise level it visits (largest sigma first; the trained ladder or a
sub-ladder of it), a list of updates (fastscore.updates: x <- x + b s + c z made of fused calls). One
loop (run_plan) walks the plan and owns the noise stream's position: one seed per run, and an offset
that advances by x.numel() after every update that draws noise, so a seed fixes the whole trajectory
on every backend and device and no noise is ever reused. The update itself is a step object the loop
calls with (kind, seed, offset): EagerStep runs the ops, and on a GPU with a fused backend
fastscore.graphs.CapturedStep replays captured updates with the coefficients and the stream position in
device tensors. Both get every offset from the same loop, so their trajectories cannot drift apart.

Annealed Langevin (Song & Ermon 2019, Algorithm 1, as ermongroup/ncsn's code runs it): for each level
i, T = n_steps_each updates x <- x + a_i s(x, i) + sqrt(2 a_i) z with a_i = step_lr (sigma_i / sigma_L)^2.
The other samplers of the family are in fastscore.samplers.

The model call convention is model(x, labels), labels a LongTensor (N,) holding the level index i,
as ncsn's conditional networks take it; an NCSNv2-style network maps labels to its sigmas itself.
That call lives in LadderSampler.score alone, so another convention is a one-method change.

A run of n samples can be split into shares (rows a .. b, in several calls or processes): a share starts
from rows a .. b of the run's uniform start and reads, at every draw, the positions a D .. b D of the
run's n D (D = the numel of one sample), so the shares together are the n-sample run, number for number
(for every sampler whose updates act on each sample alone; the predictor-corrector's step size is a mean
over the batch it is given, so its shares differ from the whole run).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.types import Device
from tqdm import tqdm

from .backend import dispatch
from .graphs import CapturedStep
from .noise import MAX_SEED, check_seed_offset
from .ops import randn
from .schedule import langevin_step_sizes
from .updates import STEP, Score, Update, apply

Callback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class Level:
    """One level of a plan: the label (trained level index) whose sigma the known pixels carry while
    its updates run (inpainting), and the updates."""

    label: int
    sigma: float
    updates: tuple[Update, ...]


class Step(Protocol):
    """Runs updates on x in place, re-imposing the known pixels after each one."""

    def set_level(self, keep_values: torch.Tensor | None) -> None:
        """The known-pixel values while the next level runs (None without inpainting)."""

    def set_update(self, update: Update) -> None:
        """The labels and coefficients of the next calls."""

    def __call__(self, kind: str, seed: int, offset: int) -> None:
        """One update of `kind` with the noise at (seed, offset)."""


class EagerStep:
    """The updates as eager ops."""

    def __init__(self, score: Score, x: torch.Tensor, backend: str | None = None,
                 keep_mask: torch.Tensor | None = None):
        self.score, self.x, self.backend, self.keep_mask = score, x, backend, keep_mask
        self.labels: tuple[torch.Tensor, ...] = ()
        self.coeffs: tuple[float | None, ...] = ()
        self.keep_values: torch.Tensor | None = None

    def set_level(self, keep_values: torch.Tensor | None) -> None:
        self.keep_values = keep_values

    def set_update(self, update: Update) -> None:
        n, device = self.x.shape[0], self.x.device
        self.labels = tuple(torch.full((n,), label, dtype=torch.long, device=device) for label in update.labels)
        self.coeffs = update.coeffs

    def __call__(self, kind: str, seed: int, offset: int) -> None:
        x = self.x
        apply(kind, self.score, x, self.labels, self.coeffs, seed, offset, self.backend)
        if self.keep_mask is not None:
            assert self.keep_values is not None, "set_level gives the known values when there is a mask"
            x.copy_(torch.where(self.keep_mask, self.keep_values, x))


def run_plan(step: Step, x: torch.Tensor, plan: Sequence[Level], seed: int, *,
             reference: torch.Tensor | None = None, mask: torch.Tensor | None = None,
             callback: Callback | None = None, bar: tqdm | None = None,
             backend: str | None = None, start: int = 0, stride: int | None = None) -> torch.Tensor:
    """The sampling loop: the plan's updates in order, by `step`, the noisy ones drawing the noise at
    offsets 0, numel, 2 numel, ... of the seed's stream. With a reference and a mask (inpainting),
    each level first draws z' (reference's numel positions) and sets the known pixels to
    reference + sigma z'; the step re-imposes them after every update.

    start, stride: x is a share of a larger run whose every draw takes `stride` positions (default
    x.numel()), x's elements being positions start .. start + x.numel() of each draw.

    callback(update index, level label, x) after every update. Returns, as a device tensor (read it
    once, after the loop: no sync per step), the index of the first update after which x held a
    non-finite value, or -1."""
    numel = x.numel()
    stride = numel if stride is None else stride
    if start < 0 or start + numel > stride:
        raise ValueError(f"a share's positions start .. start + numel ({start} .. {start + numel}) must lie "
                         f"within one draw of the run ({stride} positions)")
    offset = 0
    index = 0
    first_nonfinite = torch.full((), -1, dtype=torch.int64, device=x.device)
    for level in plan:
        keep_values = None
        if reference is not None:
            dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
            z = randn(reference.shape, seed, offset + start, device=x.device, dtype=dtype, backend=backend)
            offset += stride
            keep_values = (reference.to(dtype) + level.sigma * z).to(x.dtype)
            assert mask is not None, "a reference comes with its mask"
            x.copy_(torch.where(mask, keep_values, x))
        step.set_level(keep_values)
        current = None
        for update in level.updates:
            if update != current:
                step.set_update(update)
                current = update
            step(update.kind, seed, offset + start)
            if update.draws_noise:
                offset += stride
            broken = (first_nonfinite < 0) & ~torch.isfinite(x).all()
            first_nonfinite = torch.where(broken, index, first_nonfinite)
            if callback is not None:
                callback(index, level.label, x)
            index += 1
        if bar is not None:
            bar.update(len(level.updates))
            bar.set_postfix(sigma=f"{level.sigma:.4g}", refresh=False)
    return first_nonfinite


def _check_sigmas(sigmas: object) -> tuple[float, ...]:
    """Noise levels as python floats, validated: non-empty, finite, positive, largest first."""
    try:
        values = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"sigmas must be a sequence of numbers or a 1-D tensor, got {type(sigmas).__name__}") from exc
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
        raise ValueError(f"sigmas must be finite and > 0, got {values.tolist()}")
    if values.numel() > 1 and not bool((values[1:] <= values[:-1]).all()):
        raise ValueError("sigmas must run from the largest to the smallest (annealing order), "
                         f"got {values.tolist()}")
    return tuple(values.tolist())


def resolve_seed(seed: int | None) -> int:
    """The run's seed: the one given, or one draw from torch's default generator (so torch.manual_seed
    makes an unseeded run reproducible too)."""
    if seed is None:
        return int(torch.randint(0, MAX_SEED, (1,), dtype=torch.int64).item())
    check_seed_offset(seed, 0)
    return seed


_SKIP_CHUNK = 1 << 22  # numbers drawn at a time while skipping to a share's rows (16 MiB of float32)


def uniform_init(shape: Sequence[int], seed: int, device: Device = None,
                 dtype: torch.dtype = torch.float32, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """ncsn's starting point, uniform in [0, 1): drawn on the CPU from a generator seeded with the run's
    seed, so the start, like the noise, depends on the seed alone and not on the device.

    rows: (a, b) returns rows a .. b of the start of shape `shape` without holding the rest."""
    shape = tuple(shape)
    a, b = rows if rows is not None else (0, shape[0])
    return next(uniform_init_batches(shape, seed, (a, b), max(b - a, 1), device, dtype))


def uniform_init_batches(shape: Sequence[int], seed: int, rows: tuple[int, int], batch: int, device: Device = None,
                         dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """Rows a .. b of uniform_init(shape, seed), in consecutive batches of at most `batch` rows. The CPU
    generator draws in order, one number per element, so the rows before a are drawn in chunks and dropped
    (tests/test_sampling_shares.py checks this against slicing the whole draw)."""
    shape = tuple(shape)
    a, b = rows
    if not 0 <= a <= b <= shape[0]:
        raise ValueError(f"rows must satisfy 0 <= a <= b <= {shape[0]}, got {rows}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    per_row = math.prod(shape[1:])
    skip = a * per_row
    while skip > 0:
        take = min(skip, _SKIP_CHUNK)
        torch.rand(take, generator=generator, dtype=torch.float32)
        skip -= take
    for start in range(a, b, batch) or [a]:  # no rows: one empty batch
        stop = min(start + batch, b)
        x = torch.rand((stop - start,) + shape[1:], generator=generator, dtype=torch.float32)
        yield x.to(device=device, dtype=dtype)


def _check_levels(levels: int | Sequence[int] | None, n: int) -> tuple[int, ...]:
    """The trained levels a sampler visits: all (None), k evenly spaced ones from the first to the last
    (an int k), or the given indices (increasing)."""
    if levels is None:
        return tuple(range(n))
    if isinstance(levels, bool):
        raise ValueError(f"levels must be None, an int or a sequence of level indices, got {levels!r}")
    if isinstance(levels, int):
        if not 1 <= levels <= n:
            raise ValueError(f"levels must be between 1 and the {n} trained levels, got {levels}")
        if levels == 1:
            return (n - 1,)
        return tuple(sorted({round(i * (n - 1) / (levels - 1)) for i in range(levels)}))
    chosen = tuple(int(i) for i in levels)
    increasing = all(a < b for a, b in zip(chosen, chosen[1:], strict=False))
    if not chosen or not increasing or any(not 0 <= i < n for i in chosen):
        raise ValueError(f"levels must be increasing indices into the {n} trained levels, got {list(chosen)}")
    return chosen


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_positive_number(name: str, value: object, *, allow_zero: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


class LadderSampler:
    """A sampler for a score model trained on `sigmas` (largest first); subclasses give the plan.

    model(x, labels) -> score with x's shape; labels: LongTensor (N,) of level indices.
    levels: the trained levels visited: None (all), an int k (k evenly spaced, first and last
    included), or increasing indices.
    shape: the shape of one sample, e.g. (1, 28, 28), needed by sample(n) (not by sample(x_init)).
    device, dtype: where and in what dtype sample(n) starts (default: the model's first parameter's
    device, else the CPU; float32).
    clamp: (low, high) to clamp the returned samples to, e.g. (0, 1) for images; None returns x as
    the dynamics leave it (ncsn clamps only when it saves images; the command line clamps too when it writes a PNG).
    backend: passed to the fused ops (None: the default backend).
    cuda_graph: replay captured updates (fastscore.graphs). None (default): when x is on a GPU and the
    backend there is a fused one; True insists (an error if it cannot); False never.
    """

    name = "sampler"  # the progress bar's label

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        sigmas: Sequence[float] | torch.Tensor,
        *,
        levels: int | Sequence[int] | None = None,
        shape: Sequence[int] | None = None,
        device: Device = None,
        dtype: torch.dtype = torch.float32,
        clamp: tuple[float, float] | None = None,
        backend: str | None = None,
        cuda_graph: bool | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, labels), got {type(model).__name__}")
        if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
            raise ValueError(f"clamp must be None or (low, high) with low < high, got {clamp!r}")
        if cuda_graph not in (None, True, False):
            raise ValueError(f"cuda_graph must be None, True or False, got {cuda_graph!r}")
        self.model = model
        self.sigmas = _check_sigmas(sigmas)
        self.levels = _check_levels(levels, len(self.sigmas))
        self.shape = tuple(shape) if shape is not None else None
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.dtype = dtype
        self.clamp = tuple(clamp) if clamp is not None else None
        self.backend = backend
        self.cuda_graph = cuda_graph
        self.last_seed: int | None = None  # the seed of the latest run, to reproduce an unseeded one
        # (level, update within it) of the first update of the latest run after which a sample held a
        # non-finite value; None when every update stayed finite
        self.first_nonfinite: tuple[int, int] | None = None

    def plan(self) -> tuple[Level, ...]:
        """The levels and their updates, in the order they run."""
        raise NotImplementedError

    def ladder(self) -> list[tuple[int, float, float]]:
        """(label, sigma, next sigma) of each visited level; the next sigma of the last one is 0."""
        sigmas = [self.sigmas[i] for i in self.levels]
        return [(label, sigma, nxt) for label, sigma, nxt in zip(self.levels, sigmas, sigmas[1:] + [0.0], strict=True)]

    @property
    def n_steps(self) -> int:
        """Updates per run (a final step outside the plan, such as annealed Langevin's denoise, not counted)."""
        return sum(len(level.updates) for level in self.plan())

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample in one run."""
        return sum(u.evaluations for level in self.plan() for u in level.updates) + self._final_evaluations()

    def _final_evaluations(self) -> int:
        return 0

    def _finish(self, x: torch.Tensor) -> None:
        """What runs after the plan (nothing, unless a subclass says otherwise)."""

    def score(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The one place the model is called: model(x, labels), labels the level indices."""
        return self.model(x, labels)

    def sample(self, n_or_x: int | torch.Tensor, seed: int | None = None, progress: bool = True,
               callback: Callback | None = None, *, start: int = 0, total: int | None = None) -> torch.Tensor:
        """Draw samples: n_or_x is a count (start uniform in [0, 1) as ncsn, needs `shape`) or a starting
        batch x_init (not modified). callback(step_index, level, x) runs after every update; x is the
        live tensor, clone it to keep it. progress=False hides the tqdm bar.

        start, total: these are samples start .. start + n of a run of `total` (default n) with this
        seed: the same start rows and noise positions as that run (see the module's docstring), so a run
        split over calls or processes gives the same samples (bitwise where the model's kernels do not
        depend on the batch size). With x_init, the caller gives the start rows."""
        seed = resolve_seed(seed)
        self.last_seed = seed
        if isinstance(n_or_x, torch.Tensor):
            x = _check_batch("x_init", n_or_x).detach().clone()
            n = x.shape[0]
        else:
            if isinstance(n_or_x, bool) or not isinstance(n_or_x, int) or n_or_x < 1:
                raise ValueError(f"sample takes a sample count >= 1 or an x_init tensor, got {n_or_x!r}")
            if self.shape is None:
                raise ValueError("sample(n) needs the shape of one sample: pass shape=(C, H, W) to "
                                 f"{type(self).__name__}, or call sample(x_init) with a starting batch")
            n = n_or_x
        total = n if total is None else total
        if isinstance(start, bool) or not isinstance(start, int) or start < 0 or total < start + n:
            raise ValueError(f"samples start .. start + n ({start} .. {start + n}) must lie within the run of "
                             f"total = {total}")
        if not isinstance(n_or_x, torch.Tensor):
            assert self.shape is not None
            rows = None if (start, total) == (0, n) else (start, start + n)
            x = uniform_init((total,) + self.shape, seed, self.device, self.dtype, rows=rows)
        per_sample = x[0].numel()
        return self._run(x, seed, progress, callback, start=start * per_sample, stride=total * per_sample)

    def inpaint(self, reference: torch.Tensor, mask: torch.Tensor, seed: int | None = None, progress: bool = True,
                callback: Callback | None = None, x_init: torch.Tensor | None = None) -> torch.Tensor:
        """Fill the pixels of `reference` where mask is zero, keeping those where it is nonzero (ncsn's
        anneal_Langevin_dynamics_inpainting, any mask, any sampler). mask broadcasts to reference's shape.

        At each level the known pixels are set to reference + sigma * z' (z' drawn once per level from
        the noise stream) and re-imposed after every update, so the model always sees them at the noise
        level it is conditioned on. The result holds the reference's known pixels exactly.
        """
        reference = _check_batch("reference", reference)
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        try:
            mask = torch.broadcast_to(mask.to(reference.device) != 0, reference.shape)
        except RuntimeError as exc:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the reference's "
                             f"shape {tuple(reference.shape)}") from exc
        seed = resolve_seed(seed)
        self.last_seed = seed
        if x_init is None:
            x = uniform_init(reference.shape, seed, reference.device, reference.dtype)
        else:
            x = _check_batch("x_init", x_init).detach().clone()
            if x.shape != reference.shape or x.device != reference.device:
                raise ValueError(f"x_init must match the reference's shape {tuple(reference.shape)} and device "
                                 f"{reference.device}, got {tuple(x.shape)} on {x.device}")
        x = self._run(x, seed, progress, callback, reference=reference.detach(), mask=mask)
        return torch.where(mask, reference.to(x.dtype), x)

    def _run(self, x: torch.Tensor, seed: int, progress: bool, callback: Callback | None,
             reference: torch.Tensor | None = None, mask: torch.Tensor | None = None,
             start: int = 0, stride: int | None = None) -> torch.Tensor:
        model = self.model
        plan = self.plan()
        training = model if isinstance(model, torch.nn.Module) and model.training else None
        if training is not None:
            training.eval()
        bar = tqdm(total=sum(len(level.updates) for level in plan), desc=self.name, unit="step",
                   disable=not progress)
        try:
            with torch.no_grad():
                kinds = [u.kind for level in plan for u in level.updates]
                step = self._capture(x, mask, kinds) or EagerStep(self.score, x, self.backend, mask)
                broken = run_plan(step, x, plan, seed, reference=reference, mask=mask, callback=callback, bar=bar,
                                  backend=self.backend, start=start, stride=stride)
                self._finish(x)
        finally:
            bar.close()
            if training is not None:
                training.train()
        index = int(broken.item())
        self.first_nonfinite = None
        if index >= 0:
            for level in plan:
                if index < len(level.updates):
                    self.first_nonfinite = (level.label, index)
                    break
                index -= len(level.updates)
        if self.first_nonfinite is not None:
            label, t = self.first_nonfinite
            count = next(len(level.updates) for level in plan if level.label == label)
            warnings.warn(f"samples became non-finite at noise level {label} (sigma {self.sigmas[label]:.4g}), "
                          f"{self.step_noun} {t} of {count}: {self._divergence_hint()}", RuntimeWarning,
                          stacklevel=3)
        if self.clamp is not None:
            x.clamp_(*self.clamp)
        return x

    @property
    def step_noun(self) -> str:
        """What its warnings call one update."""
        return f"{self.name} step"

    def _divergence_hint(self) -> str:
        return "try smaller steps"

    def _capture(self, x: torch.Tensor, mask: torch.Tensor | None, kinds: Sequence[str]) -> CapturedStep | None:
        """The captured updates to replay, or None to run the eager loop (see cuda_graph)."""
        if self.cuda_graph is False:
            return None
        fused = x.is_cuda and dispatch.resolve_name(self.backend, x.device) != "torch"
        if not fused:
            if self.cuda_graph:
                raise ValueError("cuda_graph=True needs x on a GPU and a fused backend there (ext or triton), "
                                 f"got x on {x.device} with backend {self.backend or 'auto'!r}")
            return None
        try:
            return CapturedStep(self.score, x, kinds, self.backend, mask)
        except Exception as exc:  # noqa: BLE001 - auto mode degrades to the eager loop, loudly
            if self.cuda_graph:
                raise
            warnings.warn(f"CUDA graph capture of the {self.name} update failed ({exc}); sampling eagerly. "
                          "Pass cuda_graph=False to silence this or True to make it an error.", stacklevel=3)
            return None


class AnnealedLangevin(LadderSampler):
    """Annealed Langevin dynamics (ncsn's sampler) for a score model trained on `sigmas` (largest first).

    n_steps_each: T, updates per level. step_lr: the step size at the smallest sigma (ncsn's epsilon).
    denoise: finish with x + sigma_L^2 * s(x, L-1) and no noise (NCSNv2's final denoising step).
    The other arguments are LadderSampler's.
    """

    name = "annealed Langevin"
    step_noun = "Langevin step"

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        sigmas: Sequence[float] | torch.Tensor,
        n_steps_each: int = 100,
        step_lr: float = 2e-5,
        denoise: bool = False,
        **common: Any,
    ):
        super().__init__(model, sigmas, **common)
        self.n_steps_each = check_positive_int("n_steps_each", n_steps_each)
        self.step_lr = check_positive_number("step_lr", step_lr)
        self.denoise = bool(denoise)
        self.step_sizes = langevin_step_sizes(self.sigmas, self.step_lr)

    def plan(self) -> tuple[Level, ...]:
        return tuple(Level(label, self.sigmas[label],
                           (Update(STEP, (label,), (self.step_sizes[label], None)),) * self.n_steps_each)
                     for label in self.levels)

    def _final_evaluations(self) -> int:
        return int(self.denoise)

    def _finish(self, x: torch.Tensor) -> None:
        if self.denoise:
            # NCSNv2's last step: the posterior mean (Tweedie) at sigma_L, no noise.
            labels = torch.full((x.shape[0],), len(self.sigmas) - 1, dtype=torch.long, device=x.device)
            x.add_(self.score(x, labels).to(x.dtype), alpha=self.sigmas[-1] ** 2)

    def _divergence_hint(self) -> str:
        return "try a smaller step_lr"


def _model_device(model: object) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _check_batch(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point() or t.dim() < 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty floating tensor with a batch dimension, "
                         f"got {t.dtype} of shape {tuple(t.shape)}")
    return t
