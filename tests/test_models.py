"""fastscore.models: NCSN score networks whose state_dicts are those of ermongroup/ncsn (and NCSNv2).

The expected parameter lists below are written out from ncsn's models/cond_refinenet_dilated.py
(and NCSNv2's models/ncsnv2.py + layers.py), in their registration order, independently of
fastscore's model code. Forward checks use tiny widths; the full-size networks are only built on the
meta device, for counting.
"""
import io
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastscore.models import (
    CondRefineNetDeeperDilated,
    CondRefineNetDilated,
    NCSNv2,
    NCSNv2Deeper,
    build_model,
    load_ncsn_state_dict,
    ncsn_state_dict,
)
from fastscore.ncsn.config import load_config
from fastscore.nn import CondInstanceNorm2d, CondInstanceNorm2dPlus, InstanceNorm2dPlus

from helpers import backend_params


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a busy CI machine OpenMP threads waiting on
    each other make them 10-50x slower: run these tests single-threaded, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# Expected parameters, from reading the original code


class Expected:
    """Ordered {name: shape} built by following the original constructors line by line."""

    def __init__(self, num_classes, norm="plus"):
        self.p, self.k, self.norm = {}, num_classes, norm

    def cnorm(self, name, c):  # the norm, called as normalization(c, num_classes) (bias=True)
        if self.norm == "plus":        # ConditionalInstanceNorm2dPlus: Embedding(K, 3C)
            self.p[f"{name}.embed.weight"] = (self.k, 3 * c)
        elif self.norm == "plain":     # ConditionalInstanceNorm2d: Embedding(K, 2C)
            self.p[f"{name}.embed.weight"] = (self.k, 2 * c)
        else:                          # NCSNv2 InstanceNorm2dPlus: alpha, gamma, beta
            for p in ("alpha", "gamma", "beta"):
                self.p[f"{name}.{p}"] = (c,)

    def conv(self, name, cin, cout, k=3, bias=True):
        self.p[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            self.p[f"{name}.bias"] = (cout,)

    def resblock(self, name, cin, cout, down, dilated):
        # ConditionalResidualBlock: conv1, normalize2, conv2, [shortcut], normalize1
        if down and not dilated:
            self.conv(f"{name}.conv1", cin, cin)
            self.cnorm(f"{name}.normalize2", cin)
            self.conv(f"{name}.conv2.conv", cin, cout)             # ConvMeanPool(3)
            self.conv(f"{name}.shortcut.conv", cin, cout, k=1)     # ConvMeanPool(kernel_size=1)
        elif down:
            self.conv(f"{name}.conv1", cin, cin)                   # dilated_conv3x3, bias
            self.cnorm(f"{name}.normalize2", cin)
            self.conv(f"{name}.conv2", cin, cout)
            self.conv(f"{name}.shortcut", cin, cout)               # dilated 3x3 shortcut
        else:
            self.conv(f"{name}.conv1", cin, cout)
            self.cnorm(f"{name}.normalize2", cout)
            self.conv(f"{name}.conv2", cout, cout)
            if cin != cout:
                self.conv(f"{name}.shortcut", cin, cout)
        self.cnorm(f"{name}.normalize1", cin)

    def rcu(self, name, c, n_blocks, norms=True):
        for i in range(1, n_blocks + 1):
            for j in (1, 2):
                if norms:
                    self.cnorm(f"{name}.{i}_{j}_norm", c)
                self.conv(f"{name}.{i}_{j}_conv", c, c, bias=False)

    def refine(self, name, in_planes, features, start=False, end=False, norms=True):
        for i, c in enumerate(in_planes):
            self.rcu(f"{name}.adapt_convs.{i}", c, 2, norms)
        self.rcu(f"{name}.output_convs", features, 3 if end else 1, norms)
        if not start:   # CondMSFBlock: convs (bias) then norms
            for i, c in enumerate(in_planes):
                self.conv(f"{name}.msf.convs.{i}", c, features, bias=True)
            if norms:
                for i, c in enumerate(in_planes):
                    self.cnorm(f"{name}.msf.norms.{i}", c)
        for i in range(2):  # CondCRPBlock: convs (no bias) then norms
            self.conv(f"{name}.crp.convs.{i}", features, features, bias=False)
        if norms:
            for i in range(2):
                self.cnorm(f"{name}.crp.norms.{i}", features)


def expected_ncsn(ngf, channels, num_classes):
    """CondRefineNetDilated(config)."""
    e = Expected(num_classes)
    e.conv("begin_conv", channels, ngf)
    e.cnorm("normalizer", ngf)
    e.conv("end_conv", ngf, channels)
    g = ngf
    e.resblock("res1.0", g, g, False, False); e.resblock("res1.1", g, g, False, False)              # noqa: E702
    e.resblock("res2.0", g, 2 * g, True, False); e.resblock("res2.1", 2 * g, 2 * g, False, False)  # noqa: E702
    e.resblock("res3.0", 2 * g, 2 * g, True, True); e.resblock("res3.1", 2 * g, 2 * g, False, True)  # noqa: E702
    e.resblock("res4.0", 2 * g, 2 * g, True, True); e.resblock("res4.1", 2 * g, 2 * g, False, True)  # noqa: E702
    e.refine("refine1", [2 * g], 2 * g, start=True)
    e.refine("refine2", [2 * g, 2 * g], 2 * g)
    e.refine("refine3", [2 * g, 2 * g], g)
    e.refine("refine4", [g, g], g, end=True)
    return e.p


def expected_ncsn_deeper(ngf, channels, num_classes):
    """CondRefineNetDeeperDilated(config): ConditionalInstanceNorm2d throughout."""
    e = Expected(num_classes, norm="plain")
    e.conv("begin_conv", channels, ngf)
    e.cnorm("normalizer", ngf)
    e.conv("end_conv", ngf, channels)
    g = ngf
    e.resblock("res1.0", g, g, False, False); e.resblock("res1.1", g, g, False, False)              # noqa: E702
    e.resblock("res2.0", g, 2 * g, True, False); e.resblock("res2.1", 2 * g, 2 * g, False, False)  # noqa: E702
    e.resblock("res3.0", 2 * g, 2 * g, True, False); e.resblock("res3.1", 2 * g, 2 * g, False, False)  # noqa: E702
    e.resblock("res4.0", 2 * g, 4 * g, True, True); e.resblock("res4.1", 4 * g, 4 * g, False, True)  # noqa: E702
    e.resblock("res5.0", 4 * g, 4 * g, True, True); e.resblock("res5.1", 4 * g, 4 * g, False, True)  # noqa: E702
    e.refine("refine1", [4 * g], 4 * g, start=True)
    e.refine("refine2", [4 * g, 4 * g], 2 * g)
    e.refine("refine3", [2 * g, 2 * g], 2 * g)
    e.refine("refine4", [2 * g, 2 * g], g)
    e.refine("refine5", [g, g], g, end=True)
    return e.p


def expected_ncsnv2(ngf, channels):
    """NCSNv2(config): InstanceNorm2dPlus in residual blocks and the final normalizer, norm-free refine
    blocks; ResidualBlock's non-dilated convs have biases as in NCSNv2's conv3x3."""
    e = Expected(None, norm="v2")
    e.conv("begin_conv", channels, ngf)
    e.cnorm("normalizer", ngf)
    e.conv("end_conv", ngf, channels)
    g = ngf
    e.resblock("res1.0", g, g, False, False); e.resblock("res1.1", g, g, False, False)              # noqa: E702
    e.resblock("res2.0", g, 2 * g, True, False); e.resblock("res2.1", 2 * g, 2 * g, False, False)  # noqa: E702
    e.resblock("res3.0", 2 * g, 2 * g, True, True); e.resblock("res3.1", 2 * g, 2 * g, False, True)  # noqa: E702
    e.resblock("res4.0", 2 * g, 2 * g, True, True); e.resblock("res4.1", 2 * g, 2 * g, False, True)  # noqa: E702
    e.refine("refine1", [2 * g], 2 * g, start=True, norms=False)
    e.refine("refine2", [2 * g, 2 * g], 2 * g, norms=False)
    e.refine("refine3", [2 * g, 2 * g], g, norms=False)
    e.refine("refine4", [g, g], g, end=True, norms=False)
    return e.p


def shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Names, shapes, counts


@pytest.mark.parametrize("channels,image_size,ngf,millions", [(3, 32, 128, 30.1), (1, 28, 64, 7.6)])
def test_ncsn_parameters_full_size(channels, image_size, ngf, millions):
    with torch.device("meta"):  # no memory, no init cost
        model = CondRefineNetDilated(channels=channels, image_size=image_size, ngf=ngf, num_classes=10)
    expected = expected_ncsn(ngf, channels, 10)
    # Same names in the same order (optimizer states are indexed by it), same shapes.
    assert list(shapes(model).items()) == list(expected.items())
    total = sum(torch.Size(s).numel() for s in expected.values())
    assert n_params(model) == total
    assert round(total / 1e6, 1) == millions
    assert list(model.buffers()) == []


def test_ncsn_deeper_parameters():
    with torch.device("meta"):
        model = CondRefineNetDeeperDilated(channels=3, image_size=64, ngf=128, num_classes=10)
    assert list(shapes(model).items()) == list(expected_ncsn_deeper(128, 3, 10).items())
    small = CondRefineNetDeeperDilated(channels=3, ngf=4, num_classes=3)
    assert all(isinstance(m, CondInstanceNorm2d) for m in small.modules() if "Norm" in type(m).__name__)
    plus = CondRefineNetDeeperDilated(channels=3, ngf=4, num_classes=3, norm="instance++")
    assert plus.normalizer.embed.weight.shape == (3, 12)


def test_ncsnv2_parameters():
    with torch.device("meta"):
        model = NCSNv2(channels=3, image_size=32, ngf=128, num_classes=232, sigma_begin=50, sigma_end=0.01)
    assert list(shapes(model).items()) == list(expected_ncsnv2(128, 3).items())
    assert [n for n, _ in model.named_buffers()] == ["sigmas"]
    assert model.sigmas.shape == (232,)


def test_every_norm_is_a_fastscore_module():
    model = CondRefineNetDilated(ngf=4, num_classes=3)
    norms = [m for m in model.modules() if isinstance(m, CondInstanceNorm2dPlus)]
    assert len(norms) == sum(1 for k in expected_ncsn(4, 1, 3) if k.endswith("embed.weight"))
    v2 = NCSNv2(ngf=4, num_classes=3)
    assert sum(isinstance(m, InstanceNorm2dPlus) for m in v2.modules()) == 17  # 8 blocks x 2 + normalizer


# ---------------------------------------------------------------------------------------------------
# Forward: against the same network with a plain-PyTorch norm


class PlainCondNormPlus(nn.Module):
    """ncsn's ConditionalInstanceNorm2dPlus computed with torch ops (same parameter)."""

    def __init__(self, embed, c):
        super().__init__()
        self.embed, self.c = embed, c

    def forward(self, x, y):
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        means = x.mean(dim=(2, 3))
        means = (means - means.mean(-1, keepdim=True)) / torch.sqrt(means.var(-1, keepdim=True) + 1e-5)
        h = F.instance_norm(x, eps=1e-5) + means[..., None, None] * alpha[..., None, None]
        return gamma[..., None, None] * h + beta[..., None, None]


class PlainActivated(nn.Module):
    def __init__(self, inner, activation):
        super().__init__()
        self.inner, self.activation = inner, activation

    def forward(self, x, y=None):
        out = self.inner(x, y)
        return F.elu(out) if self.activation == "elu" else out


def with_plain_norms(model):
    """A copy of `model` whose fastscore norms are replaced by PlainCondNormPlus (sharing weights)."""
    plain = __import__("copy").deepcopy(model)
    replaced = 0
    for _, module in list(plain.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, CondInstanceNorm2dPlus):
                new = PlainActivated(PlainCondNormPlus(child.embed, child.num_features), child.activation)
                setattr(module, child_name, new)
                replaced += 1
    assert replaced > 0
    return plain


def _inputs(n, channels, size, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def _randomize_norms(model, seed=0):
    """Move norm parameters off their init (gamma ~ 1, beta 0) so every term of the norm matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed" in name or name.rsplit(".", 1)[-1] in ("alpha", "gamma", "beta"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_forward_matches_plain_torch_norm(size, channels):
    torch.manual_seed(0)
    model = CondRefineNetDilated(channels=channels, image_size=size, ngf=4, num_classes=5).eval()
    _randomize_norms(model)
    x, y = _inputs(3, channels, size, 5)
    with torch.no_grad():
        out = model(x, y)
        expected = with_plain_norms(model)(x, y)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_fused_activation_same_values():
    torch.manual_seed(1)
    plain = CondRefineNetDilated(ngf=4, num_classes=3)
    fused = CondRefineNetDilated(ngf=4, num_classes=3, fuse_norm_act=True)
    fused.load_state_dict(plain.state_dict(), strict=True)
    _randomize_norms(plain)
    fused.load_state_dict(plain.state_dict())
    assert fused.normalizer.activation == "elu" and fused.refine1.crp.norms[0].activation is None
    x, y = _inputs(2, 1, 28, 3)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, y), plain(x, y), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused(x, y), with_plain_norms(fused)(x, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,size", [(CondRefineNetDilated, 28), (CondRefineNetDeeperDilated, 64),
                                       (NCSNv2, 32), (NCSNv2Deeper, 64)])
def test_channels_last_and_backward(arch, size):
    torch.manual_seed(2)
    model = arch(channels=1, ngf=4, num_classes=4)
    x, y = _inputs(2, 1, size, 4)
    out = model(x, y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out_cl = model(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4 * out.abs().max().item())
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl2 = model_cl(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(out_cl2, out, rtol=1e-4, atol=1e-4 * out.abs().max().item())
    out_cl2.square().mean().backward()
    missing = [n for n, p in model_cl.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_input_transform():
    """ncsn maps [0, 1] inputs to [-1, 1] (2x - 1) unless logit_transform: check via begin_conv's input."""
    model = CondRefineNetDilated(ngf=4, num_classes=2)
    seen = []
    model.begin_conv.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    x, y = _inputs(2, 1, 28, 2)
    model(x, y)
    model.logit_transform = True
    model(x, y)
    torch.testing.assert_close(seen[0], 2 * x - 1)
    torch.testing.assert_close(seen[1], x)


def test_ncsnv2_divides_by_sigma():
    """Unconditional trunk: s(x, y) * sigma[y] does not depend on y."""
    torch.manual_seed(3)
    model = NCSNv2(channels=1, image_size=28, ngf=4, num_classes=6, sigma_begin=5.0, sigma_end=0.1)
    torch.testing.assert_close(model.sigmas, torch.logspace(torch.log10(torch.tensor(5.0)), -1, 6))
    x = torch.rand(1, 1, 28, 28).expand(6, 1, 28, 28).contiguous()
    y = torch.arange(6)
    with torch.no_grad():
        out = model(x, y)
    scaled = out * model.sigmas.view(-1, 1, 1, 1)
    torch.testing.assert_close(scaled, scaled[:1].expand_as(scaled), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[0], out[5])
    custom = NCSNv2(channels=1, ngf=4, sigmas=[3.0, 2.0, 1.0])
    assert custom.num_classes == 3 and custom.sigmas.tolist() == [3.0, 2.0, 1.0]


# ---------------------------------------------------------------------------------------------------
# Checkpoints and configs


def test_state_dict_round_trip():
    torch.manual_seed(4)
    a = CondRefineNetDilated(ngf=4, num_classes=3)
    _randomize_norms(a)
    torch.manual_seed(5)
    b = CondRefineNetDilated(ngf=4, num_classes=3)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    x, y = _inputs(2, 1, 28, 3)
    with torch.no_grad():
        assert torch.equal(a(x, y), b(x, y))


def test_load_ncsn_checkpoint_layout(tmp_path):
    """ncsn saves [DataParallel(model).state_dict(), optimizer.state_dict()]: keys prefixed 'module.'."""
    torch.manual_seed(6)
    a = CondRefineNetDilated(ngf=4, num_classes=3)
    states = [{f"module.{k}": v for k, v in a.state_dict().items()}, {"state": {}, "param_groups": []}]
    path = tmp_path / "checkpoint.pth"
    torch.save(states, path)
    b = CondRefineNetDilated(ngf=4, num_classes=3)
    load_ncsn_state_dict(b, str(path))
    assert all(torch.equal(b.state_dict()[k], v) for k, v in a.state_dict().items())
    assert list(ncsn_state_dict(a.state_dict())) == list(a.state_dict())  # no prefix: unchanged
    wrong = CondRefineNetDilated(ngf=8, num_classes=3)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_ncsn_state_dict(wrong, states)


def ncsn_namespace(channels, image_size, ngf, num_classes, logit_transform=False):
    """What ncsn's main.py makes of anneal.yml: nested argparse-style namespaces."""
    return types.SimpleNamespace(
        data=types.SimpleNamespace(dataset="MNIST", image_size=image_size, channels=channels,
                                   logit_transform=logit_transform, random_flip=False),
        model=types.SimpleNamespace(sigma_begin=1, sigma_end=0.01, num_classes=num_classes, batch_norm=False,
                                    ngf=ngf))


def test_constructor_accepts_configs_and_keywords():
    ref = CondRefineNetDilated(channels=3, image_size=32, ngf=4, num_classes=7)
    for config in (ncsn_namespace(3, 32, 4, 7),
                   load_config("cifar10", {"model.ngf": 4, "model.num_classes": 7}),
                   {"data": {"channels": 3, "image_size": 32}, "model": {"ngf": 4, "num_classes": 7}}):
        model = CondRefineNetDilated(config)
        assert shapes(model) == shapes(ref)
        assert model.hparams == ref.hparams
    # Keywords override the config.
    model = CondRefineNetDilated(ncsn_namespace(3, 32, 4, 7), ngf=2)
    assert model.ngf == 2 and model.begin_conv.weight.shape == (2, 3, 3, 3)
    assert CondRefineNetDilated(ncsn_namespace(1, 28, 4, 7, logit_transform=True)).logit_transform
    with pytest.raises(ValueError, match="ngf"):
        CondRefineNetDilated(ngf=0)
    with pytest.raises(ValueError, match="norm"):
        CondRefineNetDilated(ngf=4, norm="batch")


def test_build_model_from_config():
    config = load_config("mnist", {"model.ngf": 4})
    model = build_model(config)
    assert type(model) is CondRefineNetDilated and model.ngf == 4 and model.begin_conv.in_channels == 1
    config = load_config("celeba", {"model.ngf": 4, "model.arch": "CondRefineNetDeeperDilated",
                                    "data.image_size": 64})
    assert type(build_model(config)) is CondRefineNetDeeperDilated
    v2 = build_model(load_config("cifar10", {"model.ngf": 4, "model.arch": "NCSNv2"}))
    torch.testing.assert_close(v2.sigmas[[0, -1]], torch.tensor([1.0, 0.01]))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(config, arch="UNet")


def test_bad_inputs():
    model = CondRefineNetDilated(ngf=4, num_classes=3)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.rand(2, 1, 27, 28), y)
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(2, 3, 28, 28), y)
    with pytest.raises(ValueError, match="y must be"):
        model(torch.rand(2, 1, 28, 28), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="multiples of 4"):
        CondRefineNetDeeperDilated(ngf=4, num_classes=3)(torch.rand(2, 3, 30, 30), y)


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the whole network, fastscore norms included (the eager
    backend keeps this fast: it checks tracing, not code generation)."""
    torch._dynamo.reset()
    model = CondRefineNetDilated(ngf=2, num_classes=3, fuse_norm_act=True)
    x, y = _inputs(2, 1, 28, 3)
    with torch.no_grad():
        expected = model(x, y)
        out = torch.compile(model, backend="eager", fullgraph=True)(x, y)
    torch.testing.assert_close(out, expected)
    torch._dynamo.reset()


def test_bfloat16_autocast():
    # (Instance norm++ standardises channel means across only 4 channels here; for an unlucky init
    # their spread is tiny and bf16 rounding of the conv outputs is amplified: seed 8 is a typical one.)
    torch.manual_seed(8)
    model = CondRefineNetDilated(ngf=4, num_classes=3)
    x, y = _inputs(2, 1, 28, 3)
    with torch.no_grad():
        expected = model(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, y)
    assert out.dtype == torch.bfloat16
    # Rounding to bf16 through ~40 layers: a few elements can be far off, the whole stays close.
    assert ((out.float() - expected).norm() / expected.norm()).item() < 0.05


def _fill_deterministic(model, seed):
    """Set every parameter from a generator, visiting names in sorted order: any network with ncsn's
    names and shapes gets the same weights, whatever its code."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            p = state[name]
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("embed.weight"):
                p.copy_(1 + 0.3 * z)
            elif p.dim() == 4:
                p.copy_(z / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * z)


# Outputs of ermongroup/ncsn's own CondRefineNetDilated / CondRefineNetDeeperDilated, run once in
# float64 with these weights and inputs (its CondMSFBlock accumulator, a float32 zeros tensor, switched
# to the input dtype so that float64 is float64 throughout): sum, sum of squares, and six elements of
# the flattened output.
NCSN_GOLDEN = {
    "CondRefineNetDilated": (
        (1, 28, 4), -1581.3837080595974, 2502.35549974268, [0, 313, 626, 940, 1253, 1567],
        [0.16152213323558015, -0.7043751976598276, 0.05929571036329473, -0.9492889868555887,
         -0.9485468255555811, -3.088377926705433]),
    "CondRefineNetDeeperDilated": (
        (3, 64, 2), -19393.41076007268, 27474.6491858392, [0, 4915, 9830, 14745, 19660, 24575],
        [0.9055638920744461, -0.9400531882867798, -0.7683749271474379, 0.246032222572054,
         -1.1513171815081202, -0.40486238549809006]),
}


@pytest.mark.parametrize("arch", [CondRefineNetDilated, CondRefineNetDeeperDilated])
def test_outputs_equal_ncsn(arch):
    (channels, size, ngf), total, squares, index, values = NCSN_GOLDEN[arch.__name__]
    model = arch(ncsn_namespace(channels, size, ngf, 3)).double()
    _fill_deterministic(model, 0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, channels, size, size, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, torch.tensor([2, 0]))
    assert out.sum().item() == pytest.approx(total, rel=1e-9)
    assert out.square().sum().item() == pytest.approx(squares, rel=1e-9)
    assert out.flatten()[index].tolist() == pytest.approx(values, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("backend,device", backend_params(names=("ext", "triton"), devices=["cuda"]))
@pytest.mark.parametrize("fuse", [False, True])
def test_cuda_forward_backward_matches_plain_torch_norm(fuse, backend, device):
    """On the GPU, each fused backend, with channels_last, against plain-PyTorch norms."""
    torch.manual_seed(9)
    model = CondRefineNetDilated(channels=3, image_size=32, ngf=8, num_classes=5, fuse_norm_act=fuse)
    _randomize_norms(model)
    for module in model.modules():
        if isinstance(module, CondInstanceNorm2dPlus):
            module.backend = backend
    model = model.cuda().to(memory_format=torch.channels_last)
    plain = with_plain_norms(model)
    x, y = _inputs(4, 3, 32, 5)
    x, y = x.cuda().contiguous(memory_format=torch.channels_last), y.cuda()
    out, expected = model(x, y), plain(x, y)
    scale = expected.abs().max().item()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * scale)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, list(model.parameters()), g)
    expected_grads = torch.autograd.grad(expected, list(plain.parameters()), g)
    for (name, _), a, b in zip(model.named_parameters(), grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item() + 1e-6, msg=name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_bf16 = model(x, y)
    assert out_bf16.dtype == torch.bfloat16 and torch.isfinite(out_bf16).all()
    assert ((out_bf16.float() - out).norm() / out.norm()).item() < 0.05


@pytest.mark.parametrize("backend,device", backend_params())
def test_every_backend_runs_the_network(backend, device):
    """The network on each available backend (FASTSCORE_BACKEND) agrees with the torch reference."""
    torch.manual_seed(10)
    model = CondRefineNetDilated(ngf=4, num_classes=3).to(device)
    _randomize_norms(model)
    x, y = _inputs(2, 1, 28, 3)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, CondInstanceNorm2dPlus):
                module.backend = "torch"
        expected = model(x, y)
        for module in model.modules():
            if isinstance(module, CondInstanceNorm2dPlus):
                module.backend = backend
        out = model(x, y)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crp_box_average_is_avg_pool_5x5_with_padding_counted(dtype):
    from fastscore.ncsn.models.layers import BoxAverage5

    x = torch.randn(3, 5, 9, 7, dtype=dtype, requires_grad=True)
    grad = torch.randn(3, 5, 9, 7, dtype=dtype)
    want = nn.AvgPool2d(kernel_size=5, stride=1, padding=2)(x)
    got = BoxAverage5()(x)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    (g_want,) = torch.autograd.grad(want, x, grad)
    (g_got,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(g_got, g_want, rtol=tol, atol=tol)
    # the corners average 9 real pixels over 25 (padding counted), as ncsn's AvgPool2d does
    ones = BoxAverage5()(torch.ones(1, 1, 6, 6, dtype=dtype))
    assert ones[0, 0, 0, 0].item() == pytest.approx(9 / 25) and ones[0, 0, 2, 2].item() == pytest.approx(1.0)
