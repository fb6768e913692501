"""Shared test setup: the Triton interpreter on CPU-only machines, devices, backends, poisoning."""
import contextlib
import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported so the kernels run in the interpreter on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastscore import dispatch  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def backend_params(names=dispatch.NAMES):
    """(backend, device) pairs for every backend on every device; unavailable ones skip with the reason."""
    params = []
    for device in DEVICES:
        for name in names:
            reason = dispatch.unavailable_reason(name, device)
            marks = [pytest.mark.skip(reason=f"{name} on {device}: {reason}")] if reason else []
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return params


@contextlib.contextmanager
def poisoned_empty():
    """Make torch.empty (and so every kernel's output allocation) fill floats with NaN."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


def tolerances(dtype):
    """(rtol, atol) for comparing a backend's output in `dtype` with the float64 reference."""
    if dtype in (torch.bfloat16, torch.float16):
        return 2e-2, 2e-2
    return 1e-5, 1e-5
