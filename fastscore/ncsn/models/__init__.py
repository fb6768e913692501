"""NCSN score networks (see refinenet.py) and helpers to build them from configs and load ncsn weights."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..architectures import NAMES
from . import refinenet
from .refinenet import CondRefineNetDeeperDilated, CondRefineNetDilated, NCSNv2, NCSNv2Deeper

__all__ = ["CondRefineNetDilated", "CondRefineNetDeeperDilated", "NCSNv2", "NCSNv2Deeper", "ARCHITECTURES",
           "build_model", "ncsn_state_dict", "load_ncsn_state_dict"]

ARCHITECTURES: dict[str, type[nn.Module]] = {name: getattr(refinenet, name) for name in NAMES}


def build_model(config: Any, arch: str | None = None, **kwargs) -> nn.Module:
    """The network named by `arch` (default: config.model.arch, else CondRefineNetDilated) for `config`.

    Keyword arguments go to the constructor (they override the config), e.g. fuse_norm_act=True.
    """
    if arch is None:
        model_section = config.get("model") if isinstance(config, Mapping) else getattr(config, "model", None)
        if isinstance(model_section, Mapping):
            arch = model_section.get("arch")
        else:
            arch = getattr(model_section, "arch", None)
    arch = arch or "CondRefineNetDilated"
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](config, **kwargs)


def ncsn_state_dict(checkpoint: Any) -> OrderedDict[str, torch.Tensor]:
    """The model state_dict inside an ermongroup/ncsn checkpoint, with DataParallel's "module." removed.

    checkpoint: what torch.load returns for ncsn's checkpoint.pth ([model state, optimizer state]),
    a bare state_dict, or a path to either.
    """
    if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__"):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, (list, tuple)):
        if not checkpoint:
            raise ValueError("empty checkpoint list")
        checkpoint = checkpoint[0]
    if not isinstance(checkpoint, Mapping):
        raise TypeError("expected a state_dict or ncsn's [state_dict, optimizer_state], "
                        f"got {type(checkpoint).__name__}")
    prefix = "module."
    strip = all(k.startswith(prefix) for k in checkpoint)
    return OrderedDict((k[len(prefix):] if strip else k, v) for k, v in checkpoint.items())


def load_ncsn_state_dict(model: nn.Module, checkpoint: Any, strict: bool = True):
    """Load an ncsn checkpoint (see ncsn_state_dict) into `model`; returns load_state_dict's result."""
    return model.load_state_dict(ncsn_state_dict(checkpoint), strict=strict)
