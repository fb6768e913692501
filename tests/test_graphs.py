"""The CUDA-graph sampler: the captured update replays the eager trajectory exactly."""
import pytest
import torch

from fastscore.backend import dispatch
from fastscore.sampling import AnnealedLangevin

from helpers import requires_cuda

SIGMAS = [1.0, 0.5, 0.25]
LEVELS = len(SIGMAS)


class TinyScore(torch.nn.Module):
    """A small conv score model, conditional on the level through an embedding."""

    def __init__(self, channels=3, levels=LEVELS):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.embed = torch.nn.Embedding(levels, channels)

    def forward(self, x, y):
        return torch.tanh(self.conv(x)) - x * self.embed(y)[:, :, None, None]


def test_cuda_graph_true_without_gpu_or_fused_backend_is_an_error():
    sampler = AnnealedLangevin(TinyScore(), SIGMAS, n_steps_each=2, shape=(3, 4, 4), cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True needs x on a GPU"):
        sampler.sample(2, seed=0, progress=False)


def test_cuda_graph_rejects_non_bool():
    with pytest.raises(ValueError, match="cuda_graph must be"):
        AnnealedLangevin(TinyScore(), SIGMAS, cuda_graph="yes")


@requires_cuda
@pytest.mark.parametrize("backend", ["ext", "triton"])
def test_graph_replay_matches_eager_loop(backend):
    if dispatch.unavailable_reason(backend, "cuda"):
        pytest.skip(dispatch.unavailable_reason(backend, "cuda"))
    torch.manual_seed(0)
    model = TinyScore().cuda()
    kwargs = dict(n_steps_each=7, step_lr=1e-2, shape=(3, 16, 16), backend=backend)
    steps = []
    eager = AnnealedLangevin(model, SIGMAS, cuda_graph=False, **kwargs).sample(5, seed=42, progress=False)
    graphed = AnnealedLangevin(model, SIGMAS, cuda_graph=True, **kwargs).sample(
        5, seed=42, progress=False, callback=lambda i, level, x: steps.append((i, level)))
    assert steps == [(i, i // 7) for i in range(21)]
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    other_seed = AnnealedLangevin(model, SIGMAS, cuda_graph=True, **kwargs).sample(5, seed=43, progress=False)
    assert not torch.allclose(other_seed, graphed), "a new seed must give fresh noise through the graph"


@requires_cuda
def test_graph_inpainting_matches_eager():
    if dispatch.resolve_name(None, "cuda") == "torch":
        pytest.skip("no fused backend on CUDA")
    torch.manual_seed(1)
    model = TinyScore().cuda()
    reference = torch.rand(4, 3, 8, 8, device="cuda")
    mask = torch.zeros(1, 1, 8, 8, device="cuda")
    mask[..., :4, :] = 1
    kwargs = dict(n_steps_each=5, step_lr=1e-2)
    eager = AnnealedLangevin(model, SIGMAS, cuda_graph=False, **kwargs).inpaint(reference, mask, seed=3, progress=False)
    graphed = AnnealedLangevin(model, SIGMAS, cuda_graph=True, **kwargs).inpaint(reference, mask, seed=3,
                                                                                 progress=False)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)


@requires_cuda
@pytest.mark.parametrize("name, options", [("consistent", dict(eta=0.6, steps=2)), ("reverse", {}),
                                           ("pc", dict(steps=2)), ("euler", {}), ("heun", {})])
def test_every_sampler_replays_its_eager_trajectory(name, options):
    from fastscore.samplers import create

    if dispatch.resolve_name(None, "cuda") == "torch":
        pytest.skip("no fused backend on CUDA")
    torch.manual_seed(2)
    model = TinyScore().cuda()
    x0 = torch.rand(4, 3, 8, 8, device="cuda")
    eager = create(name, model, SIGMAS, cuda_graph=False, **options).sample(x0, seed=5, progress=False)
    graphed = create(name, model, SIGMAS, cuda_graph=True, **options).sample(x0, seed=5, progress=False)
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
