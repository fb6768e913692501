"""Exponential moving average of the weights (ncsn's EMAHelper)."""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch


@torch.no_grad()
def load_averaged(model: torch.nn.Module, shadow: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Copy the averaged weights into model's matching parameters (in place); returns model."""
    for k, p in model.named_parameters():
        if k in shadow:
            p.copy_(shadow[k])
    return model


class EMA:
    """Exponential moving average of the parameters (ncsn's EMAHelper): shadow = mu*shadow + (1-mu)*p."""

    def __init__(self, model: torch.nn.Module, rate: float):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"EMA rate must be in (0, 1), got {rate}")
        self.rate = rate
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        pairs = [(self.shadow[k], p) for k, p in model.named_parameters() if k in self.shadow]
        # one call for all tensors (a loop of lerp_ calls costs about 2 us of host time per tensor)
        torch._foreach_lerp_([s for s, _ in pairs], [p.detach() for _, p in pairs], 1.0 - self.rate)

    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        return load_averaged(model, self.shadow)

    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of model holding the averaged weights (buffers as the live model's)."""
        return self.copy_to(copy.deepcopy(model))

    def state_dict(self) -> dict:
        return {"rate": self.rate, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.rate = state["rate"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
