"""The GPU run: one driver that builds, tests and times fastscore on a CUDA machine in a few minutes.

    python3 benchmarks/gpu_run.py                      # every stage, within --budget seconds (420)
    python3 benchmarks/gpu_run.py tests_ext ops e2e    # a rerun of chosen stages (build reused if carried)
    python3 benchmarks/gpu_run.py --dry-run            # every stage at tiny sizes on the CPU (the test suite runs this)

Stages, in order (the build runs in the background from the start):
    env           GPU, driver, clocks, torch / triton / CUDA / Python versions
    install       make fastscore.kernels importable (editable install without the extension) if it is not
    build         compile fastscore._C (C++ and CUDA for sm_90) once, with setup.py, into the work folder;
                  reused when a matching build was carried in (.gpu-build/); every process runs with
                  FASTSCORE_JIT=0, so nothing else can compile it or leave a lock behind
    tests_triton  the gpu-marked tests that need no extension (pytest-xdist, per-test timeout, no -x)
    tests_ext     the extension's tests, GPU and CPU (this build, this torch), once the build is there
    ops           op timings (benchmarks/gpu_ops.py): CUDA events, host time, graph replay, GB/s
    e2e           the CIFAR-10 network: forward, sampling, training step, profile (benchmarks/e2e.py)
    ops_compiled  torch.compile of the baseline ops (cold Inductor compiles: last, with what time is left)

Each stage has a time limit, cut to the time left in the budget; one line per stage is printed and
appended to summary.txt as the stage ends, and the stage's logs and JSON are added to results.tar at
once, so a run cut short returns what it finished. It writes three files under $OUT (remote GPU
machines often return only a few): summary.txt, results.tar, and the compiled extension (ext.so.gz)
to carry into a rerun.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable  # the interpreter that runs this driver has torch: every stage uses it
CARRIED_BUILD = ROOT / ".gpu-build"   # where a rerun carries the build the last run returned
STAGES = ("env", "install", "build", "tests_triton", "tests_ext", "ops", "e2e", "ops_compiled")
NEEDS_EXT = ("tests_ext", "ops", "e2e", "ops_compiled")


@dataclass
class Stage:
    name: str
    limit: float        # seconds, before the budget cuts it
    dry_limit: float    # seconds in the dry run


LIMITS = {s.name: s for s in (
    Stage("env", 30, 60), Stage("install", 120, 120), Stage("build", 300, 400),
    Stage("tests_triton", 150, 240), Stage("tests_ext", 100, 240), Stage("ops", 90, 240),
    Stage("e2e", 120, 240), Stage("ops_compiled", 120, 300),
)}


class Run:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.out = Path(args.out)
        self.work = Path(args.work)
        for d in (self.out, self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.summary = self.out / "summary.txt"
        self.archive = self.out / "results.tar"
        self.summary.write_text("")
        self.archive.unlink(missing_ok=True)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", FASTSCORE_JIT="0")
        self.env.pop("FASTSCORE_EXT", None)
        if self.dry:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run proves the plumbing on the CPU only
        self.build_proc: subprocess.Popen | None = None
        self.build_started = 0.0
        self.children: list[subprocess.Popen] = []

    # ---- bookkeeping ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def report(self, line: str) -> None:
        line = f"[{self.elapsed():5.0f}s] {line}"
        print(line, flush=True)
        with self.summary.open("a") as f:
            f.write(line + "\n")

    def attach(self, *paths: Path) -> None:
        """Add files to results.tar now (an uncompressed tar can be appended to)."""
        with tarfile.open(self.archive, "a") as tar:
            for path in paths:
                if path.is_file():
                    tar.add(path, arcname=path.name)

    def limit(self, name: str) -> float:
        stage = LIMITS[name]
        return min(stage.dry_limit if self.dry else stage.limit, self.deadline - time.monotonic())

    def run(self, name: str, cmd: list[str], log: Path, limit: float,
            env: dict | None = None) -> tuple[int | None, float]:
        """Run cmd in its own process group with output to log; kill the whole group at the limit.
        Returns (exit code or None when killed, seconds)."""
        t0 = time.monotonic()
        with log.open("w") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env or self.env,
                                    start_new_session=True)
            self.children.append(proc)
            try:
                rc = proc.wait(timeout=max(1.0, limit))
            except subprocess.TimeoutExpired:
                kill_group(proc)
                rc = None
            self.children.remove(proc)
        return rc, time.monotonic() - t0

    def py(self, code: str) -> str:
        """The output of a short python snippet, run with the stages' environment."""
        r = subprocess.run([PY, "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        return (r.stdout + r.stderr).strip()

    # ---- stages --------------------------------------------------------------------------------

    def stage_env(self) -> str:
        log = self.work / "env.log"
        code = (
            "import sys, os, torch\n"
            "try:\n import triton; tv = triton.__version__\nexcept Exception as e: tv = f'absent ({e})'\n"
            "gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'\n"
            "props = torch.cuda.get_device_properties(0) if torch.cuda.is_available() else None\n"
            "sms = f', {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB' if props else ''\n"
            "print(f'{gpu}{sms}; torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}, "
            "python {sys.version.split()[0]}, {os.cpu_count()} CPUs')\n"
        )
        line = self.py(code)
        smi = shutil.which("nvidia-smi")
        details = ""
        if smi and not self.dry:
            q = subprocess.run([smi, "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,"
                                "temperature.gpu,power.draw,utilization.gpu", "--format=csv"],
                               capture_output=True, text=True, timeout=30)
            details = q.stdout.strip()
        nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
        nvcc_v = ""
        if Path(nvcc).exists():
            nvcc_v = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        log.write_text(f"{line}\n{details}\nnvcc: {nvcc_v}\n")
        self.attach(log)
        smi_line = details.splitlines()[-1] if details else "nvidia-smi: none"
        return f"{line}; nvcc {nvcc_v or 'absent'}; {smi_line}"

    def stage_install(self) -> str:
        check = "import fastscore.kernels, fastscore; print(fastscore.__file__)"
        out = self.py(check)
        if out.endswith("__init__.py"):
            return f"fastscore.kernels importable ({out}): nothing to install"
        log = self.work / "install.log"
        env = dict(self.env, FASTSCORE_BUILD_EXT="0")
        rc, secs = self.run("install", [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                                        "-e", "."], log, self.limit("install"), env)
        self.attach(log)
        out = self.py(check)
        if out.endswith("__init__.py"):
            return f"ok: editable install without the extension, {secs:.0f}s"
        # A throwaway copy of the tree (on a remote GPU machine) can take the package layout as a link instead.
        link = ROOT / "fastscore" / "kernels"
        if not link.exists():
            link.symlink_to(Path("..") / "kernels")
        out = self.py(check)
        ok = out.endswith("__init__.py")
        return f"{'ok' if ok else 'FAILED'}: pip install -e failed (rc {rc}, see install.log); " + \
            (f"linked {link} -> ../kernels instead" if ok else f"import says: {out.splitlines()[-1] if out else '?'}")

    def start_build(self) -> str | None:
        """Start the extension's compile in the background, or reuse a carried build. Returns a result
        line when it is already decided, else None."""
        for so in sorted(CARRIED_BUILD.glob("*.so")) if CARRIED_BUILD.is_dir() else []:
            why = self.ext_problem(so)
            if why is None:
                self.env["FASTSCORE_EXT"] = str(so)
                return f"reused the carried build {so.name} (it matches this torch and these sources)"
            self.report(f"build: carried {so.name} not used: {why}")
        log = self.work / "build.log"
        env = dict(self.env, MAX_JOBS=str(os.cpu_count() or 4), FASTSCORE_CUDA="0" if self.dry else "1",
                   TORCH_CUDA_ARCH_LIST=self.env.get("TORCH_CUDA_ARCH_LIST", "9.0"))
        shutil.rmtree(self.work / "ext", ignore_errors=True)
        cmd = [PY, "setup.py", "-q", "build_ext", "--build-lib", str(self.work / "ext"),
               "--build-temp", str(self.work / "ext-tmp")]
        f = log.open("w")
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        self.build_proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
        self.children.append(self.build_proc)
        self.build_started = time.monotonic()
        return None

    def finish_build(self) -> str:
        """Wait for the background compile (within its limit and the budget) and check what it made."""
        proc = self.build_proc
        self.build_proc = None
        limit = LIMITS["build"].dry_limit if self.dry else LIMITS["build"].limit
        remaining = limit - (time.monotonic() - self.build_started)
        try:
            rc = proc.wait(timeout=max(1.0, min(remaining, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc = None
        self.children.remove(proc)
        secs = time.monotonic() - self.build_started
        log = self.work / "build.log"
        self.attach(log)
        if rc != 0:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if "error" in ln.lower()][:3]
            return f"FAILED ({'killed at its limit' if rc is None else f'rc {rc}'}) after {secs:.0f}s: " + \
                (" | ".join(tail) if tail else "see build.log")
        built = sorted((self.work / "ext").rglob("_C*.so"))
        if not built:
            return f"FAILED: no _C*.so under {self.work / 'ext'} after {secs:.0f}s"
        why = self.ext_problem(built[0])
        if why is not None:
            return f"FAILED: built in {secs:.0f}s but not loadable: {why}"
        self.env["FASTSCORE_EXT"] = str(built[0])
        size = built[0].stat().st_size
        if not self.dry:
            packed = self.out / "ext.so.gz"
            with built[0].open("rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            if packed.stat().st_size > 15 << 20:
                packed.unlink()
        return f"ok in {secs:.0f}s ({size / 2**20:.1f} MiB; {self.py(DESCRIBE)})"

    def ext_problem(self, so: Path) -> str | None:
        """None when this build loads here with CUDA kernels for this GPU (on the CPU in the dry run)."""
        env_code = f"import os; os.environ['FASTSCORE_EXT'] = {str(so)!r}\n"
        device = "cpu" if self.dry else "cuda"
        out = self.py(env_code + "from fastscore.backend import dispatch; "
                      f"print('why:', dispatch.unavailable_reason('ext', '{device}'))")
        last = out.splitlines()[-1] if out else "no output"
        return None if last == "why: None" else last.removeprefix("why: ")

    def stage_tests(self, name: str, marks: str) -> str:
        log, report = self.work / f"{name}.log", self.work / f"{name}.jsonl"
        report.unlink(missing_ok=True)
        workers = "2" if self.dry else "8"
        cmd = [PY, "-m", "pytest", "-m", marks, "-n", workers, "--timeout", "120", "-p", "no:cacheprovider",
               "-q", "-rfE", "--tb=short", "-o", "addopts=", f"--junitxml={self.work / (name + '.xml')}", "tests"]
        env = dict(self.env, FASTSCORE_REPORT_LOG=str(report))
        rc, secs = self.run(name, cmd, log, self.limit(name), env)
        self.attach(log, report, self.work / f"{name}.xml")
        return summarize_tests(report, rc, secs)

    def stage_script(self, name: str, cmd: list[str], artifacts: list[Path]) -> tuple[int | None, float, Path]:
        log = self.work / f"{name}.log"
        rc, secs = self.run(name, cmd, log, self.limit(name))
        self.attach(log, *artifacts)
        return rc, secs, log

    def stage_ops(self, compiled: bool) -> str:
        name = "ops_compiled" if compiled else "ops"
        rows = self.work / f"{name}.jsonl"
        rows.unlink(missing_ok=True)
        cmd = [PY, "benchmarks/gpu_ops.py", "--jsonl", str(rows)] + (["--compiled"] if compiled else [])
        if self.dry:  # one compiled case proves the path; each costs a cold Inductor compile on the CPU
            cmd += ["--tiny"] + (["--only", "langevin_step_ 4x3"] if compiled else [])
        rc, secs, log = self.stage_script(name, cmd, [rows])
        table = log.read_text(errors="replace").splitlines()[1:]
        with self.summary.open("a") as f:
            f.write("\n".join(table) + "\n")
        return summarize_rows(rows, rc, secs)

    def stage_e2e(self) -> str:
        figures = self.work / "e2e.json"
        figures.unlink(missing_ok=True)
        cmd = [PY, "benchmarks/e2e.py", "--json", str(figures)] + (["--tiny"] if self.dry else [])
        rc, secs, log = self.stage_script("e2e", cmd, [figures])
        lines = log.read_text(errors="replace").splitlines()[1:]
        with self.summary.open("a") as f:
            f.write("\n".join(lines) + "\n")
        n = len(json.loads(figures.read_text())) if figures.is_file() else 0
        tail = "" if rc == 0 else f"; last line: {lines[-1] if lines else '-'}"
        return f"{status(rc)} in {secs:.0f}s: {n} figures{tail}"

    # ---- the plan ----------------------------------------------------------------------------------

    def go(self, wanted: list[str]) -> int:
        self.report(f"gpu_run: stages {' '.join(wanted)}; budget {self.args.budget:.0f}s"
                    f"{' (dry run on the CPU, tiny sizes)' if self.dry else ''}; out {self.out}")
        failures = 0
        for name in wanted:
            if name == "build":
                continue  # started with install, finished before the first stage that needs it
            if self.deadline - time.monotonic() < 10:
                self.report(f"{name}: skipped: out of time")
                continue
            if name in NEEDS_EXT and self.build_proc is not None:
                self.report(f"build: {self.finish_build()}")
            try:
                result = self.dispatch(name)
            except Exception as exc:  # noqa: BLE001 - a broken stage must not cost the others
                result = f"DRIVER ERROR {type(exc).__name__}: {exc}"
            failures += failed(result)
            self.report(f"{name}: {result}")
            if name == "install" and "build" in wanted:
                decided = self.start_build()
                if decided:
                    self.report(f"build: {decided}")
        if self.build_proc is not None:
            self.report(f"build: {self.finish_build()}")
        self.report(f"gpu_run: done in {self.elapsed():.0f}s; {failures} stage(s) with failures")
        self.attach(self.summary)
        return 0

    def dispatch(self, name: str) -> str:
        if name == "env":
            return self.stage_env()
        if name == "install":
            return self.stage_install()
        if name == "tests_triton":
            return self.stage_tests(name, "gpu and not ext")
        if name == "tests_ext":
            if "FASTSCORE_EXT" not in self.env:
                return "skipped: no usable build of the extension"
            return self.stage_tests(name, "ext")  # its CPU kernels too: built against this machine's torch
        if name == "ops":
            return self.stage_ops(compiled=False)
        if name == "ops_compiled":
            return self.stage_ops(compiled=True)
        if name == "e2e":
            return self.stage_e2e()
        raise ValueError(name)

    def kill_children(self) -> None:
        for proc in list(self.children):
            kill_group(proc)


DESCRIBE = "from fastscore.backend import ext as extension; print(extension.describe())"


def kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def failed(result: str) -> bool:
    return result.startswith(("FAILED", "KILLED", "DRIVER ERROR")) or "failures:" in result or \
        bool(re.search(r"[1-9]\d* errors", result))


def status(rc: int | None) -> str:
    return "ok" if rc == 0 else ("KILLED at its time limit" if rc is None else f"FAILED (rc {rc})")


def summarize_tests(report: Path, rc: int | None, secs: float) -> str:
    entries = [json.loads(ln) for ln in report.read_text().splitlines()] if report.is_file() else []
    counts: dict[str, int] = {}
    failed = []
    for e in entries:
        counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
        if e["outcome"] == "failed":
            msg = [ln for ln in e.get("message", "").splitlines() if ln.strip()]
            failed.append(f"{e['nodeid']} ({msg[-1].strip()[:140] if msg else '?'})")
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing ran"
    head = "passed" if rc == 0 else ("KILLED at its time limit" if rc is None else
                                     "no tests selected" if rc == 5 else f"FAILED (rc {rc})")
    line = f"{head}: {text} in {secs:.0f}s"
    if failed:
        line += "; failures: " + "; ".join(failed[:6]) + (f"; and {len(failed) - 6} more" if len(failed) > 6 else "")
    return line


def summarize_rows(rows: Path, rc: int | None, secs: float) -> str:
    entries = [json.loads(ln) for ln in rows.read_text().splitlines()] if rows.is_file() else []
    errors = [f"{e['case']} / {e['impl']}: {e['error']}" for e in entries if "error" in e]
    timed = sum("device_us" in e for e in entries)
    line = f"{status(rc)} in {secs:.0f}s: {timed} rows timed, {len(errors)} errors"
    return line + ("; " + "; ".join(errors[:4]) if errors else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stages", nargs="*", help=f"stages to run (default all): {' '.join(STAGES)}")
    p.add_argument("--dry-run", action="store_true", help="every stage at tiny sizes on the CPU")
    p.add_argument("--budget", type=float, help="seconds for the whole run (default 420; 1800 for a dry run, "
                   "which proves the stages, not their speed, and may share a slow CPU)")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/fastscore-gpu-run/out",
                   help="where summary.txt, results.tar and ext.so.gz go (default $OUT)")
    p.add_argument("--work", default="/tmp/fastscore-gpu-run/work", help="build folder and logs")
    p.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS",
                   help="change one stage's time limit for this run (repeatable)")
    args = p.parse_args(argv)
    for item in args.limit:
        name, _, seconds = item.partition("=")
        if name not in LIMITS or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--limit takes STAGE=SECONDS with a stage among {' '.join(STAGES)}, got {item!r}")
        LIMITS[name].limit = LIMITS[name].dry_limit = float(seconds)
    if args.budget is None:
        args.budget = 1800.0 if args.dry_run else 420.0
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; stages are: {' '.join(STAGES)}")
    wanted = [s for s in STAGES if s in (args.stages or STAGES)]
    for implied in ("env", "install"):
        if implied not in wanted:
            wanted.insert(0 if implied == "env" else 1, implied)
    if any(s in wanted for s in NEEDS_EXT) and "build" not in wanted:
        wanted.insert(wanted.index("install") + 1, "build")
    run = Run(args)

    def on_term(signum, frame):
        run.report(f"gpu_run: stopped by signal {signum}; killing the running stage")
        run.kill_children()
        run.attach(run.summary)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return run.go(wanted)


if __name__ == "__main__":
    sys.exit(main())
