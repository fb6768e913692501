"""Normalisation modules of NCSN score networks, computed by the fused fastscore.cond_instance_norm_plus.

Parameter names, shapes and initialisation follow the original code so that its state_dicts load:

    CondInstanceNorm2dPlus   ermongroup/ncsn ConditionalInstanceNorm2dPlus: `embed`, an Embedding of
                             num_classes x 3C holding (gamma | alpha | beta) per noise level
                             (num_classes x 2C, (gamma | alpha), without bias)
    CondInstanceNorm2d       ermongroup/ncsn ConditionalInstanceNorm2d (used by its 64 px network):
                             `embed` of num_classes x 2C, (gamma | beta); the same op with alpha = 0
    InstanceNorm2dPlus       ermongroup/ncsnv2 InstanceNorm2dPlus: shared `alpha`, `gamma`, `beta` of (C,)

Each takes an optional fused `activation` ("elu" or "relu"): y = act(norm(x)) in one kernel, so a
network can fold the ELU that follows most of its norms into the norm itself. None keeps the plain norm.
The modules hold no buffers: the statistics are those of the current input (instance norm, no
running averages), as in the originals.
"""
from __future__ import annotations

import torch
from torch import nn

from .ops import cond_instance_norm_plus
from .ops.norm import ACTIVATIONS

__all__ = ["CondInstanceNorm2dPlus", "CondInstanceNorm2d", "InstanceNorm2dPlus"]


def _check_activation(activation: str | None) -> str | None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {activation!r}")
    return activation


def _check_labels(y: object, x: torch.Tensor) -> None:
    """Noise-level labels: an integer tensor of shape (N,). Values are not read (that would sync the
    GPU and break torch.compile graphs); an out-of-range label fails in the embedding lookup."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y (noise-level labels) must be a torch.Tensor of integers, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y (noise-level labels) must be an integer tensor, got {y.dtype}")
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return  # the op itself reports a bad x
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y (noise-level labels) must have shape (N,) = ({x.shape[0]},) to match x, "
                         f"got {tuple(y.shape)}")


class CondInstanceNorm2dPlus(nn.Module):
    """Conditional instance norm++ (Song & Ermon 2019): per noise level gamma, alpha and beta.

    forward(x, y): x (N, C, H, W), y (N,) integer noise-level labels in [0, num_classes).
    """

    def __init__(self, num_features: int, num_classes: int, bias: bool = True, activation: str | None = None,
                 eps: float = 1e-5, backend: str | None = None):
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.bias = bool(bias)
        self.activation = _check_activation(activation)
        self.eps = eps
        self.backend = backend  # None: fastscore's auto choice (the fused kernel where one is built)
        self.embed = nn.Embedding(num_classes, num_features * (3 if self.bias else 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.num_features
        with torch.no_grad():
            self.embed.weight[:, : 2 * c].normal_(1.0, 0.02)   # gamma and alpha near 1
            self.embed.weight[:, 2 * c:].zero_()                # beta at 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_labels(y, x)
        c = self.num_features
        rows = self.embed(y)                                    # (N, 3C) or (N, 2C)
        # Contiguous (N, C) slices: kernels index gamma/alpha/beta as dense rows.
        gamma = rows[:, :c].contiguous()
        alpha = rows[:, c: 2 * c].contiguous()
        beta = rows[:, 2 * c:].contiguous() if self.bias else None
        return cond_instance_norm_plus(x, gamma, alpha, beta, self.eps, self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_classes={self.num_classes}, bias={self.bias}"
                + (f", activation={self.activation!r}" if self.activation else ""))


class CondInstanceNorm2d(nn.Module):
    """Conditional instance norm (no ++ mean correction): ncsn's norm of its 64 px network.

    It is CondInstanceNorm2dPlus with alpha = 0, so it runs on the same fused op.
    """

    def __init__(self, num_features: int, num_classes: int, bias: bool = True, activation: str | None = None,
                 eps: float = 1e-5, backend: str | None = None):
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.bias = bool(bias)
        self.activation = _check_activation(activation)
        self.eps = eps
        self.backend = backend
        self.embed = nn.Embedding(num_classes, num_features * (2 if self.bias else 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # ncsn's code draws the scale from U(0, 1) here (its comment says N(1, 0.02)); we follow the code
        # so that training from scratch starts where ncsn's did.
        c = self.num_features
        with torch.no_grad():
            self.embed.weight[:, :c].uniform_()
            self.embed.weight[:, c:].zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_labels(y, x)
        c = self.num_features
        rows = self.embed(y)
        gamma = rows[:, :c].contiguous()
        beta = rows[:, c:].contiguous() if self.bias else None
        alpha = torch.zeros_like(gamma)
        return cond_instance_norm_plus(x, gamma, alpha, beta, self.eps, self.activation, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, num_classes={self.num_classes}, bias={self.bias}"
                + (f", activation={self.activation!r}" if self.activation else ""))


class InstanceNorm2dPlus(nn.Module):
    """Unconditional instance norm++ (NCSNv2): alpha, gamma, beta shared by all noise levels, shape (C,).

    forward(x, y=None): y is accepted and ignored so that conditional and unconditional norms are
    interchangeable inside a network.
    """

    def __init__(self, num_features: int, bias: bool = True, activation: str | None = None,
                 eps: float = 1e-5, backend: str | None = None):
        super().__init__()
        self.num_features = num_features
        self.bias = bool(bias)
        self.activation = _check_activation(activation)
        self.eps = eps
        self.backend = backend
        # Registration order alpha, gamma, beta as in NCSNv2 (optimizer states are indexed by it).
        self.alpha = nn.Parameter(torch.empty(num_features))
        self.gamma = nn.Parameter(torch.empty(num_features))
        self.beta = nn.Parameter(torch.empty(num_features)) if self.bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.normal_(1.0, 0.02)
            self.gamma.normal_(1.0, 0.02)
            if self.beta is not None:
                self.beta.zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return cond_instance_norm_plus(x, self.gamma, self.alpha, self.beta, self.eps, self.activation,
                                       backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, bias={self.bias}"
                + (f", activation={self.activation!r}" if self.activation else ""))
