"""The speed baseline: what a user runs without fastscore, ermongroup/ncsn's plain eager PyTorch.

Transcribed from ncsn's code (models/cond_refinenet_dilated.py, losses/dsm.py,
runners/anneal_runner.py), operation for operation, with `torch.randn_like` noise:

    ConditionalInstanceNorm2dPlus   ncsn's module (mean, var over the means, nn.InstanceNorm2d, embed)
    norm_elu                        the same computation as a function of (x, gamma, alpha, beta), then
                                    the ELU that follows the norm in ncsn's network
    anneal_dsm_loss                 anneal_dsm_score_estimation: perturb, target, weighted squared error
    langevin_update                 one step of anneal_Langevin_dynamics
    anneal_langevin_dynamics        ncsn's sampling loop (without its per-step copy of every image to
                                    the host, which only makes the baseline slower)
    baseline_network                fastscore's CondRefineNetDilated (ncsn's architecture, plain torch
                                    layers) with every norm replaced by ncsn's module, same weights

fastscore's own torch backend (fastscore.backend.reference) is the correctness oracle, never this. Benchmarks
time this code, and torch.compile of it, in the same process as fastscore's kernels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ConditionalInstanceNorm2dPlus(nn.Module):
    """ncsn's CondInstanceNorm++ (bias=True), computed as ncsn's forward computes it."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_features = num_features
        self.instance_norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
        self.embed = nn.Embedding(num_classes, num_features * 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        return ncsn_norm(self.instance_norm, x, gamma, alpha, beta)


def ncsn_norm(instance_norm, x, gamma, alpha, beta):
    means = torch.mean(x, dim=(2, 3))
    m = torch.mean(means, dim=-1, keepdim=True)
    v = torch.var(means, dim=-1, keepdim=True)
    means = (means - m) / torch.sqrt(v + 1e-5)
    h = instance_norm(x)
    h = h + means[..., None, None] * alpha[..., None, None]
    c = x.shape[1]
    return gamma.view(-1, c, 1, 1) * h + beta.view(-1, c, 1, 1)


def norm_elu(x, gamma, alpha, beta):
    """ncsn's norm on (N, C) parameter rows, then the ELU its network applies next."""
    return F.elu(ncsn_norm(lambda t: F.instance_norm(t, eps=1e-5), x, gamma, alpha, beta))


def anneal_dsm_loss(scorenet, samples, labels, sigmas, anneal_power: float = 2.0):
    """ncsn's anneal_dsm_score_estimation."""
    used_sigmas = sigmas[labels].view(samples.shape[0], *([1] * len(samples.shape[1:])))
    perturbed = samples + torch.randn_like(samples) * used_sigmas
    target = -1 / (used_sigmas**2) * (perturbed - samples)
    scores = scorenet(perturbed, labels)
    target = target.view(target.shape[0], -1)
    scores = scores.view(scores.shape[0], -1)
    loss = 1 / 2.0 * ((scores - target) ** 2).sum(dim=-1) * used_sigmas.squeeze() ** anneal_power
    return loss.mean(dim=0)


def dsm_pair(samples, scores, used_sigmas, anneal_power: float = 2.0):
    """anneal_dsm_score_estimation with the network's output given: (perturbed samples, loss). The
    pair fastscore fuses into perturb + dsm_loss."""
    used = used_sigmas.view(samples.shape[0], *([1] * len(samples.shape[1:])))
    perturbed = samples + torch.randn_like(samples) * used
    target = (-1 / (used**2) * (perturbed - samples)).view(samples.shape[0], -1)
    loss = 1 / 2.0 * ((scores.view(scores.shape[0], -1) - target) ** 2).sum(dim=-1) * used.squeeze() ** anneal_power
    return perturbed, loss.mean(dim=0)


def langevin_update(x, grad, step_size: float):
    """One update of ncsn's anneal_Langevin_dynamics (out of place, as ncsn writes it)."""
    noise = torch.randn_like(x) * math.sqrt(step_size * 2)
    return x + step_size * grad + noise


@torch.no_grad()
def anneal_langevin_dynamics(x_mod, scorenet, sigmas, n_steps_each: int = 100, step_lr: float = 0.00002):
    for c, sigma in enumerate(sigmas):
        labels = (torch.ones(x_mod.shape[0], device=x_mod.device) * c).long()
        step_size = step_lr * (float(sigma) / float(sigmas[-1])) ** 2
        for _ in range(n_steps_each):
            x_mod = langevin_update(x_mod, scorenet(x_mod, labels), step_size)
    return x_mod


def baseline_network(fast_model: nn.Module) -> nn.Module:
    """A copy of an unfused fastscore CondRefineNetDilated whose every CondInstanceNorm2dPlus is ncsn's
    module holding the same embedding (the other layers are the same plain torch layers as ncsn's)."""
    import copy

    from fastscore.nn import CondInstanceNorm2dPlus

    model = copy.deepcopy(fast_model)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CondInstanceNorm2dPlus):
                if child.activation is not None or not child.bias:
                    raise ValueError("baseline_network takes an unfused network with biased norms")
                ncsn = ConditionalInstanceNorm2dPlus(child.num_features, child.num_classes)
                ncsn.embed.load_state_dict(child.embed.state_dict())
                setattr(parent, name, ncsn.to(child.embed.weight.device))
                replaced += 1
    if replaced == 0:
        raise ValueError("no CondInstanceNorm2dPlus found to replace")
    return model
