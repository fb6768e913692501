"""CPU timings of the fused ops against ncsn's eager code, in one process, implementations alternating.

    python benchmarks/cpu_ops.py [--threads 2] [--repeats 15] [--inner 10] [--no-compile] [--cases noise|norm|all]

Cases (float32, each as benchmarks/op_cases.py defines it): noise: langevin_step_ at 100x3x32x32 and
perturb + dsm_loss forward+backward at 128x3x32x32; norm: CondInstanceNorm++ with ELU forward and
forward+backward at 32x128x32x32. Every repeat times each implementation once (inner calls
back to back) in turn, so machine load drifts over all of them alike; the medians over repeats and the
ratios to the baseline (ncsn's eager code with torch.randn_like noise) are printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# this checkout's fastscore, not whichever one is installed
sys.path[:0] = [str(HERE), str(HERE.parent)]
import op_cases  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the baseline")
    p.add_argument("--cases", choices=("noise", "norm", "all"), default="noise")
    p.add_argument("--cpu-time", action="store_true",
                   help="time this thread's CPU time instead of wall time (with --threads 1: the work itself, "
                        "robust to other processes on a shared machine)")
    args = p.parse_args()
    clock = time.thread_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    impls = ("baseline", "ext") + (() if args.no_compile else ("compiled",))
    clock_name = "thread CPU" if args.cpu_time else "wall"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock_name} time, loadavg "
          f"{Path('/proc/loadavg').read_text().split()[:3]}")
    cases = []
    if args.cases in ("noise", "all"):
        cases += [op_cases.langevin_case((100, 3, 32, 32), "cpu"), op_cases.dsm_pair_case((128, 3, 32, 32), "cpu")]
    if args.cases in ("norm", "all"):
        cases += [op_cases.norm_case((32, 128, 32, 32), "cpu", backward=backward) for backward in (False, True)]
    for case in cases:
        calls = {}
        for impl in impls:
            t0 = time.perf_counter()
            calls[impl] = case.make(impl)
            for _ in range(3):
                calls[impl]()
            if impl == "compiled":
                print(f"  (compiled warm-up {time.perf_counter() - t0:.1f} s)")
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        for _ in range(args.repeats):
            for impl in impls:
                fn = calls[impl]
                t0 = clock()
                for _ in range(args.inner):
                    fn()
                times[impl].append((clock() - t0) / args.inner)
        med = {impl: statistics.median(ts) for impl, ts in times.items()}
        print(case.name)
        for impl in impls:
            print(f"  {impl:9s} median {med[impl] * 1e3:8.3f} ms  "
                  f"(min {min(times[impl]) * 1e3:.3f}, max {max(times[impl]) * 1e3:.3f})  "
                  f"baseline/{impl} = {med['baseline'] / med[impl]:.2f}x")
    print(f"loadavg after {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
