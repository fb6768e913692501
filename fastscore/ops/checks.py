"""Input checks at the public boundary: every message names the argument and what was expected."""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def can_read_values() -> bool:
    """Whether checks may read tensor values: not while torch.compile traces (a data-dependent branch
    would break the graph) nor while a CUDA graph is captured (a device-to-host copy is illegal)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def tensor(name: str, t: object, *, dim: int | None = None, min_dim: int = 1) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, bfloat16 or float16, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must share a device")


def per_channel(name: str, p: object, x: torch.Tensor, optional: bool = False) -> None:
    """gamma/alpha/beta: (N, C) or (C,) on x's device."""
    if p is None and optional:
        return
    p = tensor(name, p)
    n, c = x.shape[0], x.shape[1]
    if tuple(p.shape) not in ((n, c), (c,)):
        raise ValueError(f"{name} must have shape (N, C) = ({n}, {c}) or (C,) = ({c},), got {tuple(p.shape)}")
    same_device(name, p, "x", x)


def finite_number(name: str, value: object, *, positive: bool = False, non_negative: bool = False) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        if not can_read_values():
            return
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def sigma(s: object, x: torch.Tensor, x_name: str) -> None:
    """sigma: (N,) positive finite noise levels on x's device."""
    s = tensor("sigma", s, dim=1)
    if s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must have shape (N,) = ({x.shape[0]},) to match {x_name}, got {tuple(s.shape)}")
    same_device("sigma", s, x_name, x)
    if not can_read_values():
        return
    if not bool(torch.isfinite(s).all()):
        raise ValueError("sigma must be finite, got non-finite values")
    if not bool((s > 0).all()):
        raise ValueError(f"sigma must be > 0, got min {s.min().item()}")


def choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def stream_position(name: str, value: torch.Tensor, x: torch.Tensor) -> None:
    """A seed or offset given as a one-element int64 tensor on x's device (so a captured CUDA graph can
    advance it between replays). Its value is not read here: that would synchronise the device."""
    if value.dtype != torch.int64 or value.numel() != 1:
        raise TypeError(f"{name} given as a tensor must be one int64 element, got {value.dtype} of shape "
                        f"{tuple(value.shape)}")
    same_device(name, value, "x", x)
