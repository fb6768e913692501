"""How the ext backend finds, checks and builds fastscore._C (fastscore/extension.py, fastscore/_build.py).

No compiler runs here: the decisions are tested on their own (build descriptions read from bytes,
torch/python/ISA mismatches, the CUDA arch check), plus what the loaded extension says about itself.
"""
import sys

import pytest
import torch

from fastscore import _build, dispatch, extension


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
    assert extension.read_build_info(_fake_library(tmp_path, info)) == info
    assert extension.mismatch(info) is None


def test_library_without_description_is_refused(tmp_path):
    path = tmp_path / "other.so"
    path.write_bytes(b"\x7fELF nothing here")
    assert extension.read_build_info(path) is None
    assert "no build description" in extension.mismatch(None)


@pytest.mark.parametrize("changes,why", [
    ({"torch": "2.5.0+cpu"}, "built against torch 2.5.0+cpu"),
    ({"torch_git": "0123abcd"}, "built against torch"),
    ({"python": "3.9"}, "built for python 3.9"),
])
def test_build_for_another_torch_or_python_is_never_loaded(changes, why):
    assert why in extension.mismatch(_this_build(**changes))


def test_avx2_build_refused_on_cpu_without_avx2(monkeypatch):
    monkeypatch.setattr(_build, "cpu_has_avx2_fma", lambda: False)
    assert "AVX2" in extension.mismatch(_this_build(cpu="AVX2"))
    assert extension.mismatch(_this_build(cpu="DEFAULT")) is None


def test_stale_install_with_jit_disabled_gives_a_reason_and_other_backends_still_work(tmp_path, monkeypatch):
    stale = _fake_library(tmp_path, _this_build(torch="1.0.0"))
    monkeypatch.setattr(extension, "_state", extension._State())
    monkeypatch.setattr(extension, "_installed_path", lambda: stale)
    monkeypatch.setenv(extension.JIT_ENV, "0")
    reason = extension.unavailable_reason(torch.device("cpu"))
    assert "built against torch 1.0.0" in reason and "FASTSCORE_JIT=0" in reason
    assert dispatch.unavailable_reason("torch", "cpu") is None


@pytest.mark.parametrize("arch,cap,ok", [
    ("9.0", (9, 0), True), ("8.0;9.0", (8, 6), False), ("8.0+PTX", (9, 0), True),
    ("9.0", (8, 0), False), ("", (9, 0), False), ("9.0a", (9, 0), False),
])
def test_cuda_arch_list_decides_cuda_availability(arch, cap, ok):
    assert extension.arch_supported(arch, *cap) is ok


def test_cuda_build_decision_respects_the_override(monkeypatch):
    monkeypatch.setenv(_build.CUDA_ENV, "0")
    assert _build.cuda_decision(gpu_visible=True) == (False, "FASTSCORE_CUDA=0")
    monkeypatch.delenv(_build.CUDA_ENV)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    with_cuda, why = _build.cuda_decision(gpu_visible=False)
    assert not with_cuda and why


def test_sources_ship_with_the_package():
    src = extension.source_dir()
    assert src is not None
    for name in _build.CPU_SOURCES + _build.CUDA_SOURCES + _build.HEADERS:
        assert (src / name).is_file(), name


def test_loaded_extension_describes_itself():
    reason = dispatch.unavailable_reason("ext", "cpu")
    if reason:
        pytest.skip(reason)
    line = extension.describe()
    assert f"torch {torch.__version__}" in line and line.startswith("ext: ")
    info = extension._state.info
    assert info["torch"] == torch.__version__ and info["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert info["origin"] in ("pip", "jit")
    assert extension.read_build_info(extension._state.path) == info  # the marker the loader checked
