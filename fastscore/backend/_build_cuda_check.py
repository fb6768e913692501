"""Compile-only check of the CUDA sources (CI): nvcc builds csrc/**/*.cu and the C++ sources that
change with FASTSCORE_WITH_CUDA (the module, fastscore.cpp) to object files for one arch (sm_90 by
default), with torch's headers, and links nothing and runs nothing. So CUDA code cannot rot on
machines without a GPU.

    python -m fastscore.backend._build_cuda_check [--arch 90] [--jobs 2]

Exits 0 with a note when nvcc or a CUDA torch is missing (nothing to check there), 1 on a compile error.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import _build


def find_nvcc() -> str | None:
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and Path(candidate, "bin", "nvcc").exists():
            return str(Path(candidate, "bin", "nvcc"))
    found = shutil.which("nvcc")
    return str(Path(found).resolve()) if found else None


def commands(nvcc: str, arch: str, src: Path, out: Path) -> list[list[str]]:
    from torch.utils.cpp_extension import include_paths

    cuda_root = Path(nvcc).resolve().parent.parent
    includes = [str(src), str(cuda_root / "include"), *include_paths(), sysconfig.get_paths()["include"]]
    includes += _build.extra_cuda_include_dirs()
    inc = [f"-I{d}" for d in includes]
    gen = out / "gen"
    defs = ["-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H", f"-I{gen}"]
    cmds = []
    for cu in _build.cuda_sources(src):
        cmds.append([nvcc, "-c", str(src / cu), "-o", str(out / (cu.replace("/", "_") + ".o")), *defs, *inc,
                     f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xcompiler", "-fPIC", *_build.nvcc_flags()])
    # The C++ side that differs in a CUDA build (FASTSCORE_WITH_CUDA), with the host compiler.
    for cpp in _build.cpp_sources(src):
        if "FASTSCORE_WITH_CUDA" in (src / cpp).read_text():
            cmds.append(["c++", "-c", str(src / cpp), "-o", str(out / (cpp.replace("/", "_") + ".o")), *defs, *inc,
                         "-fPIC", *_build.cxx_flags("DEFAULT", with_cuda=True)])
    return cmds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="SM version to compile for (default: 90, the H100/H200)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    import logging

    import torch

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime": known

    nvcc = find_nvcc()
    if nvcc is None or torch.version.cuda is None:
        print(f"CUDA compile check skipped: nvcc {'missing' if nvcc is None else 'found'}, torch CUDA "
              f"{torch.version.cuda or 'none'}")
        return 0
    src = _build.find_sources()
    if src is None:
        print(f"CUDA compile check: no C++/CUDA sources found (looked for {_build.MODULE_SOURCE} in "
              f"{_build.PACKAGE_DIR / 'csrc'} and {_build.PACKAGE_DIR.parent / 'csrc'})", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="fastscore-nvcc-") as tmp:
        out = Path(tmp)
        _build.write_info_header(out / "gen", {"origin": "compile-check"})
        start = time.time()
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True),
                                    commands(nvcc, args.arch, src, out)))
        failed = [r for r in results if r.returncode != 0]
        for r in failed:
            print(" ".join(r.args), file=sys.stderr)
            print(r.stdout + r.stderr, file=sys.stderr)
        status = "FAILED" if failed else "ok"
        print(f"CUDA compile check (sm_{args.arch}, {nvcc}): {len(results) - len(failed)}/{len(results)} "
              f"sources compiled, {status}, {time.time() - start:.0f} s")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
