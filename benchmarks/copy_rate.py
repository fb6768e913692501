"""The card's device-to-device copy rate: the bandwidth ceiling the op benchmarks are held against.

Bytes read plus bytes written over the median time of a large tensor copy (several times the L2).
    python benchmarks/copy_rate.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def copy_rate(n_bytes: int = 2 << 30, iters: int = 20) -> float:
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n_bytes / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    rate = copy_rate()
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {rate / 1e9:.0f} GB/s (read + write)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_gb_s": rate / 1e9}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
