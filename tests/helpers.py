"""What the tests share: devices, backend parameters, NaN-poisoned outputs, the reference norm and the
tolerances against it."""
import contextlib

import pytest
import torch

from fastscore.backend import dispatch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def requires_cuda(test):
    """Skip without a CUDA device; marked gpu so the GPU run selects it."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def backend_params(names=dispatch.NAMES, devices=None):
    """(backend, device) pairs for every backend on every device (or on `devices`, which may name a
    device this machine lacks); unavailable ones skip with the reason."""
    params = []
    for device in DEVICES if devices is None else devices:
        for name in names:
            reason = dispatch.unavailable_reason(name, device)
            marks = [pytest.mark.skip(reason=f"{name} on {device}: {reason}")] if reason else []
            params.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return params


@contextlib.contextmanager
def poisoned_empty():
    """Make torch.empty (and so every kernel's output allocation) fill floats with NaN."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


def reference_norm(inputs, has_beta, activation, dy, dtype):
    """(y, grads of x, gamma, alpha[, beta]) of the reference norm on copies of inputs in dtype, as
    float64: in float64 the ground truth; in float32 a measure of the op's conditioning at these
    inputs (where channel means are nearly equal, muhat = (mu - m) / sqrt(v + eps) amplifies the
    rounding of mu, and no float32 code does better than the reference run in float32)."""
    from fastscore.backend import reference

    ref = [t.detach().to(dtype).requires_grad_() for t in inputs]
    y = reference.cond_instance_norm_plus(*ref[:3], ref[3] if has_beta else None, 1e-5, activation)
    grads = torch.autograd.grad(y, ref, dy.to(dtype))
    return y.double(), [g.double() for g in grads]


def tolerances(dtype):
    """(rtol, atol) for comparing a backend's output in `dtype` with the float64 reference."""
    if dtype in (torch.bfloat16, torch.float16):
        return 2e-2, 2e-2
    return 1e-5, 1e-5


def assert_close(got, want, dtype, name, extra_atol=0.0):
    """got (in dtype) against the float64 want at tolerances(dtype), plus extra_atol; NaN is a failure
    (an element no kernel wrote, under poisoned_empty)."""
    rtol, atol = tolerances(dtype)
    assert not torch.isnan(got).any(), f"{name} has NaN (unwritten elements?)"
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), rtol=rtol, atol=atol + extra_atol,
                               msg=lambda m: f"{name}: {m}")


class TinyScore(torch.nn.Module):
    """A stand-in for the NCSN networks: model(x, labels) -> scores, conditioned on the level."""

    def __init__(self, levels, channels=1, width=8):
        super().__init__()
        self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.embed = torch.nn.Embedding(levels, width)
        self.out = torch.nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, labels):
        return self.out(torch.nn.functional.elu(self.inp(x) + self.embed(labels)[:, :, None, None]))


def make_trainer(workdir=None, n_iters=20, levels=4, **overrides):
    """A Trainer of TinyScore on 96 bundled digits at 10 px: seconds per run, exact resume."""
    from fastscore.ncsn.data import BatchStream, Preprocess, TensorImages, mnist5k_dataset
    from fastscore.ncsn.training import Trainer, TrainSettings
    from fastscore.schedule import noise_levels

    torch.manual_seed(0)  # the model's init; everything else comes from settings.seed
    full = mnist5k_dataset("train", image_size=10)
    ds = TensorImages(full.images[:96], full.labels[:96])
    kw = dict(n_iters=n_iters, batch_size=16, ema_rate=0.9, log_every=5, checkpoint_every=7, seed=11)
    kw.update(overrides)
    settings = TrainSettings(**kw)
    return Trainer(TinyScore(levels), noise_levels(1.0, 0.01, levels), BatchStream(ds, 16, settings.seed),
                   settings, Preprocess(random_flip=True), workdir=workdir, config={"name": "tiny"},
                   progress=False)


def tiny_training(workdir=None, group=None, n_iters=6, batch_size=16):
    """A Trainer of TinyScore on 96 bundled digits at 10 px, DDP-wrapped when group is distributed: the
    same run whatever the number of processes (the batch is the batch of all processes together)."""
    from fastscore.ncsn.data import BatchStream, Preprocess, TensorImages, mnist5k_dataset
    from fastscore.ncsn.training import Trainer, TrainSettings
    from fastscore.schedule import noise_levels

    torch.manual_seed(0)  # the model's init, the same on every process
    full = mnist5k_dataset("train", image_size=10)
    ds = TensorImages(full.images[:96], full.labels[:96])
    settings = TrainSettings(n_iters=n_iters, batch_size=batch_size, ema_rate=0.9, log_every=2, checkpoint_every=3,
                             seed=11, lr=3e-3)
    model = TinyScore(4)
    forward = None
    if group is not None and group.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(model)
    return Trainer(model, noise_levels(1.0, 0.01, 4), BatchStream(ds, batch_size, settings.seed), settings,
                   Preprocess(random_flip=True), workdir=workdir, config={"name": "tiny"}, progress=False,
                   forward=forward, group=group)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world, argv, timeout=120):
    """Run `python *argv` as `world` processes with torchrun's variables (gloo on this machine), each
    bounded by `timeout` seconds; fail with every process's output if any fails or runs over."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, cwd=root, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs, failed = [], False
    for rank, p in enumerate(procs):
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            text, _ = p.communicate()
            text += f"\n[rank {rank} ran over {timeout} s and was killed]"
        failed |= p.returncode != 0
        outputs.append(f"--- rank {rank} (exit {p.returncode})\n{text}")
    if failed:
        pytest.fail("a distributed run failed:\n" + "\n".join(outputs))
    return outputs


def random_inception(path):
    """Inception weights made here: torch-fidelity's Inception-v3, randomly initialised (He initialisation,
    which keeps the signal's scale through its ReLU layers), saved in its format at `path`."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from fastscore.ncsn import fidelity

    torch.save({}, path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):  # keep the random initialisation
            net = FeatureExtractorInceptionV3("inception-v3-compat", list(fidelity.FEATURES),
                                              feature_extractor_weights_path=path)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        torch.nn.init.normal_(net.fc.weight, std=0.2)
    torch.save(net.state_dict(), path)
    return path
