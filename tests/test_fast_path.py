"""The fast path through a whole NCSN: fused norm + ELU, channels_last end to end, bf16 autocast,
torch.compile with the fused ops as custom ops. Tiny networks; each backend that works here."""
import pytest
import torch

from fastscore.models import CondRefineNetDilated
from fastscore.nn import CondInstanceNorm2dPlus

from helpers import backend_params

SMALL = dict(channels=3, image_size=16, ngf=8, num_classes=4)


def pair(backend, device, **extra):
    torch.manual_seed(0)
    plain = CondRefineNetDilated(**SMALL, **extra).to(device)
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, CondInstanceNorm2dPlus):
                m.embed.weight.normal_(1.0, 0.2)
    fused = CondRefineNetDilated(**SMALL, fuse_norm_act=True, **extra).to(device)
    fused.load_state_dict(plain.state_dict())
    for model in (plain, fused):
        for m in model.modules():
            if isinstance(m, CondInstanceNorm2dPlus):
                m.backend = backend
    return plain, fused


def inputs(device, n=3):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g).to(device), torch.randint(0, 4, (n,), generator=g).to(device)


@pytest.mark.parametrize("backend,device", backend_params())
def test_fused_norm_act_network_equals_unfused(backend, device):
    plain, fused = pair(backend, device)
    assert any(m.activation == "elu" for m in fused.modules() if isinstance(m, CondInstanceNorm2dPlus))
    x, y = inputs(device)
    torch.testing.assert_close(fused(x, y), plain(x, y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", backend_params())
def test_channels_last_flows_through_every_norm(backend, device):
    _, fused = pair(backend, device)
    fused = fused.to(memory_format=torch.channels_last)
    x, y = inputs(device)
    seen = []

    def check(module, args, out):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                    and out.is_contiguous(memory_format=torch.channels_last))

    hooks = [m.register_forward_hook(check) for m in fused.modules() if isinstance(m, CondInstanceNorm2dPlus)]
    out = fused(x.contiguous(memory_format=torch.channels_last), y)
    for h in hooks:
        h.remove()
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} norms saw or made a non-channels_last tensor"
    torch.testing.assert_close(out, fused(x, y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", backend_params())
def test_bf16_autocast_forward_tracks_float32(backend, device):
    _, fused = pair(backend, device)
    x, y = inputs(device)
    want = fused(x, y)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = fused(x, y)
    assert torch.isfinite(got).all()
    rel = ((got.float() - want).norm() / want.norm()).item()
    assert rel < 5e-2, f"bf16 output off by {rel:.3g} relative"


@pytest.mark.parametrize("backend,device", backend_params(names=("ext", "triton")))
def test_network_compiles_as_one_graph(backend, device):
    """torch.compile(fullgraph=True) of forward and backward through the fused ops (aot_eager: the
    tracing and fake-tensor path, without Inductor's minutes of code generation on this CPU). The
    per-op compile tests in test_ops.py cover every backend; this one the whole network, for the fused
    backends on real hardware (Triton's CPU interpreter would take minutes over 71 norm calls)."""
    if backend == "triton" and device == "cpu":
        pytest.skip("the whole network in the Triton interpreter is too slow for CI; per-op tests cover it")
    _, fused = pair(backend, device)
    x, y = inputs(device)

    def loss_fn(x):
        return (fused(x, y) ** 2).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    (g1,) = torch.autograd.grad(compiled(x1), x1)
    (g2,) = torch.autograd.grad(loss_fn(x2), x2)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,device", backend_params(names=("ext", "triton")))
def test_fast_path_samples_follow_the_reference_path(backend, device):
    """Same seed, float32: the fast path (fused norm + ELU, channels_last, fused ops) and the reference
    path (plain-PyTorch ops, unfused, contiguous) draw the same samples to float rounding."""
    from fastscore.sampling import AnnealedLangevin

    if backend == "triton" and device == "cpu":
        pytest.skip("twelve network evaluations in the Triton interpreter are too slow for CI")
    reference, fused = pair("torch", device)
    for m in fused.modules():
        if isinstance(m, CondInstanceNorm2dPlus):
            m.backend = backend
    fused = fused.to(memory_format=torch.channels_last)
    x, _ = inputs(device)
    sigmas = [1.0, 0.6, 0.3, 0.2]
    kwargs = dict(n_steps_each=3, step_lr=1e-3)
    want = AnnealedLangevin(reference, sigmas, backend="torch", **kwargs).sample(x.clone(), seed=11, progress=False)
    got = AnnealedLangevin(fused, sigmas, backend=backend, **kwargs).sample(
        x.contiguous(memory_format=torch.channels_last), seed=11, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
