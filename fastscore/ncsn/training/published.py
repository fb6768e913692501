"""Checkpoints as the authors publish them: ermongroup/ncsn's and ermongroup/ncsnv2's checkpoint files.

ncsn saves [model state_dict, optimizer state_dict]; ncsnv2 saves [model, optimizer, epoch, step] and,
when it keeps an EMA, the EMA helper's shadow (a dict of parameter name -> averaged tensor) as a fifth
item. Both were trained under DataParallel, so every name starts with "module.". Neither file holds its
config: the user names the one the run was trained with.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..models import ncsn_state_dict
from .checkpoint import CheckpointError


@dataclass
class Published:
    kind: str                               # "ncsn" or "ncsnv2"
    model: dict[str, torch.Tensor]          # the state_dict, "module." removed
    ema: dict[str, torch.Tensor] | None     # ncsnv2's averaged parameters, "module." removed
    step: int | None                        # ncsnv2's training step


def is_published(obj: Any) -> bool:
    """Whether a loaded file is an ncsn / ncsnv2 states list (a fastscore checkpoint is a dict)."""
    return isinstance(obj, (list, tuple)) and len(obj) >= 2 and isinstance(obj[0], Mapping)


def read_published(states: list | tuple, path: str) -> Published:
    """The parts of a states list (see is_published) that sampling needs."""
    if not is_published(states):
        raise CheckpointError(f"{path} is neither a fastscore checkpoint nor an ncsn/ncsnv2 states list")
    model = dict(ncsn_state_dict(states[0]))
    ema = None
    if len(states) >= 5 and isinstance(states[4], Mapping):
        ema = dict(ncsn_state_dict(states[4]))
    step = states[3] if len(states) >= 4 and isinstance(states[3], int) else None
    return Published("ncsnv2" if len(states) >= 4 else "ncsn", model, ema, step)
