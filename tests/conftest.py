"""Test setup: the Triton interpreter on CPU-only machines, the markers the GPU run selects by, TF32
off in GPU tests, a per-test log. What the tests share is in helpers.py.

Markers, set at collection (pytest_collection_modifyitems), so that no test can be missed:
    gpu   the test runs only on a CUDA device (a "cuda" parameter, or @requires_cuda)
    ext   the test exercises the compiled extension (an "ext" parameter, or test_ext_*.py)
The GPU run (benchmarks/gpu_run.py) runs `-m "gpu and not ext"` while the extension builds, then
`-m ext`. Inside gpu tests TF32 is off, so float32 comparisons with the reference hold.
"""
import json
import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported so the kernels run in the interpreter on the CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPORT_LOG_ENV = "FASTSCORE_REPORT_LOG"  # a file to append each test's outcome to, as it ends


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
