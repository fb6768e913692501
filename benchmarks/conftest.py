"""Shared set-up of the op benchmarks: the device, the implementations to compare, and the ratio table.

Each benchmark records its median time under (case, implementation); at the end of the session a
table prints every implementation's time and its speed-up over the baseline (ncsn's eager code with
torch.randn_like noise) and over torch.compile of it, measured in the same run. Speed lives here,
never in tests. Run from the repository root: pytest --benchmark
"""
from __future__ import annotations

import collections

import pytest
import torch

from fastscore.backend import dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# group -> implementation -> (median seconds, bytes moved or 0)
RESULTS: dict[str, dict[str, tuple[float, int]]] = collections.defaultdict(dict)
# host-time group -> implementation -> median seconds per call (test_bench_host.py)
HOST_RESULTS: dict[str, dict[str, float]] = collections.defaultdict(dict)


def implementations(device: str = DEVICE) -> list:
    """The baseline and torch.compile of it, every fastscore backend that runs on the device (not
    triton on the CPU: its interpreter is no speed), then the oracle."""
    params = ["baseline", "compiled"]
    for name in ("ext", "triton"):
        if name == "triton" and device == "cpu":
            continue
        reason = dispatch.unavailable_reason(name, device)
        params.append(pytest.param(name, marks=pytest.mark.skip(reason=f"{name}: {reason}")) if reason else name)
    return params + ["oracle"]


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def run(benchmark):
    """run(group, impl, fn, rounds, bytes_moved=0): warm fn up (compiles), time it, record the median."""

    def _run(group: str, impl: str, fn, rounds: int, bytes_moved: int = 0):
        def timed():
            fn()
            synchronize()

        for _ in range(2):  # torch.compile traces and compiles here
            timed()
        benchmark.group = group
        benchmark.extra_info["impl"] = impl
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
        median = benchmark.stats.stats.median
        RESULTS[group][impl] = (median, bytes_moved)
        return median

    return _run


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if HOST_RESULTS:
        tr.section("fastscore per-call host time, 1 thread, tiny CPU tensors (median us per call)")
        for group, rows in HOST_RESULTS.items():
            tr.write_line(group)
            for impl, t in rows.items():
                tr.write_line(f"  {impl:28} {t * 1e6:8.2f} us")
    if not RESULTS:
        return
    tr.section(f"fastscore op speed-ups on {DEVICE} (median; x = times faster; baseline = ncsn eager with "
               "torch.randn_like, compiled = torch.compile of it, oracle = fastscore's torch backend)")
    for group, rows in RESULTS.items():
        base = rows.get("baseline", (None,))[0]
        comp = rows.get("compiled", (None,))[0]
        tr.write_line(group)
        for impl, (t, nbytes) in rows.items():
            parts = [f"  {impl:9} {t * 1e3:9.3f} ms"]
            if base and impl != "baseline":
                parts.append(f"{base / t:7.2f}x vs baseline")
            if comp and impl not in ("baseline", "compiled"):
                parts.append(f"{comp / t:7.2f}x vs compiled")
            if nbytes:
                parts.append(f"{nbytes / t / 1e9:8.1f} GB/s")
            tr.write_line("  ".join(parts))
