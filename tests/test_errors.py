"""Bad input at the public boundary raises a ValueError or TypeError naming the argument."""
import math

import pytest
import torch

import fastscore


def x4(*shape, dtype=torch.float32):
    return torch.randn(*shape or (2, 3, 4, 4)).to(dtype)


NORM_CASES = [
    (dict(x=torch.randn(2, 3, 4)), ValueError, "x must be 4-D"),
    (dict(x=x4().long()), TypeError, "x must be float"),
    (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor"),
    (dict(x=x4(2, 3, 0, 4)), ValueError, "x must not be empty"),
    (dict(gamma=torch.ones(2, 4)), ValueError, r"gamma must have shape \(N, C\)"),
    (dict(alpha=torch.ones(4)), ValueError, r"alpha must have shape"),
    (dict(beta=torch.ones(3, 3)), ValueError, r"beta must have shape"),
    (dict(gamma=torch.ones(3, dtype=torch.int32)), TypeError, "gamma must be float"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(eps=math.nan), ValueError, "eps must be finite"),
    (dict(activation="gelu"), ValueError, "activation must be one of"),
    (dict(gamma=torch.ones(3, device="meta")), ValueError, "gamma is on meta but x is on cpu"),
    # the edges of the valid call's quick recognition (fastscore/ops/checks.py norm_args)
    (dict(gamma=None), TypeError, "gamma must be a torch.Tensor"),
    (dict(alpha=None, beta=torch.ones(3)), TypeError, "alpha must be a torch.Tensor"),
    (dict(beta=torch.ones(3, device="meta")), ValueError, "beta is on meta but x is on cpu"),
    (dict(eps=True), TypeError, "eps must be a number"),
    (dict(eps=-1), ValueError, "eps must be > 0"),
    (dict(eps=math.inf), ValueError, "eps must be finite"),
]


@pytest.mark.parametrize("override,exc,match", NORM_CASES)
def test_norm_rejects(override, exc, match):
    args = dict(x=x4(), gamma=torch.ones(3), alpha=torch.zeros(3), beta=None, eps=1e-5, activation=None)
    args.update(override)
    with pytest.raises(exc, match=match):
        fastscore.cond_instance_norm_plus(**args)


SIGMA_CASES = [
    (dict(sigma=torch.tensor([1.0, math.inf])), ValueError, "sigma must be finite"),
    (dict(sigma=torch.tensor([1.0, math.nan])), ValueError, "sigma must be finite"),
    (dict(sigma=torch.tensor([1.0, 0.0])), ValueError, "sigma must be > 0"),
    (dict(sigma=torch.tensor([1.0, -0.5])), ValueError, "sigma must be > 0"),
    (dict(sigma=torch.ones(3)), ValueError, r"sigma must have shape \(N,\)"),
    (dict(sigma=torch.ones(2, 1)), ValueError, "sigma must be 1-D"),
    (dict(sigma=torch.ones(2, dtype=torch.int64)), TypeError, "sigma must be float"),
    (dict(sigma=torch.ones(2, device="meta")), ValueError, "sigma is on meta"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(seed=2**63), ValueError, "seed must be in"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(offset=-3), ValueError, "offset must be in"),
    (dict(offset=2**63 - 10), ValueError, "offset must be in"),  # the stream's end inside the call's draws
    (dict(offset=True), TypeError, "offset must be an int"),
]


@pytest.mark.parametrize("override,exc,match", SIGMA_CASES)
def test_perturb_rejects(override, exc, match):
    args = dict(x=x4(2, 3, 4, 4), sigma=torch.ones(2), seed=0, offset=0)
    args.update(override)
    with pytest.raises(exc, match=match):
        fastscore.perturb(**args)


@pytest.mark.parametrize("override,exc,match", SIGMA_CASES + [
    (dict(scores=x4().int()), TypeError, "scores must be float"),
    (dict(reduction="max"), ValueError, "reduction must be one of"),
    (dict(anneal_power=math.inf), ValueError, "anneal_power must be finite"),
])
def test_dsm_loss_rejects(override, exc, match):
    args = dict(scores=x4(2, 3, 4, 4), sigma=torch.ones(2), seed=0, offset=0, anneal_power=2.0, reduction="mean")
    args.update(override)
    with pytest.raises(exc, match=match):
        fastscore.dsm_loss(**args)


@pytest.mark.parametrize("override,exc,match", [
    (dict(step_size=-1e-3), ValueError, "step_size must be >= 0"),
    (dict(step_size=math.nan), ValueError, "step_size must be finite"),
    (dict(step_size="big"), TypeError, "step_size must be a number"),
    (dict(noise_scale=-1.0), ValueError, "noise_scale must be >= 0"),
    (dict(score=x4(2, 3, 4, 5)), ValueError, "score must have x's shape"),
    (dict(score=x4().to("meta")), ValueError, "score is on meta"),
    (dict(x=x4().to(torch.int16)), TypeError, "x must be float"),
    (dict(seed=None), TypeError, "seed must be an int"),
    (dict(step_size=math.inf), ValueError, "step_size must be finite"),
    (dict(noise_scale=math.nan), ValueError, "noise_scale must be finite"),
    (dict(noise_scale=True), TypeError, "noise_scale must be a number"),
    (dict(score=[[0.0]]), TypeError, "score must be a torch.Tensor"),
])
def test_langevin_step_rejects(override, exc, match):
    args = dict(x=x4(), score=x4(), step_size=1e-3, seed=0, offset=0, noise_scale=None)
    args.update(override)
    with pytest.raises(exc, match=match):
        fastscore.langevin_step_(**args)


def test_randn_rejects():
    with pytest.raises(ValueError, match="shape must have non-negative sizes"):
        fastscore.randn((2, -1), seed=0)
    with pytest.raises(TypeError, match="dtype must be a floating dtype"):
        fastscore.randn(3, seed=0, dtype=torch.int32)


def test_error_leaves_x_untouched():
    x = x4()
    before = x.clone()
    with pytest.raises(ValueError):
        fastscore.langevin_step_(x, x4(), -1.0, 0)
    assert torch.equal(x, before)
