"""Backend choice: auto, explicit, the FASTSCORE_BACKEND variable, and clear errors."""
import pytest
import torch

import fastscore
from fastscore import dispatch


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
    dispatch._resolved_name.cache_clear()
    with pytest.raises(fastscore.BackendUnavailable, match=f"backend '{name}' is not available on cpu: because the test says so"):
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
