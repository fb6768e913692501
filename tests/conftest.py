"""Shared test setup: the Triton interpreter on CPU-only machines, devices, backends, poisoning, and
the markers the GPU run selects by.

Markers, set at collection (pytest_collection_modifyitems), so that no test can be missed:
    gpu   the test runs only on a CUDA device (a "cuda" parameter, or @requires_cuda)
    ext   the test exercises the compiled extension (an "ext" parameter, or test_ext_*.py)
The GPU run (benchmarks/gpu_run.py) runs `-m "gpu and not ext"` while the extension builds, then
`-m ext`. Inside gpu tests TF32 is off, so float32 comparisons with the reference hold.
"""
import contextlib
import json
import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported so the kernels run in the interpreter on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastscore.backend import dispatch  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REPORT_LOG_ENV = "FASTSCORE_REPORT_LOG"  # a file to append each test's outcome to, as it ends


def requires_cuda(test):
    """Skip without a CUDA device; marked gpu so the GPU run selects it."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def backend_params(names=dispatch.NAMES, devices=None):
    """(backend, device) pairs for every backend on every device (or on `devices`, which may name a
    device this machine lacks); unavailable ones skip with the reason."""
    params = []
    for device in DEVICES if devices is None else devices:
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


def reference_norm(inputs, has_beta, activation, dy, dtype):
    """(y, grads of x, gamma, alpha[, beta]) of the reference norm on copies of inputs in dtype, as
    float64: in float64 the ground truth; in float32 a measure of the op's conditioning at these
    inputs (where channel means are nearly equal, muhat = (mu - m) / sqrt(v + eps) amplifies the
    rounding of mu, and no float32 code does better than the reference run in float32)."""
    from fastscore.backend import reference

    ref = [t.detach().to(dtype).requires_grad_() for t in inputs]
    y = reference.cond_instance_norm_plus(*ref[:3], ref[3] if has_beta else None, 1e-5, activation)
    grads = torch.autograd.grad(y, ref, dy.to(dtype))
    return y.double(), [g.double() for g in grads]


def tolerances(dtype):
    """(rtol, atol) for comparing a backend's output in `dtype` with the float64 reference."""
    if dtype in (torch.bfloat16, torch.float16):
        return 2e-2, 2e-2
    return 1e-5, 1e-5


def _is_cuda(value) -> bool:
    return value == "cuda" or (isinstance(value, torch.device) and value.type == "cuda")


def pytest_collection_modifyitems(config, items):
    for item in items:
        values = list(item.callspec.params.values()) if hasattr(item, "callspec") else []
        if any(_is_cuda(v) for v in values):
            item.add_marker(pytest.mark.gpu)
        if "ext" in values or item.path.name.startswith("test_ext_"):
            item.add_marker(pytest.mark.ext)


@pytest.fixture(autouse=True)
def _no_tf32_in_gpu_tests(request):
    """cuDNN and cuBLAS may run float32 convolutions and matmuls in TF32 by default, which is 1e-3
    relative: too coarse for comparisons with the reference. Off inside gpu tests only (benchmarks
    keep PyTorch's defaults)."""
    if request.node.get_closest_marker("gpu") is None or not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pytest_runtest_logreport(report):
    """With FASTSCORE_REPORT_LOG set, append each outcome as it happens (a run killed at its time limit
    still says what passed and why things failed; under xdist this runs in the controller)."""
    path = os.environ.get(REPORT_LOG_ENV)
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if not (report.when == "call" or report.failed or report.skipped):
        return
    entry = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
             "duration": round(report.duration, 3)}
    if report.failed:
        entry["message"] = report.longreprtext[-1500:]
    elif report.skipped and isinstance(report.longrepr, tuple):
        entry["message"] = str(report.longrepr[2])[:300]
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
