"""`pytest --benchmark`: every op case (op_cases.py) timed by pytest-benchmark, one test per
implementation, and a side-by-side table at the end (benchmarks/conftest.py).

Rows per case: ncsn's eager code with torch.randn_like noise (the baseline), torch.compile of it, each
fused fastscore backend that runs here (not Triton on a CPU: its interpreter is no speed), and
fastscore's torch backend, labelled as the correctness oracle it is. Sizes: op_cases.SIZES["cpu"] on a
CPU, ["gpu"] on CUDA. On a GPU, benchmarks/gpu_ops.py measures more (device time by CUDA events, host
time, graph replay, share of the copy rate).

    pytest --benchmark                     # from the repository root
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICE, implementations
from op_cases import cases

CASES = cases(DEVICE, "gpu" if DEVICE == "cuda" else "cpu")
ROUNDS = 20 if DEVICE == "cuda" else 10


@pytest.mark.parametrize("impl", implementations())
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op(run, case, impl):
    fn = case.make(impl)
    grad_mode = torch.enable_grad() if "backward" in case.name else torch.no_grad()
    with grad_mode:
        run(case.name, impl, fn, ROUNDS, case.bytes_moved)
