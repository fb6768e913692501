"""Op timings on a GPU: fastscore's fused backends against ncsn's eager code, one row at a time.

For each case and implementation it measures
    device  time per call from CUDA events around calls issued back to back, after warm-up (median
            of several such windows): what an eager caller gets, the host's launch cost whenever
            that exceeds the kernels' time
    host    the host's time to issue one call (the caller's cost; the GPU may still be busy)
    graph   time per call when the call is captured in a CUDA graph and replayed back to back: the
            kernels' own time
and gives GB/s and the share of the device-to-device copy rate (measured here, in this process) from
the kernels' time (graph, else device), counting each tensor the op must touch once. Rows:
    triton, ext   fastscore's fused backends
    baseline      ncsn's plain eager PyTorch with torch.randn_like noise (benchmarks/ncsn_baseline.py)
    compiled      torch.compile of the baseline (only with --compiled: each case compiles cold)
    oracle        fastscore's own torch backend: the correctness reference, never a speed baseline
Each row prints as soon as it is measured and is appended to --jsonl, so a run cut short keeps what
it measured. PyTorch's default precision settings throughout.

    python benchmarks/gpu_ops.py --jsonl ops.jsonl               # eager rows
    python benchmarks/gpu_ops.py --compiled --jsonl comp.jsonl   # torch.compile rows
    python benchmarks/gpu_ops.py --tiny                          # seconds, on the CPU: proves the script
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastscore.backend import dispatch  # noqa: E402

from op_cases import FUSED, Case, cases  # noqa: E402

# ---- timing ---------------------------------------------------------------------------------------

def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def device_time(fn, device, calls: int, windows: int) -> float:
    """Median seconds per call over `windows` windows of `calls` back-to-back calls."""
    times = []
    for _ in range(windows):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def host_time(fn, device, calls: int) -> float:
    """Seconds the host spends issuing one call (the device may still be running when it returns)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    _sync(device)
    return (t1 - t0) / calls


def graph_time(fn, calls: int, windows: int) -> float:
    """Seconds per call of a CUDA graph holding one call, replayed back to back."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    return device_time(graph.replay, "cuda", calls, windows)


def host_sync(fn) -> str | None:
    """Why fn cannot be captured in a CUDA graph because it waits for the GPU (a value read back to
    the host), or None. Found with torch's sync debug mode, so no capture is spoilt finding it."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0][:160]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return None


def measure(case: Case, impl: str, device: str, copy_gb_s: float | None, calls: int, windows: int) -> dict:
    row = {"case": case.name, "impl": impl, "bytes": case.bytes_moved}
    reason = dispatch.unavailable_reason(impl, device) if impl in FUSED else None
    if reason:
        row["skipped"] = reason
        return row
    try:
        fn = case.make(impl)
        t0 = time.perf_counter()
        for _ in range(3):  # warm-up: compiles (Triton, Inductor), allocator pools
            fn()
        _sync(device)
        row["warmup_s"] = time.perf_counter() - t0
        row["device_us"] = 1e6 * device_time(fn, device, calls, windows)
        row["host_us"] = 1e6 * host_time(fn, device, calls)
    except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return row
    if device == "cuda":
        sync_error = host_sync(fn)
        if sync_error:
            row["graph_error"] = f"not capturable, the call waits for the GPU: {sync_error}"
        else:
            try:
                row["graph_us"] = 1e6 * graph_time(fn, calls, windows)
            except Exception as exc:  # noqa: BLE001 - a capture that fails is a finding, not a crash
                text = str(exc).strip()
                row["graph_error"] = f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else ''}"
                torch.cuda.synchronize()
    kernel_us = row.get("graph_us", row["device_us"])
    row["gb_s"] = case.bytes_moved / kernel_us / 1e3
    if copy_gb_s:
        row["copy_pct"] = 100 * row["gb_s"] / copy_gb_s
    return row


def format_row(row: dict, baseline_us: float | None) -> str:
    head = f"  {row['impl']:9}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    if "error" in row:
        return f"{head} ERROR {row['error']}"
    parts = [f"{head} eager {row['device_us']:9.1f} us", f"host {row['host_us']:7.1f} us"]
    parts.append(f"graph {row['graph_us']:8.1f} us" if "graph_us" in row else
                 ("graph      n/a   " if "graph_error" not in row else "graph  not taken"))
    parts.append(f"{row['gb_s']:7.0f} GB/s")
    if "copy_pct" in row:
        parts.append(f"{row['copy_pct']:5.1f}% of copy")
    if baseline_us and row["impl"] != "baseline":
        parts.append(f"{baseline_us / row['device_us']:6.2f}x vs baseline eager")
    if "graph_error" in row:
        parts.append(f"[capture: {row['graph_error']}]")
    return "  ".join(parts)


def copy_rate_gb_s(device: str, tiny: bool) -> float | None:
    """Bytes read plus written per second by a device-to-device copy several times the L2."""
    if device != "cuda":
        return None
    src = torch.empty((1 << 20) if tiny else (1 << 29), device=device).uniform_()  # 2 GiB at full size
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = device_time(lambda: dst.copy_(src), device, 5, 5)
    return 2 * src.numel() * 4 / seconds / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compiled", action="store_true", help="time torch.compile of the baseline only")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, few calls: a quick check of the script")
    p.add_argument("--jsonl", help="append every row here as it is measured")
    p.add_argument("--copy-gb-s", type=float, help="the copy rate, if measured already (else measured here)")
    p.add_argument("--only", help="run only the cases whose name contains this")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    calls, windows = (2, 2) if args.tiny else (20, 5)
    copy = args.copy_gb_s or copy_rate_gb_s(device, args.tiny)
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{where}, torch {torch.__version__}; copy rate "
          f"{f'{copy:.0f} GB/s' if copy else 'not measured (no GPU)'}; baseline = ncsn eager, randn_like noise",
          flush=True)
    out = open(args.jsonl, "a") if args.jsonl else None
    for case in cases(device, "tiny" if args.tiny else "gpu"):
        if args.only and args.only not in case.name:
            continue
        print(f"{case.name}  ({case.bytes_moved / 1e6:.1f} MB moved)", flush=True)
        impls = ("baseline", "compiled") if args.compiled else case.impls
        baseline_us = None
        for impl in impls:
            row = measure(case, impl, device, copy, calls, windows)
            row.update(device=where, torch=torch.__version__)
            if impl == "baseline":
                baseline_us = row.get("device_us")
            if impl == "baseline" and args.compiled:
                continue  # measured only as the ratio's denominator
            print(format_row(row, baseline_us), flush=True)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
        if device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
