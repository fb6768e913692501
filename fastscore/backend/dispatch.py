"""Which backend runs an op on a given device, and why the others cannot.

A backend is a module implementing the primitives of protocol.py (plus unavailable_reason):

    torch   fastscore.backend.reference   plain PyTorch, the correctness oracle; always available
    triton  fastscore.kernels              Triton kernels (CUDA, or the CPU interpreter with TRITON_INTERPRET=1)
    ext     fastscore.backend.ext         the compiled fastscore._C (C++ CPU kernels, CUDA kernels if built)

`auto` takes ext if it is built for the device, else triton on CUDA, else torch. An explicit backend
that cannot run raises BackendUnavailable with the reason; nothing silently falls back.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType
from typing import Any, cast

import torch

from .protocol import Backend

NAMES = ("torch", "triton", "ext")
_MODULES = {"torch": "fastscore.backend.reference", "triton": "fastscore.kernels", "ext": "fastscore.backend.ext"}
ENV_VAR = "FASTSCORE_BACKEND"


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run on the requested device."""


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(_MODULES[name]), None
    except ImportError as exc:  # e.g. triton not installed
        return None, f"cannot import {_MODULES[name]}: {exc}"


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """None if backend `name` can run ops on `device`, else a sentence saying why not."""
    module, reason = _load(name)
    if module is None:
        return reason
    return cast(Backend, module).unavailable_reason(torch.device(device))




def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument, else $FASTSCORE_BACKEND, else auto."""
    name = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    if name != "auto" and name not in NAMES:
        source = "backend" if backend is not None else ENV_VAR
        raise ValueError(f"{source} must be one of 'auto', {', '.join(map(repr, NAMES))}; got {name!r}")
    return name


def resolve_name(backend: str | None, device: torch.device | str) -> str:
    device = torch.device(device)
    name = requested_backend(backend)
    if name == "auto":
        order = ("ext", "triton", "torch") if device.type == "cuda" else ("ext", "torch")
        return next(n for n in order if unavailable_reason(n, device) is None)
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} is not available on {device.type}: {reason}")
    return name


@functools.cache
def _resolved_name(requested: str, device_type: str) -> str:
    return resolve_name(requested, device_type)


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]  # unannotated in torch; returns fn itself
def _resolved_name_constant(requested: str, device_type: str) -> str:
    # Availability does not change within a process: under torch.compile the choice is made once at
    # trace time and baked in, instead of tracing the imports and probes behind it (a graph break).
    return _resolved_name(requested, device_type)


# (requested name, device) -> backend name, for eager calls: one dict lookup per call. Only successful
# resolutions are kept (a bad name or an unavailable backend raises every time).
_RESOLVED: dict[tuple[str, torch.device | str], str] = {}


def _env_backend() -> str:
    """$FASTSCORE_BACKEND or auto, read on every call (it may change). os.environ.get takes about a
    microsecond, a fifth of an op's Python overhead, so the encoded key is looked up in the mapping
    os.environ reads and writes (CPython's os._Environ._data), where there is one."""
    if _ENVIRON_DATA is None:
        return os.environ.get(ENV_VAR, "auto")
    raw = _ENVIRON_DATA.get(_ENV_KEY)
    return "auto" if raw is None else os.environ.decodevalue(raw)


_ENV_KEY = os.environ.encodekey(ENV_VAR)
_ENVIRON_DATA: dict[Any, Any] | None = getattr(os.environ, "_data", None)


def resolved(backend: str | None, device: torch.device | str) -> str:
    """The name of the backend that runs an op for tensors on `device` (constant under torch.compile)."""
    if torch.compiler.is_compiling():
        traced: str = _resolved_name_constant(requested_backend(backend), torch.device(device).type)
        return traced
    key = (_env_backend() if backend is None else backend, device)
    name = _RESOLVED.get(key)
    if name is None:
        name = _resolved_name(requested_backend(backend), torch.device(device).type)
        _RESOLVED[key] = name
    return name


def forget() -> None:
    """Drop every remembered resolution (for tests that change what a backend reports)."""
    _RESOLVED.clear()
    _resolved_name.cache_clear()


def module(name: str) -> Backend:
    """The module of an available backend."""
    return cast(Backend, sys.modules[_MODULES[name]])  # imported by the availability probe


def resolve(backend: str | None, device: torch.device | str) -> Backend:
    """The backend module that runs an op for tensors on `device`."""
    return module(resolved(backend, device))


def backends() -> list[dict[str, str | bool]]:
    """One row per (backend, device type): whether it works and, if not, why."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[dict[str, str | bool]] = []
    for device in devices:
        auto = resolve_name("auto", device)
        for name in NAMES:
            reason = unavailable_reason(name, device)
            rows.append(
                {"backend": name, "device": device, "available": reason is None,
                 "auto": name == auto, "reason": reason or ""}
            )
    return rows
