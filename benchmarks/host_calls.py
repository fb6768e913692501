"""Per-call host time of the public ops (host_cases.py), all cases interleaved in one process.

    python benchmarks/host_calls.py [--repeats 200] [--inner 20] [--backend ext]

One thread. Every repeat times each case once (inner calls back to back) in turn, so machine load
drifts over all of them alike; prints the median per call of wall time and of this thread's CPU time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]   # this checkout's fastscore, not an installed one
import host_cases  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--inner", type=int, default=20)
    p.add_argument("--backend", default=host_cases.BACKEND)
    args = p.parse_args()
    torch.set_num_threads(1)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"torch {torch.__version__}, 1 thread, loadavg {' '.join(load)}")
    cases = host_cases.cases(args.backend)
    for _, _, fn in cases:
        for _ in range(50):
            fn()
    wall: list[list[float]] = [[] for _ in cases]
    cpu: list[list[float]] = [[] for _ in cases]
    for _ in range(args.repeats):
        for i, (_, _, fn) in enumerate(cases):
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(args.inner):
                fn()
            c1, w1 = time.thread_time(), time.perf_counter()
            wall[i].append((w1 - w0) / args.inner)
            cpu[i].append((c1 - c0) / args.inner)
    group = None
    for (g, impl, _), ws, cs in zip(cases, wall, cpu, strict=True):
        if g != group:
            print(g)
            group = g
        print(f"  {impl:26s} wall {statistics.median(ws) * 1e6:8.2f} us   cpu {statistics.median(cs) * 1e6:8.2f} us")
    print(f"loadavg after {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
