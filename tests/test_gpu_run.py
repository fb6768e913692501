"""The GPU run's driver (benchmarks/gpu_run.py), proven on the CPU before any GPU time is spent.

The dry run executes every stage at tiny sizes: the extension's build command, both test stages,
the op timings, the end-to-end script and the compiled baselines, with the same plumbing (process
groups, time limits, summary lines, the results archive) the GPU run uses.
"""
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_run  # noqa: E402


def test_dry_run_executes_every_stage(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--dry-run",
                           "--out", str(out), "--work", str(work)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = (out / "summary.txt").read_text().splitlines()
    results = {}
    for line in lines:
        head, _, rest = line.partition("] ")
        name, sep, result = rest.partition(": ")
        if head.startswith("[") and sep and name in gpu_run.STAGES:
            results[name] = result
    assert set(results) == set(gpu_run.STAGES), lines
    for name, result in results.items():
        assert not gpu_run.failed(result), f"{name}: {result}"
    assert results["build"].startswith("ok"), results["build"]
    assert "0 errors" in results["ops"] and "0 errors" in results["ops_compiled"]
    with tarfile.open(out / "results.tar") as tar:
        names = set(tar.getnames())
    for stage in ("env", "build", "tests_triton", "tests_ext", "ops", "e2e", "ops_compiled"):
        assert f"{stage}.log" in names, names
    figures = json.loads((work / "e2e.json").read_text())
    for key in ("forward_fast_float32_ms", "sampling_baseline_float32_s", "train_fast_bfloat16_ms",
                "fast_vs_oracle_sampling_rel_l2", "profile_bf16_forward"):
        assert key in figures, sorted(figures)
    assert figures["fast_vs_oracle_sampling_rel_l2"] < 1e-4
    assert len(list(out.iterdir())) <= 8, "a remote GPU machine may return only 8 files"


def test_a_stage_past_its_limit_is_killed_with_its_children(tmp_path):
    run = gpu_run.Run(_args(tmp_path))
    marker = tmp_path / "child_alive"
    # The stage's child would touch the marker after 5 s if it outlived the kill of the stage.
    child = tmp_path / "child.py"
    child.write_text(f"import pathlib, time\ntime.sleep(5)\npathlib.Path({str(marker)!r}).touch()\n")
    script = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(child)!r}])\ntime.sleep(60)\n"
    t0 = time.monotonic()
    rc, secs = run.run("slow", [sys.executable, "-c", script], tmp_path / "slow.log", limit=2)
    assert rc is None and secs < 15 and time.monotonic() - t0 < 15
    time.sleep(6)
    assert not marker.exists(), "the stage's child process survived the kill"


def _args(tmp_path):
    import argparse

    return argparse.Namespace(dry_run=True, budget=60.0, out=str(tmp_path / "o"), work=str(tmp_path / "w"))


def test_test_results_are_summarised_from_the_report_log(tmp_path):
    report = tmp_path / "r.jsonl"
    report.write_text("\n".join(json.dumps(e) for e in [
        {"nodeid": "tests/a.py::t1", "outcome": "passed"},
        {"nodeid": "tests/a.py::t2", "outcome": "failed", "message": "Traceback\nAssertionError: y differs"},
        {"nodeid": "tests/a.py::t3", "outcome": "skipped", "message": "no GPU"},
    ]))
    line = gpu_run.summarize_tests(report, 1, 12.0)
    assert line.startswith("FAILED (rc 1): 1 failed, 1 passed, 1 skipped in 12s")
    assert "tests/a.py::t2 (AssertionError: y differs)" in line
    assert gpu_run.failed(line)
    assert gpu_run.summarize_tests(report, None, 150.0).startswith("KILLED at its time limit")
    assert not gpu_run.failed(gpu_run.summarize_tests(tmp_path / "absent.jsonl", 0, 1.0))


@pytest.mark.parametrize("result,bad", [
    ("ok in 5s: 27 rows timed, 0 errors", False),
    ("ok in 5s: 27 rows timed, 2 errors; x", True),
    ("KILLED at its time limit in 90s", True),
    ("passed: 40 passed in 30s", False),
])
def test_failed_reads_a_result_line(result, bad):
    assert gpu_run.failed(result) is bad
