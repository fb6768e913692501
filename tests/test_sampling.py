"""AnnealedLangevin: ncsn's schedule, the noise stream's offsets, analytic targets, inpainting, denoise."""
import math

import pytest
import torch

import fastscore
from fastscore.backend import reference
from fastscore.sampling import AnnealedLangevin, uniform_init

from helpers import requires_cuda


class GaussianScore(torch.nn.Module):
    """Exact score of N(mu, s0^2 I) perturbed by N(0, sigma_i^2 I): -(x - mu) / (s0^2 + sigma_i^2).

    Records what the sampler hands it, so tests can check the call convention and the modes it runs in.
    """

    def __init__(self, sigmas, mu=0.7, s0=0.5):
        super().__init__()
        self.register_buffer("sigmas", torch.as_tensor(sigmas, dtype=torch.float64))
        self.register_buffer("mu", torch.tensor(mu))  # moves with .cuda()
        self.s0 = s0
        self.calls = []

    def forward(self, x, labels):
        self.calls.append((labels.clone(), self.training, torch.is_grad_enabled()))
        var = (self.s0**2 + self.sigmas[labels] ** 2).to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        return -(x - self.mu) / var


def zero_score(x, labels):
    return torch.zeros_like(x)


SIGMAS = (3.0, 1.0, 0.3)


def test_exported():
    assert fastscore.AnnealedLangevin is AnnealedLangevin


def test_step_sizes_are_ncsn_schedule():
    sigmas = torch.logspace(0, -2, 10).tolist()  # ncsn's CIFAR-10 ladder: 1 ... 0.01
    sampler = AnnealedLangevin(zero_score, sigmas, n_steps_each=3, step_lr=2e-5)
    expected = [2e-5 * (s / sigmas[-1]) ** 2 for s in sigmas]
    assert sampler.step_sizes == tuple(expected)
    assert sampler.step_sizes[-1] == 2e-5 and sampler.step_sizes[0] == pytest.approx(2e-5 * 1e4)


def test_trajectory_is_ncsn_loop_with_advancing_offsets():
    """The sampler equals the loop written out: labels = level, a_i = step_lr (s_i / s_L)^2, noise at
    offsets 0, numel, 2 numel, ... of the run's seed."""
    model = GaussianScore(SIGMAS)
    x0 = torch.rand(5, 1, 3, 3)
    sampler = AnnealedLangevin(model, SIGMAS, n_steps_each=4, step_lr=0.01)
    out = sampler.sample(x0, seed=123, progress=False)

    x, offset = x0.clone().double(), 0
    for level, sigma in enumerate(SIGMAS):
        labels = torch.full((5,), level, dtype=torch.long)
        step = 0.01 * (sigma / SIGMAS[-1]) ** 2
        for _ in range(4):
            reference.langevin_step_(x, model(x, labels), step, 123, offset)
            offset += x.numel()
    torch.testing.assert_close(out.double(), x, rtol=1e-5, atol=1e-5)
    assert not torch.equal(x0, out)  # x_init itself is left alone
    labels_seen = [call[0] for call in model.calls[: 3 * 4]]
    assert all(lab.dtype == torch.long and lab.shape == (5,) for lab in labels_seen)
    assert [int(lab[0]) for lab in labels_seen] == [0] * 4 + [1] * 4 + [2] * 4


def test_no_noise_reused_across_steps():
    """With a zero score each update adds exactly sqrt(2 a) * z_t; the z_t are the stream at advancing
    offsets and no two steps share noise."""
    sampler = AnnealedLangevin(zero_score, (2.0, 1.0), n_steps_each=3, step_lr=0.5)
    states = []
    x0 = torch.zeros(4, 6)
    sampler.sample(x0, seed=9, progress=False, callback=lambda i, level, x: states.append(x.clone()))
    prev = x0
    noises = []
    for i, state in enumerate(states):
        step = sampler.step_sizes[i // 3]
        noises.append((state - prev) / math.sqrt(2 * step))
        prev = state
    for i, z in enumerate(noises):
        torch.testing.assert_close(z, fastscore.randn((4, 6), seed=9, offset=i * 24), rtol=1e-4, atol=1e-5)
    for i in range(len(noises)):
        for j in range(i):
            assert (noises[i] - noises[j]).abs().max() > 0.1


def test_seed_reproducibility():
    sampler = AnnealedLangevin(GaussianScore(SIGMAS), SIGMAS, n_steps_each=5, step_lr=0.01, shape=(2, 4, 4))
    a = sampler.sample(8, seed=1, progress=False)
    b = sampler.sample(8, seed=1, progress=False)
    c = sampler.sample(8, seed=2, progress=False)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1
    # An unseeded run draws its seed from torch's generator, records it, and can be replayed.
    torch.manual_seed(0)
    d = sampler.sample(8, progress=False)
    seed_d = sampler.last_seed
    torch.manual_seed(0)
    assert torch.equal(d, sampler.sample(8, progress=False))
    assert torch.equal(d, sampler.sample(8, seed=seed_d, progress=False))


def test_uniform_start_is_ncsn_and_seeded():
    start = uniform_init((1000, 3), seed=5)
    assert start.min() >= 0 and start.max() < 1 and abs(start.mean().item() - 0.5) < 0.05
    assert torch.equal(start, uniform_init((1000, 3), seed=5))
    assert not torch.equal(start, uniform_init((1000, 3), seed=6))


def test_gaussian_target_matches_discretized_langevin():
    """On N(mu, s0^2) the chain at the last level (step a, target variance v = s0^2 + s_L^2) is an AR(1)
    process with stationary mean mu and variance v / (1 - a / (2 v)): the sampler must land there."""
    mu, s0, step = 0.7, 0.5, 0.05
    sampler = AnnealedLangevin(GaussianScore(SIGMAS, mu, s0), SIGMAS, n_steps_each=60, step_lr=step, shape=(1, 4, 4))
    x = sampler.sample(4000, seed=0, progress=False).double()
    v = s0**2 + SIGMAS[-1] ** 2
    expected_var = v / (1 - step / (2 * v))
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.var().item() == pytest.approx(expected_var, rel=0.03)
    assert abs(x.var().item() - v) > 0.015  # the test tells the discretized variance from v itself


def test_denoise_is_tweedie_step():
    """denoise=True adds sigma_L^2 * s(x, L-1) to the run's last state and no noise."""
    model = GaussianScore(SIGMAS)
    x0 = torch.rand(6, 5)
    raw = AnnealedLangevin(model, SIGMAS, n_steps_each=3, step_lr=0.01).sample(x0, seed=4, progress=False)
    den = AnnealedLangevin(model, SIGMAS, n_steps_each=3, step_lr=0.01, denoise=True).sample(x0, seed=4, progress=False)
    last = torch.full((6,), len(SIGMAS) - 1, dtype=torch.long)
    assert (den - raw).abs().max() > 1e-3
    torch.testing.assert_close(den, raw + SIGMAS[-1] ** 2 * model(raw, last))


def test_model_runs_in_eval_without_grad_and_mode_is_restored():
    model = GaussianScore(SIGMAS)
    model.train()
    AnnealedLangevin(model, SIGMAS, n_steps_each=2, step_lr=0.01).sample(torch.rand(2, 3), seed=0, progress=False)
    assert all(not training and not grad for _, training, grad in model.calls)
    assert model.training
    model.eval()
    AnnealedLangevin(model, SIGMAS, n_steps_each=2, step_lr=0.01).sample(torch.rand(2, 3), seed=0, progress=False)
    assert not model.training


def test_callback_sees_every_step_and_level():
    seen = []
    sampler = AnnealedLangevin(zero_score, SIGMAS, n_steps_each=4, step_lr=0.01)
    sampler.sample(torch.rand(2, 3), seed=0, progress=False, callback=lambda i, level, x: seen.append((i, level)))
    assert seen == [(i, i // 4) for i in range(12)]


def test_progress_flag(capsys):
    sampler = AnnealedLangevin(zero_score, SIGMAS, n_steps_each=2, step_lr=0.01)
    sampler.sample(torch.rand(2, 3), seed=0, progress=False)
    assert capsys.readouterr().err == ""
    sampler.sample(torch.rand(2, 3), seed=0, progress=True)
    err = capsys.readouterr().err
    assert "annealed Langevin" in err and "6/6" in err


def test_clamp_and_float64():
    sampler = AnnealedLangevin(zero_score, SIGMAS, n_steps_each=2, step_lr=1.0, clamp=(0.0, 1.0))
    out = sampler.sample(torch.rand(50, 3, dtype=torch.float64), seed=0, progress=False)
    assert out.dtype == torch.float64 and out.min() >= 0 and out.max() <= 1
    assert ((out == 0) | (out == 1)).any()  # big steps push values out, the clamp brings them back


def test_inpainting_keeps_known_pixels_at_their_noise_level():
    sigmas = (1.0, 0.5)
    ref = torch.rand(3, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # left half known, as ncsn's demo
    known = mask.expand_as(ref).bool()
    model = GaussianScore(sigmas)
    states = []
    sampler = AnnealedLangevin(model, sigmas, n_steps_each=3, step_lr=0.05)
    out = sampler.inpaint(ref, mask, seed=7, progress=False, callback=lambda i, lv, x: states.append(x.clone()))
    numel = ref.numel()
    # Level i draws z' at the offset after all earlier draws: level 0 at 0, level 1 after 1 + 3 draws.
    for level, z_offset in enumerate((0, 4 * numel)):
        z = fastscore.randn(ref.shape, seed=7, offset=z_offset)
        for state in states[3 * level : 3 * level + 3]:
            torch.testing.assert_close(state[known], (ref + sigmas[level] * z)[known])
    assert torch.equal(out[known], ref[known])  # the result keeps the reference exactly
    assert (out[~known] - ref[~known]).abs().max() > 0  # the rest was sampled
    # The unknown pixels followed Langevin updates with the known ones pinned, reproducibly.
    assert torch.equal(out, sampler.inpaint(ref, mask, seed=7, progress=False))


def test_inpainting_step_matches_written_out_loop():
    sigmas = (1.0, 0.5)
    ref = torch.rand(2, 1, 3, 3)
    mask = torch.rand(2, 1, 3, 3) > 0.5
    model = GaussianScore(sigmas)
    x0 = torch.rand(2, 1, 3, 3)
    sampler = AnnealedLangevin(model, sigmas, n_steps_each=2, step_lr=0.05)
    out = sampler.inpaint(ref, mask, seed=3, progress=False, x_init=x0)
    x, offset = x0.clone(), 0
    for level, sigma in enumerate(sigmas):
        labels = torch.full((2,), level, dtype=torch.long)
        noisy = ref + sigma * fastscore.randn(ref.shape, seed=3, offset=offset)
        offset += ref.numel()
        x = torch.where(mask, noisy, x)
        for _ in range(2):
            reference.langevin_step_(x, model(x, labels), 0.05 * (sigma / 0.5) ** 2, 3, offset)
            offset += x.numel()
            x = torch.where(mask, noisy, x)
    torch.testing.assert_close(out, torch.where(mask, ref, x))


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigmas=(0.1, 1.0)), "largest to the smallest"),
    (dict(sigmas=(1.0, 0.0)), "> 0"),
    (dict(sigmas=()), "non-empty"),
    (dict(sigmas=(1.0, float("nan"))), "finite"),
    (dict(n_steps_each=0), "n_steps_each"),
    (dict(step_lr=0.0), "step_lr"),
    (dict(step_lr=float("inf")), "step_lr"),
    (dict(clamp=(1.0, 0.0)), "clamp"),
])
def test_bad_arguments(kwargs, message):
    args = dict(sigmas=SIGMAS) | kwargs
    with pytest.raises(ValueError, match=message):
        AnnealedLangevin(zero_score, **args)


def test_bad_sample_calls():
    sampler = AnnealedLangevin(zero_score, SIGMAS)
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(4, seed=0, progress=False)
    with pytest.raises(ValueError, match="count"):
        sampler.sample(0, seed=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        sampler.sample(torch.rand(2, 2), seed=-1, progress=False)
    with pytest.raises(ValueError, match="broadcast"):
        sampler.inpaint(torch.rand(2, 1, 4, 4), torch.ones(3, 1, 4, 4), seed=0, progress=False)
    with pytest.raises(TypeError, match="callable"):
        AnnealedLangevin("model", SIGMAS)


@requires_cuda
def test_cuda_follows_the_cpu_trajectory():
    """The noise and the start depend on the seed only, so a GPU run follows the CPU one to rounding."""
    model = GaussianScore(SIGMAS)
    settings = dict(n_steps_each=10, step_lr=0.01, shape=(3, 8, 8))
    cpu = AnnealedLangevin(model, SIGMAS, **settings).sample(16, seed=5, progress=False)
    gpu = AnnealedLangevin(model.cuda(), SIGMAS, **settings).sample(16, seed=5, progress=False)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
