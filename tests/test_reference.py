"""The reference ops: gradcheck in float64, and agreement with ermongroup/ncsn's formulas.

The ncsn side is written here from DESIGN.md section 2 in ncsn's own terms (nn.InstanceNorm2d, the
variance of the channel means, the target -(x_noisy - x) / sigma^2), independently of reference.py.
"""
import pytest
import torch
import torch.nn as nn

from fastscore.backend import reference
from fastscore.noise import randn as noise_randn


class NcsnCondInstanceNorm2dPlus(nn.Module):
    """ncsn's ConditionalInstanceNorm2dPlus as DESIGN.md describes it (alpha inside gamma)."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.num_features = num_features
        self.instance_norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
        self.embed = nn.Embedding(num_classes, num_features * 3)
        self.embed.weight.data[:, : 2 * num_features].normal_(1, 0.02)
        self.embed.weight.data[:, 2 * num_features:].normal_(0, 0.02)  # nonzero beta, unlike ncsn's init

    def forward(self, x, y):
        means = torch.mean(x, dim=(2, 3))
        m = torch.mean(means, dim=-1, keepdim=True)
        v = torch.var(means, dim=-1, keepdim=True)
        means = (means - m) / torch.sqrt(v + 1e-5)
        h = self.instance_norm(x)
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        h = h + means[..., None, None] * alpha[..., None, None]
        return gamma.view(-1, self.num_features, 1, 1) * h + beta.view(-1, self.num_features, 1, 1)


def ncsn_anneal_dsm_loss(scorenet_output, samples, perturbed, sigmas, anneal_power=2.0):
    used_sigmas = sigmas.view(samples.shape[0], *([1] * len(samples.shape[1:])))
    target = -1 / (used_sigmas**2) * (perturbed - samples)
    scores = scorenet_output.view(scores_shape := (scorenet_output.shape[0], -1))
    target = target.view(scores_shape)
    loss = 1 / 2.0 * ((scores - target) ** 2).sum(dim=-1) * used_sigmas.squeeze() ** anneal_power
    return loss.mean(dim=0)


def test_norm_matches_ncsn_module():
    torch.manual_seed(0)
    module = NcsnCondInstanceNorm2dPlus(6, 10)
    x = torch.randn(4, 6, 9, 7) * 3 + 1
    y = torch.tensor([0, 3, 9, 3])
    gamma, alpha, beta = module.embed(y).chunk(3, dim=-1)
    ours = reference.cond_instance_norm_plus(x, gamma, alpha, beta)
    torch.testing.assert_close(ours, module(x, y), rtol=1e-5, atol=1e-5)


def test_dsm_pair_matches_ncsn_loss():
    torch.manual_seed(1)
    x = torch.rand(5, 1, 6, 6)
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.01])
    perturbed = reference.perturb(x, sigmas, seed=99, offset=1234)
    torch.testing.assert_close(perturbed, x + sigmas.view(-1, 1, 1, 1) * noise_randn(x.shape, 99, 1234))
    scores = torch.randn(5, 1, 6, 6) * 10
    ours = reference.dsm_loss(scores, sigmas, seed=99, offset=1234)
    torch.testing.assert_close(ours, ncsn_anneal_dsm_loss(scores, x, perturbed, sigmas), rtol=1e-4, atol=1e-4)


def test_langevin_step_formula_and_default_noise_scale():
    x = torch.randn(3, 2, 4, 4)
    score = torch.randn(3, 2, 4, 4)
    want = x + 0.01 * score + (2 * 0.01) ** 0.5 * noise_randn(x.shape, 5, 77)
    out = reference.langevin_step_(x.clone(), score, 0.01, seed=5, offset=77)
    torch.testing.assert_close(out, want)
    x2 = x.clone()
    assert reference.langevin_step_(x2, score, 0.01, 5, 77, noise_scale=0.0) is x2
    torch.testing.assert_close(x2, x + 0.01 * score)


def test_norm_keeps_channels_last_and_dtype():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last).bfloat16()
    y = reference.cond_instance_norm_plus(x, torch.rand(3) + 0.5, torch.rand(3))
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)


def test_norm_with_single_channel_has_no_mean_term():
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    gamma, alpha = torch.rand(2, 1, dtype=torch.float64) + 0.5, torch.rand(2, 1, dtype=torch.float64)
    mu, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    want = gamma.view(2, 1, 1, 1) * (x - mu) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(reference.cond_instance_norm_plus(x, gamma, alpha), want)


def _f64(*shape):
    return (torch.randn(*shape, dtype=torch.float64) * 0.7 + 0.2).requires_grad_()


@pytest.mark.parametrize("activation", [None, "elu"])
@pytest.mark.parametrize("per_sample", [True, False])
def test_gradcheck_norm(activation, per_sample):
    torch.manual_seed(2)
    pshape = (3, 4) if per_sample else (4,)
    x, gamma, alpha, beta = _f64(3, 4, 3, 5), _f64(*pshape), _f64(*pshape), _f64(*pshape)
    fn = lambda x, g, a, b: reference.cond_instance_norm_plus(x, g, a, b, 1e-5, activation)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, gamma, alpha, beta))


def test_gradcheck_perturb_and_dsm_loss():
    torch.manual_seed(3)
    x, scores = _f64(3, 2, 3, 3), _f64(3, 2, 3, 3)
    sigma = (torch.rand(3, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s: reference.perturb(x, s, 4, 10), (x, sigma))
    for reduction in ("mean", "sum", "none"):
        fn = lambda sc, s, reduction=reduction: reference.dsm_loss(sc, s, 4, 10, 2.0, reduction)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (scores, sigma))


def test_gradcheck_langevin_step():
    torch.manual_seed(4)
    x, score = _f64(2, 3, 4), _f64(2, 3, 4)
    assert torch.autograd.gradcheck(lambda x, s: reference.langevin_step_(x.clone(), s, 0.03, 1, 2), (x, score))
