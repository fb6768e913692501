"""The captured training step: where it is used, and on a GPU the same weights as the eager step."""
import pytest
import torch

from fastscore.ncsn import training
from fastscore.ncsn.training import graph_step

from helpers import backend_params, make_trainer


def test_the_cpu_trains_eagerly_and_a_forced_graph_says_why_not():
    t = make_trainer(n_iters=2)
    assert not t.captured and graph_step.unavailable_reason(t) == "the model is on cpu, not a CUDA GPU"
    t.train()
    assert t.graph_step is None
    with pytest.raises(ValueError, match="cuda_graph=True cannot capture the training step: the model is on cpu"):
        make_trainer(cuda_graph=True)


def make_cuda_trainer(backend, workdir=None, **overrides):
    """make_trainer's run with the model built on the GPU (same initial weights: seeded on the CPU)."""
    from fastscore.ncsn.data import BatchStream, Preprocess, TensorImages, mnist5k_dataset
    from fastscore.schedule import noise_levels

    from helpers import TinyScore

    torch.manual_seed(0)
    model = TinyScore(4).cuda()
    full = mnist5k_dataset("train", image_size=10)
    ds = TensorImages(full.images[:96], full.labels[:96])
    kw = dict(n_iters=8, batch_size=16, ema_rate=0.9, log_every=4, checkpoint_every=0, seed=11, backend=backend)
    kw.update(overrides)
    settings = training.TrainSettings(**kw)
    return training.Trainer(model, noise_levels(1.0, 0.01, 4), BatchStream(ds, 16, settings.seed), settings,
                            Preprocess(random_flip=True), workdir=workdir, progress=False)


def _assert_same_weights(a, b):
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")
    for k in a.ema.shadow:
        torch.testing.assert_close(b.ema.shadow[k], a.ema.shadow[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend,device", backend_params(names=("triton", "ext"), devices=["cuda"]))
def test_captured_training_gives_the_eager_weights_and_resumes_exactly(backend, device, tmp_path):
    eager = make_cuda_trainer(backend, cuda_graph=False)
    eager.train()
    captured = make_cuda_trainer(backend)
    assert captured.captured
    captured.train()
    assert captured.graph_step is not None and captured.graph_step.graph is not None  # 3 warm-up steps, then replays
    _assert_same_weights(eager, captured)
    assert captured.noise_offset == eager.noise_offset
    # Resume: 4 steps, a new trainer from the checkpoint, 4 more == 8 straight.
    first = make_cuda_trainer(backend, workdir=str(tmp_path), n_iters=4)
    first.train()
    resumed = make_cuda_trainer(backend, workdir=str(tmp_path))
    resumed.resume(str(tmp_path))
    resumed.train()
    _assert_same_weights(captured, resumed)
    # The flag turns it off.
    off = make_cuda_trainer(backend, cuda_graph=False)
    off.train()
    assert not off.captured and off.graph_step is None
