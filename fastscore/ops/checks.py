"""Input checks at the public boundary: every message names the argument and what was expected."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch

from ..noise import MAX_SEED, check_seed_offset

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def reads_on_host(t: torch.Tensor) -> bool:
    """Whether a check may read t's values on the host: CPU tensors, except while torch.compile traces."""
    return t.is_cpu and not torch.compiler.is_compiling()


def value_check(t: torch.Tensor, holds: Callable[[torch.Tensor], torch.Tensor], message: str,
                detail: Callable[[torch.Tensor], str] | None = None) -> None:
    """Check that holds(t), a bool tensor on t's device, is true, without reading t back from a device.

    On the CPU the value is read (no device is synchronised) and a failure raises ValueError(message,
    plus detail(t) when given). On any other device the check is a device-side assert
    (torch._assert_async): no host synchronisation, so it can be captured in a CUDA graph and traced
    by torch.compile, and a failure surfaces with the message at the next synchronisation. While
    torch.compile traces, CPU checks become that assert too (a data-dependent branch would break the
    graph). On the meta device there are no values: nothing is checked.
    """
    if t.device.type == "meta":
        return
    if reads_on_host(t):
        if not bool(holds(t)):
            raise ValueError(message + (f", got {detail(t)}" if detail is not None else ""))
        return
    torch._assert_async(holds(t), message)


_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)


def tensor(name: str, t: object, *, dim: int | None = None, min_dim: int = 1) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPE_SET:
        raise TypeError(f"{name} must be float32, float64, bfloat16 or float16, got {t.dtype}")
    ndim = t.dim()
    if dim is not None and ndim != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if ndim < min_dim:
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
    shape, n, c = p.shape, x.shape[0], x.shape[1]
    if shape != (n, c) and shape != (c,):
        raise ValueError(f"{name} must have shape (N, C) = ({n}, {c}) or (C,) = ({c},), got {tuple(p.shape)}")
    same_device(name, p, "x", x)


def norm_args(x: object, gamma: object, alpha: object, beta: object, eps: object) -> None:
    """cond_instance_norm_plus's arguments, as tensor / per_channel / finite_number check them.

    The common valid call is recognised from a few attribute reads (a norm runs about 70 times per
    network forward, on tensors whose kernels may take microseconds); anything else goes through the
    detailed checks, which raise the error naming the argument."""
    if (isinstance(x, torch.Tensor) and x.dtype in _FLOAT_DTYPE_SET and x.dim() == 4 and x.numel()
            and type(eps) is float and 0.0 < eps < math.inf):
        shape = x.shape
        per_sample, shared, device = (shape[0], shape[1]), (shape[1],), x.device
        for p in (gamma, alpha) if beta is None else (gamma, alpha, beta):
            if not (isinstance(p, torch.Tensor) and p.dtype in _FLOAT_DTYPE_SET
                    and (p.shape == per_sample or p.shape == shared) and p.device == device):
                break
        else:
            return
    x = tensor("x", x, dim=4)
    per_channel("gamma", gamma, x)
    per_channel("alpha", alpha, x)
    per_channel("beta", beta, x, optional=True)
    finite_number("eps", eps, positive=True)


_LABEL_DTYPES = (torch.int64, torch.int32)


def lookup_args(x: object, labels: object, table: object, eps: object) -> None:
    """cond_instance_norm_plus_lookup's arguments: x as for the norm, labels (N,) int64 or int32 and table
    (L, 3C) or (L, 2C) on x's device. The labels' values are the backends' to check (reading them here
    would synchronise a GPU). The common valid call is recognised from a few attribute reads."""
    if (isinstance(x, torch.Tensor) and x.dtype in _FLOAT_DTYPE_SET and x.dim() == 4 and x.numel()
            and type(eps) is float and 0.0 < eps < math.inf
            and isinstance(labels, torch.Tensor) and labels.dtype in _LABEL_DTYPES and labels.dim() == 1
            and isinstance(table, torch.Tensor) and table.dtype in _FLOAT_DTYPE_SET and table.dim() == 2):
        n, c = x.shape[0], x.shape[1]
        if (labels.shape[0] == n and table.shape[0] and (table.shape[1] == 3 * c or table.shape[1] == 2 * c)
                and labels.device == x.device and table.device == x.device):
            return
    x = tensor("x", x, dim=4)
    n, c = x.shape[0], x.shape[1]
    if not isinstance(labels, torch.Tensor) or labels.dtype not in _LABEL_DTYPES:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"labels (the noise levels) must be an integer tensor, int64 or int32, got {got}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape (N,) = ({n},) to match x, got {tuple(labels.shape)}")
    same_device("labels", labels, "x", x)
    table = tensor("table", table, dim=2)
    if table.shape[1] not in (3 * c, 2 * c):
        raise ValueError(f"table must have shape (L, 3C) = (L, {3 * c}) for (gamma | alpha | beta) rows or "
                         f"(L, 2C) = (L, {2 * c}) for (gamma | alpha) rows, got {tuple(table.shape)}")
    same_device("table", table, "x", x)
    finite_number("eps", eps, positive=True)


def langevin_args(x: object, score: object, step_size: object, noise_scale: object) -> None:
    """langevin_step_'s x, score, step_size and noise_scale (None: sqrt(2 step_size)); the common valid
    call (float numbers) is recognised from a few attribute reads, as in norm_args."""
    if (isinstance(x, torch.Tensor) and isinstance(score, torch.Tensor) and x.dtype in _FLOAT_DTYPE_SET
            and score.dtype in _FLOAT_DTYPE_SET and x.numel() and x.dim() and score.shape == x.shape
            and score.device == x.device and type(step_size) is float and 0.0 <= step_size < math.inf
            and (noise_scale is None or (type(noise_scale) is float and 0.0 <= noise_scale < math.inf))):
        return
    x = tensor("x", x)
    score = tensor("score", score)
    if score.shape != x.shape:
        raise ValueError(f"score must have x's shape {tuple(x.shape)}, got {tuple(score.shape)}")
    same_device("score", score, "x", x)
    finite_number("step_size", step_size, non_negative=True)
    if noise_scale is not None:
        finite_number("noise_scale", noise_scale, non_negative=True)
    if isinstance(step_size, torch.Tensor):
        same_device("step_size", step_size, "x", x)
    if isinstance(noise_scale, torch.Tensor):
        same_device("noise_scale", noise_scale, "x", x)


def _item(t: torch.Tensor) -> str:
    return str(t.item())


def finite_number(name: str, value: object, *, positive: bool = False, non_negative: bool = False) -> None:
    """A Python number, or a one-element float tensor whose value is checked by value_check."""
    if (type(value) is float and math.isfinite(value) and not (positive and value <= 0)
            and not (non_negative and value < 0)):  # the common valid call, before any type tests
        return
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():  # an integer or bool tensor's bits would be read as a float
            raise TypeError(f"{name} given as a tensor must be float32, float64, bfloat16 or float16, "
                            f"got {value.dtype}")
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
        value_check(value, lambda t: torch.isfinite(t).all(), f"{name} must be finite", _item)
        if positive:
            value_check(value, lambda t: (t > 0).all(), f"{name} must be > 0", _item)
        if non_negative:
            value_check(value, lambda t: (t >= 0).all(), f"{name} must be >= 0", _item)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


_HOST_LIST_MAX = 4096  # sigma up to this many values is checked on the host as a list


def sigma(s: object, x: torch.Tensor, x_name: str) -> None:
    """sigma: (N,) positive finite noise levels on x's device."""
    if not (isinstance(s, torch.Tensor) and s.dtype in _FLOAT_DTYPE_SET and s.dim() == 1
            and s.shape[0] == x.shape[0] and s.device == x.device):  # else the detailed checks say why
        s = tensor("sigma", s, dim=1)
        if s.shape[0] != x.shape[0]:
            raise ValueError(f"sigma must have shape (N,) = ({x.shape[0]},) to match {x_name}, "
                             f"got {tuple(s.shape)}")
        same_device("sigma", s, x_name, x)
    sigma_values(s)


def sigma_values(s: torch.Tensor) -> None:
    """sigma's values finite and > 0: read on the CPU, a device-side assert elsewhere."""
    if reads_on_host(s):
        if s.numel() <= _HOST_LIST_MAX:
            # Read as Python floats: one copy instead of several tensor ops. min() can step over a NaN,
            # the sum cannot; a sum that overflows only sends a valid sigma through the checks below.
            values = s.tolist()
            if min(values) > 0 and math.isfinite(sum(values)):
                return
        value_check(s, lambda t: torch.isfinite(t).all(), "sigma must be finite", lambda t: "non-finite values")
        value_check(s, lambda t: (t > 0).all(), "sigma must be > 0", lambda t: f"min {t.min().item()}")
    else:  # one device-side assert rather than two
        value_check(s, lambda t: (torch.isfinite(t) & (t > 0)).all(), "sigma must be finite and > 0")


def noise_args(x_name: str, x: object, s: object, seed: object, offset: object
               ) -> tuple[int, int, torch.Tensor | None, torch.Tensor | None]:
    """perturb's and dsm_loss's data x, sigma and stream position, as tensor, sigma and stream_positions
    check them; returns stream_positions' tuple. Valid tensors are recognised from a few attribute reads,
    as in norm_args; anything else gets the detailed checks."""
    if (isinstance(x, torch.Tensor) and isinstance(s, torch.Tensor) and x.dtype in _FLOAT_DTYPE_SET
            and s.dtype in _FLOAT_DTYPE_SET and s.dim() == 1 and x.dim() and x.numel()
            and s.shape[0] == x.shape[0] and s.device == x.device):
        sigma_values(s)
        if valid_int_position(seed, offset, x.numel()):
            return cast(int, seed), cast(int, offset), None, None
        return stream_positions(seed, offset, x)
    x = tensor(x_name, x)
    sigma(s, x, x_name)
    return stream_positions(seed, offset, x)


def choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def stream_position(name: str, value: torch.Tensor, x: torch.Tensor) -> None:
    """A seed or offset given as a one-element int64 tensor on x's device (so a captured CUDA graph can
    advance it between replays)."""
    if value.dtype != torch.int64 or value.numel() != 1:
        raise TypeError(f"{name} given as a tensor must be one int64 element, got {value.dtype} of shape "
                        f"{tuple(value.shape)}")
    same_device(name, value, "x", x)


def valid_int_position(seed: object, offset: object, numel: int) -> bool:
    """Whether seed and offset are ints within check_seed_offset's bounds for numel draws: the common
    call's test, without a raise; anything else goes to check_seed_offset, which names what is wrong."""
    return (type(seed) is int and type(offset) is int and 0 <= seed <= MAX_SEED and 0 <= offset
            and offset + numel <= MAX_SEED + 1)


def stream_positions(seed: object, offset: object, x: torch.Tensor
                     ) -> tuple[int, int, torch.Tensor | None, torch.Tensor | None]:
    """(seed, offset, seed_t, offset_t) of a noise-stream position for the numel elements of x.

    seed and offset are ints, or one-element int64 tensors on x's device, whose values are checked by
    value_check (on a GPU a device-side assert, never a read-back). A tensor comes back as seed_t or
    offset_t with 0 in place of its int; an int comes back as itself with None for the tensor.
    """
    numel = x.numel()
    if valid_int_position(seed, offset, numel):  # the common case: nothing else to check
        return cast(int, seed), cast(int, offset), None, None
    seed_t = seed if isinstance(seed, torch.Tensor) else None
    offset_t = offset if isinstance(offset, torch.Tensor) else None
    check_seed_offset(0 if seed_t is not None else seed, 0 if offset_t is not None else offset,
                      0 if offset_t is not None else numel)
    if seed_t is not None:
        stream_position("seed", seed_t, x)
        value_check(seed_t, lambda t: (t >= 0).all(), "seed must be in [0, 2^63)", _item)
    if offset_t is not None:
        stream_position("offset", offset_t, x)
        value_check(offset_t, lambda t: ((t >= 0) & (t <= MAX_SEED + 1 - numel)).all(),
                    "offset must be in [0, 2^63 - numel)", lambda t: f"{t.item()} for {numel} draws")
    # check_seed_offset has made sure that what is not a tensor is an int
    return (0 if seed_t is not None else cast(int, seed), 0 if offset_t is not None else cast(int, offset),
            seed_t, offset_t)
