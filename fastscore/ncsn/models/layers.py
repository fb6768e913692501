"""Building blocks of the RefineNet-style NCSN score networks.

One class per block serves both the conditional network of NCSN (ermongroup/ncsn: every block
normalises with a noise-conditional norm) and the unconditional NCSNv2 one (norms only in the
residual blocks; the refine blocks have none). `norm` is a factory `norm(num_features, activation)`
returning a module called as `norm(x, y)`, or None for no norm. Attribute names, registration order
and forward order follow the originals, so their state_dicts (and optimizer states, which are indexed
by parameter order) load unchanged.

`fuse_act`: where a norm is immediately followed by the ELU, build the norm with activation="elu"
and skip the separate ELU (one pass over the activations instead of two). Same values either way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormFactory = Callable[..., nn.Module]


def conv3x3(cin: int, cout: int, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the spatial size for any dilation.
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=dilation, dilation=dilation, bias=bias)


class _NormAct(nn.Module):
    """Base for blocks that apply `act(norm(x, y))`, fused into the norm when `fuse_act` is set."""

    def _make_norm(self, norm: NormFactory, features: int) -> nn.Module:
        return norm(features, activation="elu" if self.fuse_act else None)

    def _norm_act(self, norm: nn.Module, x: torch.Tensor, y) -> torch.Tensor:
        x = norm(x, y)
        return x if self.fuse_act else F.elu(x)


class ConvMeanPool(nn.Module):
    """Convolution (size kept), then 2x2 mean pooling: the downsampling of NCSN's residual blocks."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=1, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original averages the four strided sub-grids; on even sizes that is avg_pool2d(2), which
        # is one kernel and keeps channels_last.
        return F.avg_pool2d(self.conv(x), kernel_size=2, stride=2)


class ResidualBlock(_NormAct):
    """norm, ELU, conv, norm, ELU, conv, plus a shortcut (identity or a conv when shape changes).

    resample="down" halves the size (conv then mean pool) unless `dilation` is given, in which case,
    as in the original code, the block keeps the size and uses dilated convolutions instead.
    (ncsn's 28 px network asks its dilated block for `adjust_padding`; dilated blocks ignore it, so it
    has no counterpart here.)
    """

    def __init__(self, cin: int, cout: int, norm: NormFactory, resample: str | None = None,
                 dilation: int | None = None, fuse_act: bool = False):
        super().__init__()
        if resample not in (None, "down"):
            raise ValueError(f"resample must be None or 'down', got {resample!r}")
        self.cin, self.cout, self.resample, self.fuse_act = cin, cout, resample, fuse_act
        d = dilation or 1
        # Registration order of the original: conv1, normalize2, conv2, shortcut, normalize1.
        if resample == "down" and dilation is None:
            self.conv1 = conv3x3(cin, cin)
            self.normalize2 = self._make_norm(norm, cin)
            self.conv2 = ConvMeanPool(cin, cout, 3)
            shortcut = lambda: ConvMeanPool(cin, cout, 1)  # noqa: E731
        else:
            mid = cin if resample == "down" else cout
            self.conv1 = conv3x3(cin, mid, dilation=d)
            self.normalize2 = self._make_norm(norm, mid)
            self.conv2 = conv3x3(mid, cout, dilation=d)
            shortcut = lambda: conv3x3(cin, cout, dilation=d)  # noqa: E731
        self.has_shortcut = cout != cin or resample is not None
        if self.has_shortcut:
            self.shortcut = shortcut()
        self.normalize1 = self._make_norm(norm, cin)

    def forward(self, x: torch.Tensor, y=None) -> torch.Tensor:
        h = self.conv1(self._norm_act(self.normalize1, x, y))
        h = self.conv2(self._norm_act(self.normalize2, h, y))
        return (self.shortcut(x) if self.has_shortcut else x) + h


class RCUBlock(_NormAct):
    """Residual conv units: n_blocks times (n_stages times [norm], ELU, conv) plus the block's input.

    Submodules are named "{block}_{stage}_norm" / "{block}_{stage}_conv" (1-based), as in the original.
    """

    def __init__(self, features: int, n_blocks: int, n_stages: int, norm: NormFactory | None,
                 fuse_act: bool = False):
        super().__init__()
        self.n_blocks, self.n_stages = n_blocks, n_stages
        self.has_norm = norm is not None
        self.fuse_act = fuse_act and self.has_norm
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                if self.has_norm:
                    self.add_module(f"{i}_{j}_norm", self._make_norm(norm, features))
                self.add_module(f"{i}_{j}_conv", conv3x3(features, features, bias=False))

    def forward(self, x: torch.Tensor, y=None) -> torch.Tensor:
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                if self.has_norm:
                    x = self._norm_act(getattr(self, f"{i}_{j}_norm"), x, y)
                else:
                    x = F.elu(x)
                x = getattr(self, f"{i}_{j}_conv")(x)
            x = x + residual
        return x


class BoxAverage5(nn.Module):
    """nn.AvgPool2d(kernel_size=5, stride=1, padding=2): the mean of each 5x5 window, zero padding counted.

    On the CPU as a depthwise convolution with a constant 1/25 kernel: the same sums in another order
    (within float rounding), and about ten times faster than avg_pool2d's CPU kernel there, which made
    the CRP blocks' pooling a seventh of a small MNIST model's training step.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not x.is_floating_point():
            return F.avg_pool2d(x, kernel_size=5, stride=1, padding=2)
        channels = x.shape[1]
        return F.conv2d(x, x.new_full((channels, 1, 5, 5), 1.0 / 25.0), padding=2, groups=channels)


class CRPBlock(nn.Module):
    """Chained residual pooling: ELU, then n_stages times ([norm], 5x5 pool, conv) summed into the input.

    The conditional (NCSN) version average-pools, the NCSNv2 one max-pools; the original names the
    pool `maxpool` in both (it has no parameters, so only behaviour depends on it).
    """

    def __init__(self, features: int, n_stages: int, norm: NormFactory | None, pool: str = "avg"):
        super().__init__()
        self.n_stages = n_stages
        self.has_norm = norm is not None
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_stages))
        if self.has_norm:
            self.norms = nn.ModuleList(norm(features) for _ in range(n_stages))
        if pool == "avg":
            self.maxpool: nn.Module = BoxAverage5()  # zero padding counted, as the original's AvgPool2d
        elif pool == "max":
            self.maxpool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        else:
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")

    def forward(self, x: torch.Tensor, y=None) -> torch.Tensor:
        x = F.elu(x)
        path = x
        for i in range(self.n_stages):
            if self.has_norm:
                path = self.norms[i](path, y)
            path = self.convs[i](self.maxpool(path))
            x = path + x
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: [norm], conv to `features`, bilinear resize to the output size, sum."""

    def __init__(self, in_planes: Sequence[int], features: int, norm: NormFactory | None):
        super().__init__()
        self.features = features
        self.has_norm = norm is not None
        self.convs = nn.ModuleList(conv3x3(c, features, bias=True) for c in in_planes)
        if self.has_norm:
            self.norms = nn.ModuleList(norm(c) for c in in_planes)

    def forward(self, xs: Sequence[torch.Tensor], y, shape) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        total = None
        for i, x in enumerate(xs):
            h = self.norms[i](x, y) if self.has_norm else x
            h = self.convs[i](h)
            # Resizing to the same size with align_corners=True is the identity: skip it (the dilated
            # stages all share one size, so most inputs here need no resize).
            if tuple(h.shape[2:]) != shape:
                h = F.interpolate(h, size=shape, mode="bilinear", align_corners=True)
            total = h if total is None else total + h
        return total


class RefineBlock(nn.Module):
    """RefineNet block: RCU adaptation of each input, fusion (if several), CRP, RCU output."""

    def __init__(self, in_planes: Sequence[int], features: int, norm: NormFactory | None,
                 start: bool = False, end: bool = False, pool: str = "avg", fuse_act: bool = False):
        super().__init__()
        self.n_blocks = len(in_planes)
        # Registration order of the original: adapt_convs, output_convs, msf, crp.
        self.adapt_convs = nn.ModuleList(RCUBlock(c, 2, 2, norm, fuse_act) for c in in_planes)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, norm, fuse_act)
        if not start:
            self.msf = MSFBlock(in_planes, features, norm)
        self.crp = CRPBlock(features, 2, norm, pool)

    def forward(self, xs: Sequence[torch.Tensor], y, output_shape) -> torch.Tensor:
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs, strict=True)]
        h = self.msf(hs, y, output_shape) if self.n_blocks > 1 else hs[0]
        return self.output_convs(self.crp(h, y), y)
