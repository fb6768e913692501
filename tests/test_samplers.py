"""The sampler family: each sampler equals its formula written out in plain PyTorch on every backend,
recovers the toy mixture's mode weights with the exact score, and shares the sampler surface."""
import math

import pytest
import torch

import fastscore
from fastscore import samplers
from fastscore.ncsn import toy
from fastscore.noise import randn as stream
from fastscore.sampling import AnnealedLangevin, LadderSampler
from fastscore.updates import expected_noise_norm

from helpers import backend_params

SIGMAS = (2.0, 1.0, 0.6)


class Nonlinear(torch.nn.Module):
    """A level-conditioned score that is not linear in x, so every coefficient and label shows."""

    def forward(self, x, labels):
        scale = (1.0 + labels.to(x.dtype)).reshape((-1,) + (1,) * (x.dim() - 1))
        return -torch.tanh(x) * scale + 0.1 * x.roll(1, dims=-1)


def z(x, seed, offset):
    return stream(x.shape, seed, offset, device=x.device, dtype=torch.float64)


def labels_of(x, i):
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


def written_out(name, x, seed):
    """The sampler's maths in float64 torch, the noise from the stream's plain-torch ground truth."""
    model, x, offset = Nonlinear(), x.double(), 0
    sig = list(SIGMAS) + [0.0]

    def s(v, i):
        return model(v, labels_of(v, i))

    for i in range(len(SIGMAS)):
        si, sn = sig[i], sig[i + 1]
        if name == "consistent":  # eta 0.6, 2 steps per level: to sigma_i, then to sigma_{i+1}
            for target in (si, sn):
                beta = math.sqrt(1 - (si / target * 0.4) ** 2) if target > 0 else 0.0
                x = x + 0.6 * si**2 * s(x, i) + beta * target * z(x, seed, offset)
                offset += x.numel() if target > 0 else 0
        if name == "pc":  # two corrector steps at snr 0.2, then the predictor
            for _ in range(2):
                score = s(x, i)
                noise_norm = expected_noise_norm(x[0].numel())
                eps = 2 * (0.2 * noise_norm / score.flatten(1).norm(dim=1).mean()) ** 2
                x = x + eps * score + torch.sqrt(2 * eps) * z(x, seed, offset)
                offset += x.numel()
        if name in ("reverse", "pc"):
            std = sn * math.sqrt(1 - sn**2 / si**2)
            x = x + (si**2 - sn**2) * s(x, i) + std * z(x, seed, offset)
            offset += x.numel() if sn > 0 else 0
        if name == "euler" or (name == "heun" and sn == 0):
            x = x + (si - sn) * si * s(x, i)
        elif name == "heun":
            d = -si * s(x, i)
            d2 = -sn * s(x + (sn - si) * d, i + 1)
            x = x + (sn - si) * (d + d2) / 2
    return x


OPTIONS = {"consistent": dict(eta=0.6, steps=2), "pc": dict(snr=0.2, steps=2), "reverse": {}, "euler": {},
           "heun": {}}


@pytest.mark.parametrize("backend, device", backend_params())
@pytest.mark.parametrize("name", list(OPTIONS))
def test_fused_sampler_equals_its_formula(name, backend, device):
    torch.manual_seed(0)
    x0 = torch.randn(3, 2, 3, 5, device=device)
    sampler = samplers.create(name, Nonlinear(), SIGMAS, backend=backend, cuda_graph=False, **OPTIONS[name])
    got = sampler.sample(x0, seed=77, progress=False)
    want = written_out(name, x0, 77)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert (got.double() - x0.double()).abs().max() > 0.1


def test_reverse_diffusion_is_consistent_annealing_at_its_eta():
    """The ancestral step is consistent annealing's at eta = 1 - sigma_{i+1}^2 / sigma_i^2 (one level pair)."""
    sig = (1.5, 1.0)
    reverse = samplers.ReverseDiffusion(Nonlinear(), sig, levels=[0]).plan()[0].updates[0]
    two = samplers.ReverseDiffusion(Nonlinear(), sig).plan()[0].updates[0]
    consistent = samplers.ConsistentAnnealed(Nonlinear(), sig, eta=1 - (1.0 / 1.5) ** 2).plan()[0].updates[0]
    assert reverse.coeffs == (1.5**2, 0.0)  # a one-level ladder goes straight to sigma = 0: the denoise
    assert two.coeffs == pytest.approx(consistent.coeffs, rel=1e-12)


@pytest.fixture(scope="module")
def toy_starts():
    g = torch.Generator().manual_seed(0)
    n = 1000
    uniform = (torch.rand(n, 2, generator=g) * 2 - 1) * toy.BOX
    # The exact p_{sigma_1}: what the deterministic flow must start from to map onto p (the uniform
    # start is ncsn's; annealing and noise make the stochastic samplers forget it).
    prior = toy.sample_mixture(n, g) + toy.ANNEAL_SIGMAS[0] * torch.randn(n, 2, generator=g)
    return {"uniform": uniform, "prior": prior}


@pytest.mark.parametrize("name, options, start", [
    ("consistent", dict(eta=0.4, steps=3), "uniform"),
    ("reverse", {}, "uniform"),
    ("pc", dict(steps=1), "uniform"),
    ("euler", {}, "prior"),
    ("heun", {}, "prior"),
])
def test_toy_mixture_weights_are_recovered(name, options, start, toy_starts):
    sampler = samplers.create(name, toy.MixtureScore(toy.ANNEAL_SIGMAS), toy.ANNEAL_SIGMAS, **options)
    weights = toy.mode_weights(sampler.sample(toy_starts[start], seed=5, progress=False))
    assert weights[0] == pytest.approx(toy.WEIGHTS[0], abs=0.05)
    assert weights[1] == pytest.approx(toy.WEIGHTS[1], abs=0.05)


def test_the_flow_is_deterministic_and_needs_its_prior(toy_starts):
    """No noise: the seed changes nothing. From the uniform box, not p_{sigma_1}, the flow maps every
    chain into the heavy mode: the test above can tell a wrong start from a right one."""
    sampler = samplers.ProbabilityFlow(toy.MixtureScore(toy.ANNEAL_SIGMAS), toy.ANNEAL_SIGMAS, method="euler")
    a = sampler.sample(toy_starts["prior"][:50], seed=1, progress=False)
    assert torch.equal(a, sampler.sample(toy_starts["prior"][:50], seed=2, progress=False))
    assert toy.mode_weights(sampler.sample(toy_starts["uniform"], seed=1, progress=False))[0] < 0.1


def test_evaluations_and_levels():
    model = Nonlinear()
    sigmas = (4.0, 2.0, 1.0, 0.5, 0.25)
    assert AnnealedLangevin(model, sigmas, n_steps_each=3, denoise=True).evaluations == 16
    assert samplers.create("pc", model, sigmas, steps=2).evaluations == 15
    assert samplers.create("heun", model, sigmas).evaluations == 9
    assert samplers.create("euler", model, sigmas, levels=3).evaluations == 3
    assert samplers.create("euler", model, sigmas, levels=3).levels == (0, 2, 4)
    assert samplers.create("reverse", model, sigmas, levels=[1, 4]).ladder() == [(1, 2.0, 0.25), (4, 0.25, 0.0)]


def test_every_sampler_inpaints_and_keeps_the_known_pixels():
    ref = torch.rand(2, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    for name, options in OPTIONS.items():
        sampler = samplers.create(name, Nonlinear(), SIGMAS, **options)
        assert isinstance(sampler, LadderSampler)
        seen: list[int] = []
        out = sampler.inpaint(ref, mask, seed=1, progress=False, callback=lambda i, lv, x, seen=seen: seen.append(lv))
        known = mask.expand_as(ref).bool()
        assert torch.equal(out[known], ref[known]) and (out[~known] != ref[~known]).any()
        assert len(seen) == sampler.n_steps and seen[0] == 0 and seen[-1] == len(SIGMAS) - 1


@pytest.mark.parametrize("call, message", [
    (lambda: samplers.create("nope", Nonlinear(), SIGMAS), "unknown sampler"),
    (lambda: samplers.create("euler", Nonlinear(), SIGMAS, steps=3), "one step per noise level"),
    (lambda: samplers.ConsistentAnnealed(Nonlinear(), SIGMAS, eta=0.1), "eta 0.1 is too small"),
    (lambda: samplers.ConsistentAnnealed(Nonlinear(), SIGMAS, eta=1.5), r"eta must be in \(0, 1\]"),
    (lambda: samplers.PredictorCorrector(Nonlinear(), SIGMAS, snr=-1.0), "snr"),
    (lambda: samplers.ProbabilityFlow(Nonlinear(), SIGMAS, method="rk4"), "method"),
    (lambda: samplers.ReverseDiffusion(Nonlinear(), SIGMAS, levels=7), "levels"),
    (lambda: samplers.ReverseDiffusion(Nonlinear(), SIGMAS, levels=[2, 1]), "increasing"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_exported():
    assert fastscore.samplers.SAMPLERS["langevin"] is fastscore.AnnealedLangevin
