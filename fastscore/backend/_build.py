"""How fastscore._C is compiled: sources, flags and the build description, for setup.py and the JIT.

setup.py loads this file by path (the build environment may have no torch, so it must not import the
fastscore package); fastscore.backend.ext imports it to compile the same sources at first use. Nothing
here imports torch at module level.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# The sources are whatever csrc/ holds (cpp_sources, cuda_sources): adding a file there adds it to the
# build, and source_hash covers every source and header, so an edited header invalidates a build.
CPP_SUFFIX = ".cpp"                   # C++ translation units (every device)
CUDA_SUFFIX = ".cu"                   # CUDA translation units (CUDA builds only)
HEADER_SUFFIXES = (".h", ".cuh")
SOURCE_SUFFIXES = (CPP_SUFFIX, CUDA_SUFFIX) + HEADER_SUFFIXES
MODULE_SOURCE = "fastscore.cpp"       # the Python module (PyInit); marks a directory as the sources
BUILD_INFO_HEADER = "fastscore_build_info.h"
BUILD_EXT_ENV = "FASTSCORE_BUILD_EXT"  # 0: setup.py installs without fastscore._C (compiled at first use, or apart)
CUDA_ENV = "FASTSCORE_CUDA"          # 0/1: force the CUDA kernels off/on (default: on when nvcc and a GPU or arch list)
CAPABILITY_ENV = "FASTSCORE_CPU_CAPABILITY"  # DEFAULT or AVX2 (default: AVX2 when this CPU has AVX2 and FMA)
DEFAULT_CUDA_ARCH = "9.0"            # when CUDA is forced with neither a visible GPU nor TORCH_CUDA_ARCH_LIST
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # fastscore/ (this file is fastscore/backend/_build.py)


def find_sources() -> Path | None:
    """The C++/CUDA sources: fastscore/csrc when installed (setup.py ships csrc/ as fastscore.csrc),
    csrc/ beside fastscore/ in a source checkout or an editable install."""
    for candidate in (PACKAGE_DIR / "csrc", PACKAGE_DIR.parent / "csrc"):
        if (candidate / MODULE_SOURCE).is_file():
            return candidate
    return None


def source_files(src: Path, suffixes: tuple[str, ...] = SOURCE_SUFFIXES) -> list[str]:
    """The files under src (posix paths relative to it, sorted) whose names end in one of suffixes."""
    src = Path(src)
    return sorted(p.relative_to(src).as_posix() for p in src.rglob("*")
                  if p.suffix in suffixes and p.is_file() and not p.name.startswith("."))


def cpp_sources(src: Path) -> list[str]:
    """The C++ translation units: csrc/*.cpp (the module, then ops.cpp, the longest to compile) before
    csrc/cpu/*.cpp, so ninja starts the long one first."""
    return sorted(source_files(src, (CPP_SUFFIX,)), key=lambda name: (name != MODULE_SOURCE, name.count("/"), name))


def cuda_sources(src: Path) -> list[str]:
    return source_files(src, (CUDA_SUFFIX,))


def cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "avx2" in flags and "fma" in flags


def cpu_capability() -> str:
    """The x86 vector ISA to compile at::vec for: AVX2 where this CPU has it, else the portable DEFAULT."""
    forced = os.environ.get(CAPABILITY_ENV, "").upper()
    if forced in ("DEFAULT", "AVX2"):
        return forced
    return "AVX2" if cpu_has_avx2_fma() else "DEFAULT"


def cxx_flags(capability: str, with_cuda: bool) -> list[str]:
    flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno"]
    if capability == "AVX2":
        # A name of our own for at::vec's inline namespace, so no symbol can collide with libtorch's.
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=FASTSCORE_AVX2"]
    else:
        flags += ["-DCPU_CAPABILITY=FASTSCORE_DEFAULT"]
    if with_cuda:
        flags.append("-DFASTSCORE_WITH_CUDA")
    return flags


def nvcc_flags() -> list[str]:
    # No --use_fast_math: the noise needs accurate logf/sincosf to match the reference stream.
    return ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-DFASTSCORE_WITH_CUDA", "-lineinfo"]


def extra_cuda_include_dirs() -> list[str]:
    """Headers a pip CUDA torch needs (cusparse, curand, ...) that a bare toolkit may lack: the nvidia wheels'."""
    dirs = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            d = Path(entry) / sub
            if d.is_dir() and str(d) not in dirs:
                dirs.append(str(d))
    return dirs


def nvcc_available() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()


def cuda_decision(gpu_visible: bool) -> tuple[bool, str]:
    """(build CUDA kernels?, why): FASTSCORE_CUDA forces; else nvcc + a CUDA torch + an arch to build for."""
    import torch

    forced = os.environ.get(CUDA_ENV)
    if forced == "0":
        return False, f"{CUDA_ENV}=0"
    if torch.version.cuda is None:
        if forced == "1":
            raise RuntimeError(f"{CUDA_ENV}=1 but torch {torch.__version__} is not a CUDA build")
        return False, f"torch {torch.__version__} is not a CUDA build"
    if not nvcc_available():
        if forced == "1":
            raise RuntimeError(f"{CUDA_ENV}=1 but nvcc was not found (set CUDA_HOME)")
        return False, "nvcc not found"
    if forced == "1":
        return True, f"{CUDA_ENV}=1"
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or gpu_visible:
        return True, "nvcc and a CUDA torch found"
    return False, f"no GPU visible and TORCH_CUDA_ARCH_LIST unset (set {CUDA_ENV}=1 to build anyway)"


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST, else the visible GPUs' capabilities; sets the variable for torch's build."""
    import torch

    arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not arch:
        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            arch = ";".join(f"{major}.{minor}" for major, minor in caps)
        else:
            arch = DEFAULT_CUDA_ARCH
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    return arch


def source_hash(src: Path) -> str:
    """A digest of every source and header under src (names and contents), so a build can be told
    apart from edited, added or removed sources."""
    import hashlib

    digest = hashlib.sha256()
    for name in source_files(src):
        data = (Path(src) / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def build_info(origin: str, capability: str, with_cuda: bool, arch: str | None,
               src: Path | None = None) -> dict[str, str]:
    import torch

    return {
        "origin": origin,
        "torch": torch.__version__,
        "torch_git": torch.version.git_version or "",
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "cpu": capability,
        "cuda": (torch.version.cuda or "") if with_cuda else "",
        "arch": arch or "",
        "src": source_hash(src) if src is not None else "",
    }


def encode_info(info: dict[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in info.items())


def decode_info(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(";") if "=" in item)


def write_info_header(directory: Path, info: dict[str, str]) -> Path:
    """The generated header fastscore.cpp embeds as the marker string the loader reads before dlopen."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / BUILD_INFO_HEADER
    text = f'#define FASTSCORE_BUILD_INFO "{encode_info(info)}"\n'
    if not path.exists() or path.read_text() != text:  # keep the mtime when unchanged: no needless rebuild
        path.write_text(text)
    return path
