"""`pytest --benchmark`: per-call host time of the public ops (host_cases.py), one thread, tiny CPU
tensors, beside F.instance_norm, ncsn's ConditionalInstanceNorm2dPlus module and ncsn's eager code.

A table of medians in microseconds prints at the end (benchmarks/conftest.py). For a comparison on a
loaded machine, host_calls.py times the same cases interleaved in one process.

    pytest --benchmark benchmarks/test_bench_host.py
"""
from __future__ import annotations

import pytest
import torch
from host_cases import cases

from conftest import HOST_RESULTS

torch.set_num_threads(1)
CASES = cases()
ROUNDS, ITERATIONS = 200, 20


@pytest.mark.parametrize("case", CASES, ids=[f"{group} | {impl}" for group, impl, _ in CASES])
def test_host(benchmark, case):
    group, impl, fn = case
    for _ in range(20):
        fn()
    benchmark.group = "host: " + group
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=2)
    HOST_RESULTS[group][impl] = benchmark.stats.stats.median
