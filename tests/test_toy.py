"""The paper's toy (Figure 3): exact mixture score, plain Langevin wrong, annealed Langevin right, PNG."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastscore.ncsn import toy
from fastscore.ncsn.cli import main


def log_density(x, sigma):
    """log of p convolved with N(0, sigma^2 I), written out with logsumexp, for autograd."""
    var = 1.0 + sigma**2
    terms = [
        math.log(w) - ((x - torch.tensor(m, dtype=x.dtype)) ** 2).sum(-1) / (2 * var) - math.log(2 * math.pi * var)
        for w, m in zip(toy.WEIGHTS, toy.MEANS, strict=True)
    ]
    return torch.logsumexp(torch.stack(terms), dim=0)


@pytest.mark.parametrize("sigma", [0.0, 1.0, 3.7, 20.0])
def test_mixture_score_is_gradient_of_log_density(sigma):
    x = (torch.rand(64, 2, dtype=torch.float64) * 2 - 1) * 12
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(x, sigma).sum(), x)
    torch.testing.assert_close(toy.mixture_score(x.detach(), sigma), grad, rtol=1e-9, atol=1e-12)


def test_noise_conditional_model_uses_each_samples_level():
    model = toy.MixtureScore(toy.ANNEAL_SIGMAS)
    x = torch.randn(4, 2, dtype=torch.float64) * 6
    labels = torch.tensor([0, 3, 9, 9])
    expected = torch.stack([toy.mixture_score(x[i : i + 1], toy.ANNEAL_SIGMAS[int(labels[i])])[0] for i in range(4)])
    torch.testing.assert_close(model(x, labels), expected)


def test_anneal_ladder_is_the_papers():
    assert len(toy.ANNEAL_SIGMAS) == 10
    assert toy.ANNEAL_SIGMAS[0] == pytest.approx(20) and toy.ANNEAL_SIGMAS[-1] == pytest.approx(1)
    ratios = np.array(toy.ANNEAL_SIGMAS[:-1]) / np.array(toy.ANNEAL_SIGMAS[1:])
    assert np.allclose(ratios, ratios[0])  # geometric


def test_mode_weights_counts_near_each_mode():
    x = torch.tensor([[-5.0, -5.0], [4.0, 6.0], [5.5, 5.0], [0.0, 0.0], [-9.0, -4.0]])
    near_low, near_high, elsewhere = toy.mode_weights(x)
    assert (near_low, near_high, elsewhere) == (0.4, 0.4, 0.2)


@pytest.fixture(scope="module")
def result():
    return toy.run(n_samples=1000, seed=0)


def test_annealed_recovers_weights_and_plain_does_not(result):
    weights = result.weights()
    exact, plain, annealed = weights["exact"], weights["plain"], weights["annealed"]
    assert exact[0] == pytest.approx(0.2, abs=0.04) and exact[1] == pytest.approx(0.8, abs=0.04)
    assert annealed[0] == pytest.approx(0.2, abs=0.05) and annealed[1] == pytest.approx(0.8, abs=0.05)
    assert annealed[2] < 0.02  # nearly every annealed sample ends at a mode
    # Plain Langevin splits by the starting basin: close to half and half, far from 0.2 / 0.8.
    assert abs(plain[0] - 0.2) > 0.2 and abs(plain[1] - 0.8) > 0.2
    assert plain[2] < 0.02  # it did converge, just to the wrong proportions


def test_samples_sit_on_the_modes(result):
    for x in (result.plain, result.annealed):
        assert torch.isfinite(x).all()
        high = x[x.sum(1) > 0]
        torch.testing.assert_close(high.mean(0), torch.tensor([5.0, 5.0]), rtol=0, atol=0.25)


def test_report_lists_each_method(result):
    text = toy.report(result)
    for word in ("true weights", "exact samples", "Langevin", "annealed", "0.200", "0.800"):
        assert word in text


def test_png_has_three_panels(result, tmp_path):
    path = toy.draw(result, tmp_path / "out" / "toy.png", panel=200)
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.mode == "RGB"
        pixels = np.asarray(picture)
    assert pixels.shape[1] > 3 * 200 and pixels.shape[0] > 200
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    thirds = np.array_split(blue, 3, axis=1)
    assert all(third.sum() > 500 for third in thirds)  # every panel has its scatter


def test_cli_toy(tmp_path, capsys):
    out = tmp_path / "toy.png"
    assert main(["toy", "--out", str(out), "--n-samples", "200", "--seed", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "annealed" in text and f"wrote {out}" in text
    with Image.open(out) as picture:
        picture.load()
