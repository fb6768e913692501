"""Normalisation modules of NCSN score networks, computed by the fused fastscore.cond_instance_norm_plus.

Parameter names, shapes and initialisation follow the original code so that its state_dicts load:

    CondInstanceNorm2dPlus   ermongroup/ncsn ConditionalInstanceNorm2dPlus: `embed`, an Embedding of
                             num_classes x 3C holding (gamma | alpha | beta) per noise level
                             (num_classes x 2C, (gamma | alpha), without bias)
    CondInstanceNorm2d       ermongroup/ncsn ConditionalInstanceNorm2d (used by its 64 px network):
                             `embed` of num_classes x 2C, (gamma | beta); the same op with alpha = 0
    InstanceNorm2dPlus       ermongroup/ncsnv2 InstanceNorm2dPlus: shared `alpha`, `gamma`, `beta` of (C,)

CondInstanceNorm2dPlus runs fastscore.cond_instance_norm_plus_lookup on its embedding's weight (each
sample's row read in place by its label); the other two pass their parameters to the op as views.
Each takes an optional fused `activation` ("elu" or "relu"): y = act(norm(x)) in one kernel, so a
network can fold the ELU that follows most of its norms into the norm itself. None keeps the plain norm.
The modules hold no buffers: the statistics are those of the current input (instance norm, no
running averages), as in the originals.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .ops import cond_instance_norm_plus, cond_instance_norm_plus_lookup
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


class _SplitRows(torch.autograd.Function):
    """rows (N, K*C) -> K views (N, C) of its column blocks, no copy. Backward: when the K gradients are
    the rows of one (N, K, C) buffer (as the norm's backward returns them) that buffer, viewed (N, K*C),
    is the gradient of rows, no copy; otherwise one concatenation. (Plain slicing would give each slice
    an (N, K*C) zero-filled gradient of its own, then add them up.)"""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, c: int) -> tuple[torch.Tensor, ...]:
        ctx.c = c
        return _column_blocks(rows, c)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        c = ctx.c
        first = next(g for g in grads if g is not None)
        base = None if torch.compiler.is_compiling() else first._base  # traced graphs: the plain cat
        n, k = first.shape[0], len(grads)
        if (base is not None and base.shape == (n, k, c) and base.is_contiguous()
                and all(g is not None and g._base is base and g.stride() == (k * c, 1)
                        and g.storage_offset() == base.storage_offset() + i * c for i, g in enumerate(grads))):
            return base.view(n, k * c), None
        return torch.cat([g if g is not None else first.new_zeros(n, c) for g in grads], dim=1), None


def _column_blocks(rows: torch.Tensor, c: int) -> tuple[torch.Tensor, ...]:
    # one view and an unbind: half the host time of torch.split, the same (N, C) views
    return rows.view(rows.shape[0], -1, c).unbind(1)


def split_rows(rows: torch.Tensor, c: int) -> tuple[torch.Tensor, ...]:
    """The (N, C) column blocks of rows (N, K*C) (contiguous, as an embedding's output) as views, with a
    backward that gathers nothing."""
    if not (rows.requires_grad and torch.is_grad_enabled()):  # nothing to gather: plain views
        return _column_blocks(rows, c)
    out: tuple[torch.Tensor, ...] = _SplitRows.apply(rows, c)
    return out


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
        # The op reads each sample's (gamma | alpha | beta) row of the embedding's weight by its label
        # (the embedding module is not called: no gathered rows and no views of them; the weight's
        # gradient comes from the op's backward). The label checks are the op's.
        return cond_instance_norm_plus_lookup(x, y, self.embed.weight, self.eps, self.activation,
                                              backend=self.backend)

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
        gamma, *rest = split_rows(self.embed(y), c)   # strided views of the embedding's rows, no copies
        beta = rest[0] if self.bias else None
        alpha = gamma.new_zeros(()).expand(c)             # alpha = 0: one value, read with stride 0
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
