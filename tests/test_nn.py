"""fastscore.nn: norm modules against plain-PyTorch versions written from NCSN's definitions."""
import io

import pytest
import torch
import torch.nn.functional as F

import fastscore.nn as fnn
from fastscore.nn import CondInstanceNorm2d, CondInstanceNorm2dPlus, InstanceNorm2dPlus


def plain_norm_plus(x, gamma, alpha, beta, activation=None):
    """ncsn's ConditionalInstanceNorm2dPlus written with torch ops: instance norm, plus alpha times the
    channel mean standardised across channels (unbiased variance), then gamma * h + beta."""
    means = x.mean(dim=(2, 3))
    m = means.mean(dim=-1, keepdim=True)
    v = means.var(dim=-1, keepdim=True)
    means = (means - m) / torch.sqrt(v + 1e-5)
    h = F.instance_norm(x, eps=1e-5)
    c = x.shape[1]
    h = h + means[..., None, None] * alpha.reshape(-1, c, 1, 1)
    out = gamma.reshape(-1, c, 1, 1) * h
    if beta is not None:
        out = out + beta.reshape(-1, c, 1, 1)
    return {None: out, "elu": F.elu(out), "relu": F.relu(out)}[activation]


def _x(n=3, c=5, h=6, w=7, channels_last=False, dtype=torch.float64):
    x = torch.randn(n, c, h, w, dtype=dtype) * 2 + torch.randn(n, c, 1, 1, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("bias", [True, False])
def test_cond_plus_parameters_and_init(bias):
    torch.manual_seed(0)
    c, k = 256, 10
    norm = CondInstanceNorm2dPlus(c, k, bias=bias)
    assert [n for n, _ in norm.named_parameters()] == ["embed.weight"]
    assert list(norm.buffers()) == []
    w = norm.embed.weight.detach()
    assert w.shape == (k, (3 if bias else 2) * c)
    scale = w[:, : 2 * c]            # gamma and alpha ~ N(1, 0.02)
    assert abs(scale.mean().item() - 1) < 0.003 and abs(scale.std().item() - 0.02) < 0.002
    if bias:
        assert torch.equal(w[:, 2 * c:], torch.zeros(k, c))


def test_cond_plain_parameters_and_init():
    torch.manual_seed(0)
    norm = CondInstanceNorm2d(64, 7)
    w = norm.embed.weight.detach()
    assert w.shape == (7, 128)
    assert 0 <= w[:, :64].min() and w[:, :64].max() <= 1 and torch.equal(w[:, 64:], torch.zeros(7, 64))
    assert CondInstanceNorm2d(64, 7, bias=False).embed.weight.shape == (7, 64)


def test_instance_norm_plus_parameters_and_init():
    torch.manual_seed(0)
    norm = InstanceNorm2dPlus(512)
    assert [(n, tuple(p.shape)) for n, p in norm.named_parameters()] == [
        ("alpha", (512,)), ("gamma", (512,)), ("beta", (512,))]
    for p in (norm.alpha, norm.gamma):
        assert abs(p.mean().item() - 1) < 0.005 and abs(p.std().item() - 0.02) < 0.003
    assert torch.equal(norm.beta.detach(), torch.zeros(512))
    assert [n for n, _ in InstanceNorm2dPlus(8, bias=False).named_parameters()] == ["alpha", "gamma"]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "elu", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_cond_plus_matches_plain_torch(bias, activation, channels_last):
    torch.manual_seed(1)
    c, k = 5, 4
    norm = CondInstanceNorm2dPlus(c, k, bias=bias, activation=activation).double()
    with torch.no_grad():  # fresh parameters: not the near-1 / zero init, so every term matters
        norm.embed.weight.copy_(torch.randn_like(norm.embed.weight))
    x = _x(c=c, channels_last=channels_last).requires_grad_()
    y = torch.tensor([3, 0, 3])
    out = norm(x, y)
    rows = norm.embed.weight[y]
    gamma, alpha = rows[:, :c], rows[:, c: 2 * c]
    beta = rows[:, 2 * c:] if bias else None
    x2 = x.detach().clone().requires_grad_()
    expected = plain_norm_plus(x2, gamma, alpha, beta, activation)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    # Gradients reach the input and the embedding (rows 0 and 3 only).
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, norm.embed.weight), g)
    norm.zero_grad()
    ex, ew = torch.autograd.grad(expected, (x2, norm.embed.weight), g)
    torch.testing.assert_close(gx, ex, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gw, ew, rtol=1e-9, atol=1e-9)
    assert gw[1].abs().max() == 0 and gw[3].abs().max() > 0


@pytest.mark.parametrize("bias", [True, False])
def test_cond_plain_matches_plain_torch(bias):
    torch.manual_seed(2)
    norm = CondInstanceNorm2d(4, 3, bias=bias, activation="elu").double()
    x, y = _x(c=4), torch.tensor([2, 1, 0])
    rows = norm.embed.weight[y]
    expected = rows[:, :4, None, None] * F.instance_norm(x, eps=1e-5)
    if bias:
        expected = expected + rows[:, 4:, None, None]
    torch.testing.assert_close(norm(x, y), F.elu(expected), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_plus_matches_plain_torch(channels_last):
    torch.manual_seed(3)
    norm = InstanceNorm2dPlus(6).double()
    with torch.no_grad():
        for p in norm.parameters():
            p.copy_(torch.randn_like(p))
    x = _x(c=6, channels_last=channels_last)
    expected = plain_norm_plus(x, norm.gamma, norm.alpha, norm.beta)
    torch.testing.assert_close(norm(x), expected, rtol=1e-10, atol=1e-10)
    # Unconditional: the label argument is accepted and ignored.
    torch.testing.assert_close(norm(x, torch.tensor([0, 5, 9])), expected, rtol=1e-10, atol=1e-10)
    out = norm(x.float().requires_grad_())
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in norm.parameters())


def test_float32_modules_close_to_float64():
    torch.manual_seed(4)
    norm = CondInstanceNorm2dPlus(8, 5, activation="elu")
    x, y = torch.randn(2, 8, 9, 9), torch.tensor([4, 1])
    expected = norm.double()(x.double(), y)
    torch.testing.assert_close(norm.float()(x, y), expected.float(), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip():
    torch.manual_seed(5)
    a, b = CondInstanceNorm2dPlus(3, 4), CondInstanceNorm2dPlus(3, 4)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([1, 2])
    assert torch.equal(a(x, y), b(x, y))


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        CondInstanceNorm2dPlus(4, 3, activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        InstanceNorm2dPlus(4, activation="tanh")
    norm = CondInstanceNorm2dPlus(4, 3)
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(TypeError, match="integer"):
        norm(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        norm(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels"):
        norm(x, [0, 1])
    with pytest.raises(IndexError):
        norm(x, torch.tensor([0, 3]))  # label out of range: the op's lookup says so
    with pytest.raises(ValueError, match="x must be 4-D"):
        norm(torch.randn(2, 4, 5), torch.tensor([0, 1]))


def test_modules_use_default_backend(monkeypatch):
    """The modules pass backend=None (fastscore's auto choice) unless told otherwise."""
    seen = []
    real = fnn.cond_instance_norm_plus

    def spy(*args, **kwargs):
        seen.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fnn, "cond_instance_norm_plus", spy)
    real_lookup = fnn.cond_instance_norm_plus_lookup

    def spy_lookup(*args, **kwargs):
        seen.append(kwargs.get("backend"))
        return real_lookup(*args, **kwargs)

    monkeypatch.setattr(fnn, "cond_instance_norm_plus_lookup", spy_lookup)
    x, y = torch.randn(2, 4, 3, 3), torch.tensor([0, 1])
    CondInstanceNorm2dPlus(4, 2)(x, y)
    CondInstanceNorm2d(4, 2)(x, y)
    InstanceNorm2dPlus(4)(x)
    CondInstanceNorm2dPlus(4, 2, backend="torch")(x, y)
    assert seen == [None, None, None, "torch"]
