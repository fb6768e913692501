"""The `ext` backend: the compiled fastscore._C (C++ CPU kernels, CUDA kernels when built with CUDA).

Loading, in order, the first time a backend is probed:
  0. FASTSCORE_EXT=path: exactly that compiled fastscore._C (a `setup.py build_ext` output, say), under
     the same checks as 1; an error, never a fallback, if it cannot be used.
  1. the fastscore._C installed with the package (setup.py), if its embedded build description says
     it was compiled against this very torch (version and git hash) for an x86 ISA this CPU has. The
     description is read from the file's bytes before anything is loaded: an extension built against
     another torch is never dlopen'ed.
  2. otherwise the same sources (fastscore/csrc, or csrc/ of a source checkout) compiled now with
     torch.utils.cpp_extension.load into a cache directory (FASTSCORE_CACHE_DIR, default
     ~/.cache/fastscore), announced with one line on stderr; later processes reuse the cache (no line
     then: the cached build carries this process's build description and ninja has nothing to redo).
     FASTSCORE_JIT=0 turns this off.
The library registers torch.ops.fastscore_ext.*, the primitives of protocol.py; this module adds their
fake kernels (register_fake, so code calling them can be traced) and exposes them as the protocol's
functions. No autograd and no reductions here: the public ops (fastscore/ops/) do both, for every
backend alike.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from . import _build
from .protocol import Number, Position, acc_dtype

Tensor = torch.Tensor
_MARKER = b"FASTSCORE_BUILD_INFO["
JIT_NAME = "fastscore_jit_C"
JIT_ENV = "FASTSCORE_JIT"
EXT_ENV = "FASTSCORE_EXT"
CACHE_ENV = "FASTSCORE_CACHE_DIR"


class _State:
    module: ModuleType | None = None
    info: dict[str, str] = {}
    path: str = ""
    error: str | None = None
    tried = False
    skipped: str = ""  # why the installed build was not used, when it was not


_state = _State()


# ---- finding and checking a build ---------------------------------------------------------------

def read_build_info(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The build description embedded in a compiled fastscore extension, read without loading it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    start = data.find(_MARKER)
    if start < 0:
        return None
    start += len(_MARKER)
    end = data.find(b"]", start)
    if end < 0:
        return None
    return _build.decode_info(data[start:end].decode("ascii", "replace"))


def mismatch(info: dict[str, str] | None) -> str | None:
    """Why a build with this description must not be loaded into this process, or None if it may be."""
    if info is None:
        return "it carries no build description"
    if info.get("torch") != torch.__version__ or info.get("torch_git", "") != (torch.version.git_version or ""):
        return f"it was built against torch {info.get('torch', '?')}, this is torch {torch.__version__}"
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if info.get("python") != py:
        return f"it was built for python {info.get('python', '?')}, this is python {py}"
    if info.get("cpu") == "AVX2" and not _build.cpu_has_avx2_fma():
        return "it was compiled for AVX2 and FMA, which this CPU lacks"
    src = source_dir()
    if src is not None and info.get("src") and info["src"] != _build.source_hash(src):
        return f"it was built from other sources than those in {src} (edited since?)"
    return None


def _installed_path() -> str | None:
    """fastscore/_C*.so of this package: looked up directly, not through the import system, whose
    other finders (another install's editable finder, say) could offer some other package's build."""
    here = _build.PACKAGE_DIR
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_C{suffix}"
        if path.is_file():
            return str(path)
    return None


def _import_installed(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastscore._C", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be loaded as a Python extension module")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastscore._C"] = module
    spec.loader.exec_module(module)
    return module


def source_dir() -> Path | None:
    """The C++/CUDA sources: fastscore/csrc when installed, csrc/ beside fastscore/ in a checkout."""
    return _build.find_sources()


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastscore")
    tag = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}".replace("+", "_")
    return Path(root) / tag


def _cached_build_current(build_dir: Path, info: dict[str, str], sources: list[str], cflags: list[str]) -> bool:
    """Whether cpp_extension.load will only load the cached build in build_dir, not compile: the
    library is there with this very build description (torch, python, CPU ISA, CUDA, and the digest
    of every source and header), its build.ninja names these sources and flags, and ninja, asked for
    a dry run, has nothing to redo (no source newer than its object). Errs towards False, which only
    costs an announcement."""
    ninja_file = build_dir / "build.ninja"
    if read_build_info(build_dir / f"{JIT_NAME}.so") != info or not ninja_file.is_file():
        return False
    text = ninja_file.read_text(errors="replace")
    if not all(item in text for item in sources + cflags):
        return False
    ninja = shutil.which("ninja")
    if ninja is None:
        return False
    try:
        dry = subprocess.run([ninja, "-C", str(build_dir), "-n"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return dry.returncode == 0 and "no work to do" in dry.stdout


def _announce_build_lock(lock: Path, stale_after: float) -> None:
    """Say when this process will wait for another one's compile, and clear what a killed compile left.

    Newer torch holds an OS advisory lock on the file (the file stays; the kernel frees the lock when
    its holder dies): probe it without blocking, never delete it. Older torch's lock is the file's
    existence, waited on silently and without limit: remove one older than any build takes."""
    from torch.utils import cpp_extension

    if getattr(cpp_extension, "FileLock", None) is not None:
        from filelock import FileLock, Timeout

        probe = FileLock(str(lock))
        try:
            probe.acquire(timeout=0)
        except Timeout:
            print(f"fastscore: waiting for another process compiling fastscore._C (it holds {lock})",
                  file=sys.stderr)
        else:
            probe.release()
        return
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > stale_after:
        print(f"fastscore: removing {lock}, left {age / 60:.0f} minutes ago by a compile that did not finish",
              file=sys.stderr)
        lock.unlink(missing_ok=True)
    else:
        print(f"fastscore: waiting for another process compiling fastscore._C ({lock}; if no other fastscore "
              "process is running, delete that file)", file=sys.stderr)


def _jit_build(reason: str) -> ModuleType:
    """Compile the sources now (or reuse the cache) against this torch and import the result."""
    import logging

    # torch warns on import when a toolkit is found but no GPU: not news for a CPU build.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    src = source_dir()
    if src is None:
        raise RuntimeError("the C++ sources (fastscore/csrc) are not installed")
    capability = _build.cpu_capability()
    gpu = torch.cuda.is_available()
    with_cuda, _ = _build.cuda_decision(gpu_visible=gpu)
    arch = _build.cuda_arch_list() if with_cuda else None
    info = _build.build_info("jit", capability, with_cuda, arch, src)
    # One folder per source digest and source folder: two versions, or two checkouts of the same one
    # (whose build commands name different paths), never rebuild over each other's library, which a
    # process of the other may have loaded.
    where = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
    build_dir = cache_dir() / f"{'cuda' if with_cuda else 'cpu'}-{info['src']}-{where}"
    build_dir.mkdir(parents=True, exist_ok=True)
    _build.write_info_header(build_dir / "gen", info)
    sources = [str(src / s) for s in _build.cpp_sources(src) + (_build.cuda_sources(src) if with_cuda else [])]
    cflags = _build.cxx_flags(capability, with_cuda)
    if not _cached_build_current(build_dir, info, sources, cflags):
        print(f"fastscore: {reason}; compiling fastscore._C for torch {torch.__version__} "
              f"({'CPU+CUDA' if with_cuda else 'CPU'}) into {build_dir} (first use only)", file=sys.stderr)
    _announce_build_lock(build_dir / "lock", stale_after=(1800.0 if with_cuda else 600.0))
    includes = [str(build_dir / "gen"), str(src)] + (_build.extra_cuda_include_dirs() if with_cuda else [])
    module: ModuleType = cpp_extension.load(
        name=JIT_NAME,
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=_build.nvcc_flags() if with_cuda else None,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=includes,
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        verbose=False,
    )
    return module


def _load() -> ModuleType | None:
    if _state.tried:
        return _state.module
    _state.tried = True
    try:
        explicit = os.environ.get(EXT_ENV)
        path = explicit or _installed_path()
        why = mismatch(read_build_info(path)) if path else None
        if explicit and why is not None:
            if not os.path.isfile(explicit):
                why = "no such file"
            raise RuntimeError(f"{EXT_ENV}={explicit} cannot be used: {why}")
        if path and why is None:
            module = _import_installed(path)
            _state.path = path
        else:
            _state.skipped = f"installed fastscore._C not used: {why}" if path else "no fastscore._C was installed"
            if os.environ.get(JIT_ENV, "1") == "0":
                raise RuntimeError(f"{_state.skipped}, and {JIT_ENV}=0 forbids compiling it now")
            module = _jit_build(_state.skipped)
            _state.path = module.__file__ or ""
        _state.info = _build.decode_info(module.build_info())
        _register_python_parts()
        _bind_ops()
        _state.module = module
    except Exception as exc:  # a failed build must leave the other backends usable
        _state.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return _state.module


def arch_supported(arch_list: str, major: int, minor: int) -> bool:
    """Whether a TORCH_CUDA_ARCH_LIST-style list ("8.0;9.0+PTX", "9.0a") has code for an sm_<major><minor>
    GPU. An arch-specific entry ("9.0a", "10.0f") runs on exactly that major.minor; +PTX also on newer."""
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        try:
            a_major, a_minor = (int(v) for v in entry.removesuffix("+PTX").rstrip("af").split("."))
        except ValueError:
            continue
        if (a_major, a_minor) == (major, minor) or (ptx and (a_major, a_minor) <= (major, minor)):
            return True
    return False


def _cuda_arch_ok(arch_list: str, device: torch.device) -> str | None:
    major, minor = torch.cuda.get_device_capability(device)
    if arch_supported(arch_list, major, minor):
        return None
    return f"fastscore._C was built for CUDA arch {arch_list or '?'}, this GPU is sm_{major}{minor}"


def unavailable_reason(device: torch.device) -> str | None:
    """None when the compiled kernels can run on `device`, else why not. Never raises."""
    try:
        module = _load()
        if module is None:
            return f"the compiled extension could not be loaded ({_state.error})"
        if device.type == "cpu":
            return None
        if device.type == "cuda":
            if not module.with_cuda:
                return "fastscore._C was built without CUDA kernels (reinstall with FASTSCORE_CUDA=1)"
            if not torch.cuda.is_available():
                return "no CUDA device is visible"
            return _cuda_arch_ok(_state.info.get("arch", ""), device)
        return f"fastscore._C has no kernels for {device.type}"
    except Exception as exc:  # noqa: BLE001 - the contract is: never raise
        return f"probing the compiled extension failed: {exc}"


def describe() -> str:
    """One line for `fastscore info`: where the extension came from and what it was built with."""
    module = _load()
    if module is None:
        return f"ext: not available: {_state.error}"
    i = _state.info
    cuda = f"CUDA {i.get('cuda')} arch {i.get('arch')}" if i.get("cuda") else "no CUDA"
    origin = {"pip": "built at install", "jit": "compiled at first use"}.get(i.get("origin", ""), i.get("origin", "?"))
    noise = "AVX2" if module.noise_simd() else "scalar"
    return f"ext: {_state.path} ({origin}; torch {i.get('torch')}, CPU {i.get('cpu')}, CPU noise {noise}, {cuda})"


# ---- fake kernels ---------------------------------------------------------------------------------

_LIB = "fastscore_ext::"


def _like_dense(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor strided as the kernels' output for input x (x's own format when dense)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _per_plane(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], x.shape[1]), dtype=acc_dtype(x))


def _norm_forward_fake(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float,
                       activation: int) -> tuple[Tensor, Tensor, Tensor]:
    return _like_dense(x), _per_plane(x), _per_plane(x)


def _norm_backward_fake(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor,
                        rstd: Tensor, eps: float, activation: int) -> tuple[Tensor, Tensor]:
    k = 3 if beta is not None else 2
    return _like_dense(x), x.new_empty((x.shape[0], k, x.shape[1]), dtype=acc_dtype(x))


def _norm_forward_lookup_fake(x: Tensor, labels: Tensor, table: Tensor, eps: float,
                              activation: int) -> tuple[Tensor, Tensor, Tensor]:
    return _like_dense(x), _per_plane(x), _per_plane(x)


def _norm_backward_lookup_fake(grad_y: Tensor, x: Tensor, labels: Tensor, table: Tensor, mean: Tensor, rstd: Tensor,
                               eps: float, activation: int) -> tuple[Tensor, Tensor]:
    k = table.shape[1] // x.shape[1]
    return _like_dense(x), x.new_empty((x.shape[0], k, x.shape[1]), dtype=acc_dtype(x))


def _register_python_parts() -> None:
    torch.library.register_fake(_LIB + "norm_forward")(_norm_forward_fake)
    torch.library.register_fake(_LIB + "norm_backward")(_norm_backward_fake)
    torch.library.register_fake(_LIB + "norm_forward_lookup")(_norm_forward_lookup_fake)
    torch.library.register_fake(_LIB + "norm_backward_lookup")(_norm_backward_lookup_fake)
    torch.library.register_fake(_LIB + "perturb")(
        lambda x, sigma, seed, offset, *positions: torch.empty(x.shape, dtype=x.dtype, device=x.device))
    torch.library.register_fake(_LIB + "dsm_per_sample")(
        lambda scores, sigma, seed, offset, p, *positions: scores.new_empty((scores.shape[0],),
                                                                            dtype=acc_dtype(scores)))
    torch.library.register_fake(_LIB + "dsm_reduced")(
        lambda scores, sigma, seed, offset, p, reduction, *positions: scores.new_empty((), dtype=acc_dtype(scores)))
    torch.library.register_fake(_LIB + "dsm_per_sample_and_grad")(
        lambda scores, sigma, seed, offset, p, *positions: (
            scores.new_empty((scores.shape[0],), dtype=acc_dtype(scores)),
            torch.empty(scores.shape, dtype=scores.dtype, device=scores.device)))
    torch.library.register_fake(_LIB + "dsm_backward")(
        lambda grad, scores, sigma, seed, offset, p, *positions: torch.empty(scores.shape, dtype=scores.dtype,
                                                                             device=scores.device))
    torch.library.register_fake(_LIB + "langevin_step_")(lambda x, score, step, seed, offset, scale, *tensors: None)
    torch.library.register_fake(_LIB + "normal_")(lambda out, seed, offset: None)
    torch.library.register_fake(_LIB + "philox4x32_10")(lambda words: words.new_empty((words.shape[0], 4)))


# ---- the primitives (protocol.py) ------------------------------------------------------------------
# Called once unavailable_reason(device) has returned None (that probe loads the library), through the
# ops' overloads bound at load: calling torch.ops.fastscore_ext.<name> would resolve the overload packet
# on every call.

class _Ops:
    norm_forward: Any
    norm_backward: Any
    norm_forward_lookup: Any
    norm_backward_lookup: Any
    perturb: Any
    dsm_per_sample: Any
    dsm_reduced: Any
    dsm_per_sample_and_grad: Any
    dsm_backward: Any
    langevin_step_: Any
    normal_: Any


_ops = _Ops()


def _bind_ops() -> None:
    for name in _Ops.__annotations__:
        # the overload's C++ callable itself: OpOverload.__call__ adds a Python frame (its detour,
        # the Python dispatcher of a tracing mode, never applies to these primitives' callers)
        setattr(_ops, name, getattr(torch.ops.fastscore_ext, name).default._op)


def norm_forward(x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, eps: float,
                 activation: int) -> tuple[Tensor, Tensor, Tensor]:
    out: tuple[Tensor, Tensor, Tensor] = _ops.norm_forward(
        x, gamma, alpha, beta, float(eps), int(activation))
    return out


def norm_backward(grad_y: Tensor, x: Tensor, gamma: Tensor, alpha: Tensor, beta: Tensor | None, mean: Tensor,
                  rstd: Tensor, eps: float, activation: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    # The parameter grads come as rows of one (N, K, C) buffer; handed over as views into it.
    return _with_param_views(*_ops.norm_backward(grad_y, x, gamma, alpha, beta, mean, rstd, float(eps),
                                                 int(activation)))


def _with_param_views(dx: Tensor, dparams: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(dx, dgamma, dalpha, dbeta) as views of the (N, K, C) buffer the kernels write; dbeta None when K = 2."""
    rows = dparams.unbind(1)  # one call for the K views (indexing costs a few microseconds each)
    return dx, rows[0], rows[1], (rows[2] if len(rows) == 3 else None)


def norm_forward_lookup(x: Tensor, labels: Tensor, table: Tensor, eps: float,
                        activation: int) -> tuple[Tensor, Tensor, Tensor]:
    out: tuple[Tensor, Tensor, Tensor] = _ops.norm_forward_lookup(x, labels, table, float(eps), int(activation))
    return out


def norm_backward_lookup(grad_y: Tensor, x: Tensor, labels: Tensor, table: Tensor, mean: Tensor, rstd: Tensor,
                         eps: float, activation: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    return _with_param_views(*_ops.norm_backward_lookup(grad_y, x, labels, table, mean, rstd, float(eps),
                                                        int(activation)))


def _stream(seed: Position, offset: Position) -> tuple[int, int, Tensor | None, Tensor | None]:
    """(seed, offset, seed_t, offset_t) as the ops take them: a tensor (read by the kernel on the
    device, never here) goes as a tensor with 0 for its int."""
    seed_t = seed if isinstance(seed, torch.Tensor) else None
    offset_t = offset if isinstance(offset, torch.Tensor) else None
    return (0 if seed_t is not None else int(seed), 0 if offset_t is not None else int(offset), seed_t, offset_t)


def perturb(x: Tensor, sigma: Tensor, seed: Position, offset: Position) -> Tensor:
    out: Tensor = _ops.perturb(x, sigma, *_stream(seed, offset))
    return out


def dsm_per_sample(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float) -> Tensor:
    seed_n, offset_n, seed_t, offset_t = _stream(seed, offset)
    out: Tensor = _ops.dsm_per_sample(scores, sigma, seed_n, offset_n, float(anneal_power), seed_t,
                                                         offset_t)
    return out


_REDUCTION_CODES = {"mean": 1, "sum": 2}


def dsm_reduced(scores: Tensor, sigma: Tensor, seed: Position, offset: Position, anneal_power: float,
                reduction: str) -> Tensor:
    seed_n, offset_n, seed_t, offset_t = _stream(seed, offset)
    out: Tensor = _ops.dsm_reduced(scores, sigma, seed_n, offset_n, float(anneal_power), _REDUCTION_CODES[reduction],
                                   seed_t, offset_t)
    return out


def dsm_per_sample_and_grad(scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                            anneal_power: float) -> tuple[Tensor, Tensor]:
    seed_n, offset_n, seed_t, offset_t = _stream(seed, offset)
    loss, grad = _ops.dsm_per_sample_and_grad(scores, sigma, seed_n, offset_n, float(anneal_power),
                                                                 seed_t, offset_t)
    return loss, grad


def dsm_backward(grad: Tensor, scores: Tensor, sigma: Tensor, seed: Position, offset: Position,
                 anneal_power: float) -> Tensor:
    seed_n, offset_n, seed_t, offset_t = _stream(seed, offset)
    out: Tensor = _ops.dsm_backward(grad, scores, sigma, seed_n, offset_n, float(anneal_power),
                                                       seed_t, offset_t)
    return out


def langevin_step_(x: Tensor, score: Tensor, step_size: Number, seed: Position, offset: Position,
                   noise_scale: Number | None) -> None:
    # Numbers go to the kernel as arguments; one-element tensors (the CUDA-graph form) as tensors the
    # kernel reads on the device, never read back here. noise_scale None is sqrt(2 step), also on the device.
    seed_n, offset_n, seed_t, offset_t = _stream(seed, offset)
    step_n, step_t = (0.0, step_size) if isinstance(step_size, torch.Tensor) else (float(step_size), None)
    scale_n, scale_t = ((0.0, noise_scale) if isinstance(noise_scale, torch.Tensor)
                        else (-1.0 if noise_scale is None else float(noise_scale), None))
    _ops.langevin_step_(x, score, step_n, seed_n, offset_n, scale_n, step_t, seed_t, offset_t,
                                           scale_t)


def randn_(out: Tensor, seed: int, offset: int) -> None:
    _ops.normal_(out, int(seed), int(offset))


def noise_simd(enable: bool | None = None) -> bool:
    """Whether the CPU noise stream runs its AVX2 code (the default on a CPU with AVX2 and FMA, unless
    FASTSCORE_NOISE_SIMD=0); noise_simd(flag) switches it and returns the previous setting. The scalar
    code draws the same bits: this exists to test that, and to time the two."""
    module = _load()
    if module is None:
        raise RuntimeError(f"the compiled extension could not be loaded ({_state.error})")
    return bool(module.noise_simd() if enable is None else module.noise_simd(bool(enable)))
