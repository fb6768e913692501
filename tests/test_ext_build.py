"""How the ext backend finds, checks and builds fastscore._C (fastscore/backend/ext.py, _build.py).

No compiler runs here: the decisions are tested on their own (build descriptions read from bytes,
torch/python/ISA mismatches, the CUDA arch check), plus what the loaded extension says about itself.
"""
import sys

import pytest
import torch

from fastscore.backend import _build, dispatch, ext


@pytest.fixture(autouse=True)
def _no_explicit_build(monkeypatch):
    """Tests that load afresh model an install or a cache: a FASTSCORE_EXT set for the whole run (the GPU
    run sets one) would take precedence over both."""
    monkeypatch.delenv(ext.EXT_ENV, raising=False)

def _fake_library(tmp_path, info: dict) -> str:
    path = tmp_path / "_C.fake.so"
    path.write_bytes(b"\x7fELF junk" + b"FASTSCORE_BUILD_INFO[" + _build.encode_info(info).encode() + b"] more junk")
    return str(path)


def _this_build(**changes) -> dict:
    info = _build.build_info("pip", "DEFAULT", False, None)
    info.update(changes)
    return info


def test_build_description_round_trips_through_the_binary(tmp_path):
    info = _this_build(cuda="13.0", arch="9.0")
    assert ext.read_build_info(_fake_library(tmp_path, info)) == info
    assert ext.mismatch(info) is None


def test_library_without_description_is_refused(tmp_path):
    path = tmp_path / "other.so"
    path.write_bytes(b"\x7fELF nothing here")
    assert ext.read_build_info(path) is None
    assert "no build description" in ext.mismatch(None)


@pytest.mark.parametrize("changes,why", [
    ({"torch": "2.5.0+cpu"}, "built against torch 2.5.0+cpu"),
    ({"torch_git": "0123abcd"}, "built against torch"),
    ({"python": "3.9"}, "built for python 3.9"),
])
def test_build_for_another_torch_or_python_is_never_loaded(changes, why):
    assert why in ext.mismatch(_this_build(**changes))


def test_avx2_build_refused_on_cpu_without_avx2(monkeypatch):
    monkeypatch.setattr(_build, "cpu_has_avx2_fma", lambda: False)
    assert "AVX2" in ext.mismatch(_this_build(cpu="AVX2"))
    assert ext.mismatch(_this_build(cpu="DEFAULT")) is None


def test_stale_install_with_jit_disabled_gives_a_reason_and_other_backends_still_work(tmp_path, monkeypatch):
    stale = _fake_library(tmp_path, _this_build(torch="1.0.0"))
    monkeypatch.setattr(ext, "_state", ext._State())
    monkeypatch.setattr(ext, "_installed_path", lambda: stale)
    monkeypatch.setenv(ext.JIT_ENV, "0")
    reason = ext.unavailable_reason(torch.device("cpu"))
    assert "built against torch 1.0.0" in reason and "FASTSCORE_JIT=0" in reason
    assert dispatch.unavailable_reason("torch", "cpu") is None


@pytest.mark.parametrize("arch,cap,ok", [
    ("9.0", (9, 0), True), ("8.0;9.0", (8, 6), False), ("8.0+PTX", (9, 0), True),
    ("9.0", (8, 0), False), ("", (9, 0), False),
    # arch-specific code (sm_90a: a TORCH_CUDA_ARCH_LIST of 9.0a) runs on that chip only
    ("9.0a", (9, 0), True), ("9.0a", (10, 0), False), ("10.0f", (10, 0), True),
])
def test_cuda_arch_list_decides_cuda_availability(arch, cap, ok):
    assert ext.arch_supported(arch, *cap) is ok


def test_cuda_build_decision_respects_the_override(monkeypatch):
    monkeypatch.setenv(_build.CUDA_ENV, "0")
    assert _build.cuda_decision(gpu_visible=True) == (False, "FASTSCORE_CUDA=0")
    monkeypatch.delenv(_build.CUDA_ENV)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    with_cuda, why = _build.cuda_decision(gpu_visible=False)
    assert not with_cuda and why


def test_sources_ship_with_the_package():
    src = ext.source_dir()
    assert src is not None
    # fastscore/csrc when installed, csrc/ beside the package in a checkout or an editable install
    assert src in (_build.PACKAGE_DIR / "csrc", _build.PACKAGE_DIR.parent / "csrc")
    assert (_build.PACKAGE_DIR / "__init__.py").is_file() and _build.PACKAGE_DIR.name == "fastscore"
    cpp, cu = _build.cpp_sources(src), _build.cuda_sources(src)
    assert cpp[0] == _build.MODULE_SOURCE and cu
    assert sorted(cpp) == sorted(p.relative_to(src).as_posix() for p in src.rglob("*.cpp"))
    assert sorted(cu) == sorted(p.relative_to(src).as_posix() for p in src.rglob("*.cu"))
    for name in _build.source_files(src):
        assert (src / name).is_file(), name


def _copy_sources(tmp_path):
    import shutil

    copy = tmp_path / "csrc"
    shutil.copytree(ext.source_dir(), copy)
    return copy


def test_source_list_and_hash_follow_the_directory(tmp_path):
    src = _copy_sources(tmp_path)
    before = _build.source_hash(src)
    assert _build.source_hash(src) == before
    # A new translation unit is built, and changes the hash.
    (src / "cpu" / "extra.cpp").write_text("// nothing\n")
    assert "cpu/extra.cpp" in _build.cpp_sources(src)
    with_extra = _build.source_hash(src)
    assert with_extra != before
    (src / "cpu" / "extra.cpp").unlink()
    assert _build.source_hash(src) == before
    # Every header counts, included from anywhere: an edited one invalidates a build.
    for header in [n for n in _build.source_files(src) if n.endswith((".h", ".cuh"))]:
        path = src / header
        text = path.read_text()
        path.write_text(text + "\n// edited\n")
        assert _build.source_hash(src) != before, header
        path.write_text(text)
    assert _build.source_hash(src) == before


def test_stale_jit_build_from_edited_header_is_refused(tmp_path):
    src = _copy_sources(tmp_path)
    info = _build.build_info("jit", "DEFAULT", False, None, src)
    (src / "cpu" / "kernels.h").write_text((src / "cpu" / "kernels.h").read_text() + "// edited\n")
    assert info["src"] != _build.source_hash(src)


def _fake_build_dir(tmp_path, info: dict, sources: list[str], cflags: list[str]):
    """A build directory whose build.ninja 'compiles' sources into a library carrying info."""
    import subprocess

    build = tmp_path / "build"
    build.mkdir()
    marker = "FASTSCORE_BUILD_INFO[" + _build.encode_info(info) + "]"
    rule = f"rule mark\n  command = printf '%s' '{marker}' > $out\n"
    inputs = " ".join(sources)
    (build / "build.ninja").write_text(f"# cflags = {' '.join(cflags)}\n{rule}"
                                       f"build {ext.JIT_NAME}.so: mark {inputs}\n")
    subprocess.run(["ninja", "-C", str(build)], check=True, capture_output=True)
    return build


@pytest.mark.skipif(__import__("shutil").which("ninja") is None, reason="ninja not installed")
def test_cached_build_is_current_only_when_nothing_would_be_compiled(tmp_path):
    import os
    import time

    source = tmp_path / "a.cpp"
    source.write_text("int a;\n")
    info, sources, cflags = _this_build(origin="jit"), [str(source)], ["-O3", "-DX=1"]
    build = _fake_build_dir(tmp_path, info, sources, cflags)
    assert ext._cached_build_current(build, info, sources, cflags)
    assert not ext._cached_build_current(build, dict(info, src="0123"), sources, cflags)  # other sources
    assert not ext._cached_build_current(build, info, sources, cflags + ["-DY"])  # other flags
    assert not ext._cached_build_current(build, info, sources + [str(tmp_path / "b.cpp")], cflags)
    later = time.time() + 10
    os.utime(source, (later, later))  # a source newer than the build: ninja would recompile
    assert not ext._cached_build_current(build, info, sources, cflags)
    assert not ext._cached_build_current(tmp_path / "nothing", info, sources, cflags)


@pytest.mark.parametrize("current", [True, False])
def test_compile_is_announced_only_when_it_happens(tmp_path, monkeypatch, capsys, current):
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setenv(ext.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(_build.CUDA_ENV, "0")
    monkeypatch.setattr(ext, "_cached_build_current", lambda *args: current)
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs) or "module")
    assert ext._jit_build("why") == "module"
    assert [s.split("/csrc/")[-1] for s in calls[0]["sources"]] == _build.cpp_sources(ext.source_dir())
    err = capsys.readouterr().err
    assert ("compiling fastscore._C" in err) is (not current)


def test_loaded_extension_describes_itself():
    reason = ext.unavailable_reason(torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    line = ext.describe()
    assert f"torch {torch.__version__}" in line and line.startswith("ext: ")
    info = ext._state.info
    assert info["torch"] == torch.__version__ and info["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert info["origin"] in ("pip", "jit")
    assert ext.read_build_info(ext._state.path) == info  # the marker the loader checked
    assert ext._state.module.with_cuda is bool(info["cuda"])
    assert _build.decode_info(ext._state.module.build_info()) == info


def test_an_explicit_build_is_used_or_refused_by_name(tmp_path, monkeypatch):
    """FASTSCORE_EXT names one library: never a fallback to the install or a compile."""
    monkeypatch.setattr(ext, "_state", ext._State())
    monkeypatch.setenv(ext.EXT_ENV, str(tmp_path / "missing.so"))
    reason = ext.unavailable_reason(torch.device("cpu"))
    assert f"{ext.EXT_ENV}=" in reason and "no such file" in reason
    monkeypatch.setattr(ext, "_state", ext._State())
    monkeypatch.setenv(ext.EXT_ENV, _fake_library(tmp_path, _this_build(torch="1.0.0")))
    assert "built against torch 1.0.0" in ext.unavailable_reason(torch.device("cpu"))


@pytest.mark.skipif(getattr(__import__("torch.utils.cpp_extension").utils.cpp_extension, "FileLock", None) is None,
                    reason="this torch marks a compile by the lock file's existence")
def test_advisory_build_lock_is_announced_only_while_held_and_never_removed(tmp_path, capsys):
    from filelock import FileLock

    lock = tmp_path / "lock"
    lock.touch()  # what every finished compile leaves behind with an advisory lock
    ext._announce_build_lock(lock, stale_after=0.0)
    assert capsys.readouterr().err == "" and lock.exists()
    with FileLock(str(lock)):  # another holder: a second open file description, even in this process
        ext._announce_build_lock(lock, stale_after=0.0)
    assert "waiting for another process compiling" in capsys.readouterr().err and lock.exists()
