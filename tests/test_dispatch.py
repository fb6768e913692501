"""Backend choice: auto, explicit, the FASTSCORE_BACKEND variable, and clear errors."""
import pytest
import torch

import fastscore
from fastscore.backend import dispatch


def test_backends_table_covers_every_backend_and_device():
    rows = fastscore.backends()
    devices = {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())
    assert {(r["backend"], r["device"]) for r in rows} == {(b, d) for b in dispatch.NAMES for d in devices}
    for r in rows:
        assert r["available"] == (r["reason"] == ""), r
    for d in devices:
        assert sum(r["auto"] for r in rows if r["device"] == d) == 1
    assert next(r for r in rows if r["backend"] == "torch" and r["device"] == "cpu")["available"]


def test_auto_prefers_ext_then_torch_on_cpu():
    want = "ext" if dispatch.unavailable_reason("ext", "cpu") is None else "torch"
    assert dispatch.resolve_name("auto", "cpu") == want


@pytest.mark.parametrize("name", ["triton", "ext"])
def test_unavailable_explicit_backend_raises_with_reason(name, monkeypatch):
    module = dispatch._load(name)[0] or pytest.skip(f"{name} cannot be imported")
    monkeypatch.setattr(module, "unavailable_reason", lambda device: "because the test says so")
    dispatch.forget()
    with pytest.raises(fastscore.BackendUnavailable,
                       match=f"backend '{name}' is not available on cpu: because the test says so"):
        fastscore.randn(4, seed=0, backend=name)


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("FASTSCORE_BACKEND", "torch")
    assert dispatch.resolve_name(None, "cpu") == "torch"
    monkeypatch.setenv("FASTSCORE_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="FASTSCORE_BACKEND must be one of"):
        fastscore.randn(4, seed=0)


def test_unknown_backend_argument():
    with pytest.raises(ValueError, match="backend must be one of"):
        fastscore.randn(4, seed=0, backend="numpy")


def test_the_triton_backend_imports_wherever_triton_does():
    """With triton installed, fastscore.kernels must import (installed or from a plain checkout), so
    Triton tests run instead of skipping for a packaging reason."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    import fastscore.kernels

    reason = fastscore.kernels.unavailable_reason("cpu")
    assert reason is None or "TRITON_INTERPRET" in reason


def test_a_plain_checkout_finds_the_triton_backend(tmp_path):
    """A copy of the source tree, not installed, on the path: fastscore.kernels is its kernels/."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(fastscore.__file__).resolve().parent.parent
    for name in ("fastscore", "kernels"):
        shutil.copytree(root / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(root / "setup.py", tmp_path)
    code = "import fastscore.kernels as k; print(k.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == tmp_path / "kernels" / "__init__.py"
