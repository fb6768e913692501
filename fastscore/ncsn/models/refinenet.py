"""NCSN score networks: the dilated RefineNets of ermongroup/ncsn and the NCSNv2 variant.

    CondRefineNetDilated        ncsn's network (28 px MNIST at ngf 64, 32 px CIFAR-10/CelebA at ngf 128):
                                4 residual stages (only the 2nd halves the size; the 3rd and 4th use
                                dilation 2 and 4), 4 RefineNet blocks, CondInstanceNorm2dPlus throughout
    CondRefineNetDeeperDilated  ncsn's 64 px network: 5 stages (2nd and 3rd downsample), 5 refine
                                blocks, with ncsn's CondInstanceNorm2d (no ++) as in its code
    NCSNv2, NCSNv2Deeper        NCSNv2-style unconditional networks: InstanceNorm2dPlus in the residual
                                blocks, no norms in the refine blocks (max-pooling CRP), the output
                                divided by sigma[y]

Module names and parameter shapes are those of the originals, so `load_state_dict(strict=True)` takes
their checkpoints (see fastscore.models.load_ncsn_state_dict for ncsn's DataParallel checkpoint
files). Every network is called as `model(x, y)`: x (N, C, H, W) images in [0, 1] (unless
logit_transform or rescaled), y (N,) integer noise-level labels, 0 for the largest sigma.

A constructor takes an ncsn-style config (config.data.channels / image_size / logit_transform,
config.model.ngf / num_classes; a fastscore Config, ncsn's parsed anneal.yml namespace or a nested
dict) and/or keyword arguments, which override the config.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import CondInstanceNorm2d, CondInstanceNorm2dPlus, InstanceNorm2dPlus
from ...schedule import noise_levels
from ..architectures import DOWNSAMPLING
from .layers import RefineBlock, ResidualBlock

__all__ = ["CondRefineNetDilated", "CondRefineNetDeeperDilated", "NCSNv2", "NCSNv2Deeper"]

# Per residual stage: (input width, output width, first block downsamples, dilation), widths in ngf.
_STAGES_4 = ((1, 1, False, None), (1, 2, True, None), (2, 2, True, 2), (2, 2, True, 4))
_STAGES_5 = ((1, 1, False, None), (1, 2, True, None), (2, 2, True, None), (2, 4, True, 2), (4, 4, True, 4))
# Per (section, key): the hyperparameter's keyword name. Sections/keys are those of ncsn's anneal.yml.
_COND_NORMS = {"instance++": CondInstanceNorm2dPlus, "instance": CondInstanceNorm2d}
_FROM_CONFIG = {
    "channels": ("data", "channels"),
    "image_size": ("data", "image_size"),
    "logit_transform": ("data", "logit_transform"),
    "rescaled": ("data", "rescaled"),
    "ngf": ("model", "ngf"),
    "num_classes": ("model", "num_classes"),
    "sigma_begin": ("model", "sigma_begin"),
    "sigma_end": ("model", "sigma_end"),
}


def _lookup(config: Any, section: str, key: str) -> Any:
    """config.section.key for attribute-style configs or nested mappings; None when absent."""
    node = config.get(section) if isinstance(config, Mapping) else getattr(config, section, None)
    if node is None:
        return None
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


def _hparams(config: Any, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments first, then the config, then the defaults."""
    out = {}
    for name, default in defaults.items():
        value = given.get(name)
        if value is None and config is not None and name in _FROM_CONFIG:
            value = _lookup(config, *_FROM_CONFIG[name])
        out[name] = default if value is None else value
    for name in ("channels", "image_size", "ngf", "num_classes"):
        if name in out and (isinstance(out[name], bool) or not isinstance(out[name], int) or out[name] < 1):
            raise ValueError(f"{name} must be a positive integer, got {out[name]!r}")
    return out


class _RefineNet(nn.Module):
    """The shared skeleton: begin_conv, residual stages res1..resL, refine1..refineL, norm, ELU, end_conv."""

    #: how many times the network halves the image size (H and W must be multiples of 2**this)
    downsampling: int = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.downsampling = DOWNSAMPLING[cls.__name__]

    def _build(self, channels: int, ngf: int, stages, norm, refine_norm, pool: str, fuse_act: bool) -> None:
        # Registration order as in the originals: begin_conv, normalizer, end_conv, res*, refine*.
        self.begin_conv = nn.Conv2d(channels, ngf, 3, stride=1, padding=1)
        self.normalizer = norm(ngf, activation="elu" if fuse_act else None)
        self.end_conv = nn.Conv2d(ngf, channels, 3, stride=1, padding=1)
        widths = []
        for k, (cin, cout, down, dilation) in enumerate(stages, start=1):
            first = ResidualBlock(cin * ngf, cout * ngf, norm, "down" if down else None, dilation, fuse_act)
            second = ResidualBlock(cout * ngf, cout * ngf, norm, None, dilation, fuse_act)
            setattr(self, f"res{k}", nn.ModuleList([first, second]))
            widths.append(cout * ngf)
        # refine1 takes the deepest stage; refine k fuses stage L-k+1 with refine k-1 and has the width
        # of the next shallower stage (the last one ngf).
        n = len(stages)
        previous = None
        for k in range(1, n + 1):
            skip = widths[n - k]
            features = widths[n - k - 1] if k < n else ngf
            in_planes = [skip] if previous is None else [skip, previous]
            block = RefineBlock(in_planes, features, refine_norm, start=k == 1, end=k == n, pool=pool,
                                fuse_act=fuse_act)
            setattr(self, f"refine{k}", block)
            previous = features
        self.n_stages = n
        self.fuse_act = fuse_act

    def _check_input(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a 4-D (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1] != self.begin_conv.in_channels:
            raise ValueError(f"x must have {self.begin_conv.in_channels} channels, got shape {tuple(x.shape)}")
        factor = 2 ** self.downsampling
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"{type(self).__name__} needs H and W to be multiples of {factor}, got {tuple(x.shape)}")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be a (N,) = ({x.shape[0]},) tensor of noise-level labels, "
                             f"got {getattr(y, 'shape', type(y).__name__)}")

    def _trunk(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.begin_conv(h)
        layers = []
        for k in range(1, self.n_stages + 1):
            for block in getattr(self, f"res{k}"):
                h = block(h, y)
            layers.append(h)
        out = None
        for k in range(1, self.n_stages + 1):
            skip = layers[self.n_stages - k]
            out = getattr(self, f"refine{k}")([skip] if out is None else [skip, out], y, skip.shape[2:])
        out = self.normalizer(out, y)
        if not self.fuse_act:
            out = F.elu(out)
        return self.end_conv(out)


class CondRefineNetDilated(_RefineNet):
    """ncsn's noise-conditional score network s(x, y) (y indexes the noise level). See the module doc.

    norm: "instance++" (CondInstanceNorm2dPlus, ncsn's choice here) or "instance" (CondInstanceNorm2d).
    fuse_norm_act: fold the ELU after each norm into the norm kernel (same values, fewer passes).
    """

    stages = _STAGES_4  # ncsn asks res4 for adjust_padding at 28 px; dilated blocks ignore it: one layout
    default_norm = "instance++"
    _defaults = dict(channels=1, image_size=28, ngf=64, num_classes=10, logit_transform=False)

    def __init__(self, config: Any = None, *, channels: int | None = None, image_size: int | None = None,
                 ngf: int | None = None, num_classes: int | None = None, logit_transform: bool | None = None,
                 norm: str | None = None, fuse_norm_act: bool = False):
        super().__init__()
        hp = _hparams(config, dict(channels=channels, image_size=image_size, ngf=ngf, num_classes=num_classes,
                                   logit_transform=logit_transform), self._defaults)
        norm = self.default_norm if norm is None else norm
        if norm not in _COND_NORMS:
            raise ValueError(f"norm must be one of {', '.join(map(repr, _COND_NORMS))}, got {norm!r}")
        hp["norm"] = norm
        self.hparams = hp
        self.logit_transform = bool(hp["logit_transform"])
        self.ngf, self.num_classes = hp["ngf"], hp["num_classes"]
        factory = functools.partial(_COND_NORMS[norm], num_classes=hp["num_classes"], bias=True)
        self._build(hp["channels"], hp["ngf"], self.stages, factory, factory, "avg", fuse_norm_act)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check_input(x, y)
        h = x if self.logit_transform else 2 * x - 1.0
        return self._trunk(h, y)


class CondRefineNetDeeperDilated(CondRefineNetDilated):
    """ncsn's 64 px network (5 stages); its code uses CondInstanceNorm2d (norm="instance") here."""

    stages = _STAGES_5
    default_norm = "instance"
    _defaults = dict(channels=3, image_size=64, ngf=128, num_classes=10, logit_transform=False)


class NCSNv2(_RefineNet):
    """NCSNv2-style unconditional score network: s(x, y) = net(x) / sigma[y].

    sigmas: the noise levels (largest first), stored as the buffer `sigmas`; by default the geometric
    sequence from sigma_begin to sigma_end with num_classes levels.
    """

    stages = _STAGES_4
    _defaults = dict(channels=3, image_size=32, ngf=128, num_classes=232, logit_transform=False, rescaled=False,
                     sigma_begin=50.0, sigma_end=0.01)

    def __init__(self, config: Any = None, *, channels: int | None = None, image_size: int | None = None,
                 ngf: int | None = None, num_classes: int | None = None, logit_transform: bool | None = None,
                 rescaled: bool | None = None, sigma_begin: float | None = None, sigma_end: float | None = None,
                 sigmas: torch.Tensor | None = None, fuse_norm_act: bool = False):
        super().__init__()
        if sigmas is not None:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
            num_classes = num_classes if num_classes is not None else sigmas.numel()
        hp = _hparams(config, dict(channels=channels, image_size=image_size, ngf=ngf, num_classes=num_classes,
                                   logit_transform=logit_transform, rescaled=rescaled, sigma_begin=sigma_begin,
                                   sigma_end=sigma_end), self._defaults)
        if sigmas is None:
            schedule = _lookup(config, "training", "noise_schedule") if config is not None else None
            sigmas = noise_levels(hp["sigma_begin"], hp["sigma_end"], hp["num_classes"], schedule or "geometric")
        if sigmas.numel() != hp["num_classes"]:
            raise ValueError(f"sigmas has {sigmas.numel()} levels but num_classes is {hp['num_classes']}")
        self.hparams = hp
        self.logit_transform, self.rescaled = bool(hp["logit_transform"]), bool(hp["rescaled"])
        self.ngf, self.num_classes = hp["ngf"], hp["num_classes"]
        self.register_buffer("sigmas", sigmas)
        self._build(hp["channels"], hp["ngf"], self.stages, InstanceNorm2dPlus, None, "max", fuse_norm_act)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check_input(x, y)
        h = x if (self.logit_transform or self.rescaled) else 2 * x - 1.0
        out = self._trunk(h, y)
        return out / self.sigmas[y].to(out.dtype).view(-1, 1, 1, 1)


class NCSNv2Deeper(NCSNv2):
    """NCSNv2's 64 px variant (5 stages)."""

    stages = _STAGES_5
    _defaults = dict(NCSNv2._defaults, image_size=64)
