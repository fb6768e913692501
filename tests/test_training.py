"""The trainer on a tiny stand-in score network: ncsn's loss, the noise stream, exact resume,
atomic checkpoints, Ctrl-C, logs."""
import io
import math
import os
import signal

import pytest
import torch
from tqdm import tqdm

import fastscore
from fastscore.ncsn import training
from fastscore.ncsn.training import loop

from helpers import backend_params, make_trainer, requires_cuda


def test_loss_is_ncsns_anneal_dsm_on_the_noise_stream():
    """One step's loss equals ncsn's anneal_dsm_score_estimation written out with the stream's z."""
    t = make_trainer()
    x = torch.rand(6, 1, 10, 10)
    gen_state = t.generator.get_state()
    seed, offset = t.noise_seed, 1000
    t.noise_offset = offset
    loss = t.loss(x)
    assert t.noise_offset == offset + x.numel()  # the offset advances by numel after each use

    g = torch.Generator().manual_seed(0)
    g.set_state(gen_state)
    labels = torch.randint(0, 4, (6,), generator=g)
    sigma = t.sigmas[labels].view(-1, 1, 1, 1)
    z = fastscore.randn(x.shape, seed, offset)
    perturbed = x + sigma * z
    target = -1 / sigma**2 * (perturbed - x)
    scores = t.model(perturbed, labels)
    ncsn = (0.5 * ((scores - target) ** 2).sum(dim=(1, 2, 3)) * sigma.flatten() ** 2).mean()
    torch.testing.assert_close(loss, ncsn, rtol=1e-5, atol=1e-5)
    # The next call draws fresh noise: a new offset, so a different loss for the same input.
    t.generator.set_state(gen_state)
    assert not torch.equal(t.loss(x), loss)


def test_level_power_draws_levels_in_proportion_to_a_power_of_sigma():
    """level_power 0 keeps ncsn's uniform randint draw (the same labels from the same generator state);
    level_power p draws level i with probability sigma_i^p / sum_j sigma_j^p."""
    uniform = make_trainer()
    g = torch.Generator()
    g.set_state(uniform.generator.get_state())
    assert torch.equal(uniform.draw_labels(64), torch.randint(0, 4, (64,), generator=g))
    t = make_trainer(level_power=1.0)
    n = 40000
    freq = torch.bincount(t.draw_labels(n), minlength=4).double() / n
    want = t.sigmas.double() / t.sigmas.double().sum()   # sigmas 1 .. 0.01: 0.79, 0.17, 0.04, 0.01
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)  # 5 standard deviations at most


def test_noise_seed_comes_from_the_run_seed():
    a, b, c = make_trainer(seed=1), make_trainer(seed=1), make_trainer(seed=2)
    assert a.noise_seed == b.noise_seed != c.noise_seed
    assert 0 <= a.noise_seed < 2**63


def _states(t):
    return {**{"model." + k: v for k, v in t.model.state_dict().items()},
            **{"ema." + k: v for k, v in t.ema.shadow.items()}}


def test_resume_is_bit_exact(tmp_path):
    """20 steps in one run == 10 steps, a new process-like restart from the checkpoint, 10 more."""
    straight = make_trainer(str(tmp_path / "a"))
    result = straight.train()
    assert result.step == 20 and result.stopped == "done"

    first = make_trainer(str(tmp_path / "b"))
    first.train(10)
    torch.manual_seed(999)  # a restart does not share the global RNG state
    resumed = make_trainer(str(tmp_path / "b"))
    resumed.resume(str(tmp_path / "b"))
    assert resumed.step == 10
    resumed.train()

    a, b = _states(straight), _states(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in opt_a:
        for k in opt_a[i]:
            assert torch.equal(opt_a[i][k], opt_b[i][k]), (i, k)
    assert straight.noise_offset == resumed.noise_offset == 20 * 16 * 100
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    # The checkpoints on disk agree too, and the resumed log continues the first one.
    ca, cb = training.load_checkpoint(str(tmp_path / "a")), training.load_checkpoint(str(tmp_path / "b"))
    assert ca["step"] == cb["step"] == 20 and ca["noise"] == cb["noise"]
    assert ca["config"] == {"name": "tiny"} and ca["settings"]["n_iters"] == 20
    steps = [line.split(",")[0] for line in open(tmp_path / "b" / "log.csv").read().split()]
    assert steps == ["step", "5", "10", "15", "20"]


def test_resume_refuses_other_settings(tmp_path):
    make_trainer(str(tmp_path), n_iters=3).train()
    with pytest.raises(ValueError, match="noise levels"):
        make_trainer(levels=5).resume(str(tmp_path))
    with pytest.raises(ValueError, match="EMA"):
        make_trainer(ema_rate=0.0).resume(str(tmp_path))
    with pytest.raises(ValueError, match="data order"):
        make_trainer(seed=12).resume(str(tmp_path))


def test_training_lowers_the_loss():
    t = make_trainer(n_iters=80, lr=3e-3, log_every=10)
    losses = [loss for _, loss in t.train().losses]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    # At init the loss is about dims / 2 = 50 (scores near 0); the network learns -z / sigma.
    assert losses[-1] < 0.9 * losses[0] and min(losses[-3:]) < 0.85 * losses[0]


def test_bf16_autocast_trains():
    t = make_trainer(n_iters=4, bf16=True)
    seen = []
    t.model.out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    result = t.train()
    assert seen and seen[0] == torch.bfloat16
    assert math.isfinite(result.last_loss)
    assert all(p.dtype == torch.float32 for p in t.model.parameters())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    training.save_atomic({"format": training.FORMAT, "step": 1}, path)
    real_save = torch.save

    def torn_save(obj, f):
        f.write(b"partial")  # half a file, then the machine dies
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(training.CheckpointError, match="could not write .*disk full.*previous checkpoint"):
        training.save_atomic({"format": training.FORMAT, "step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1  # the old checkpoint survives intact
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # and no temporary file is left behind


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        training.load_checkpoint(str(tmp_path))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fastscore checkpoint"):
        training.load_checkpoint(str(tmp_path / "other.pt"))


def test_ctrl_c_finishes_the_step_and_checkpoints(tmp_path):
    t = make_trainer(str(tmp_path), n_iters=50, checkpoint_every=0)
    calls = []

    def interrupt_at_step_6(module, inputs, output):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)

    t.model.out.register_forward_hook(interrupt_at_step_6)
    # What was there before (Python's default_int_handler, or SIG_IGN in a process started in the
    # background by a shell without job control, which is how SIGINT arrives ignored).
    before = signal.getsignal(signal.SIGINT)
    result = t.train()
    assert result.stopped == "interrupted" and result.step == 6
    assert training.load_checkpoint(str(tmp_path))["step"] == 6
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_time_limit_stops_and_checkpoints(tmp_path):
    t = make_trainer(str(tmp_path), n_iters=10_000, time_limit=1e-9, checkpoint_every=0)
    result = t.train()
    assert result.stopped == "time_limit" and result.step == 1
    assert training.load_checkpoint(str(tmp_path))["step"] == 1


def test_a_run_projected_past_a_day_is_warned_about(monkeypatch, capsys):
    assert training.eta_warning(8.0, 200_000, float("inf"), "cpu").startswith(
        "fastscore: at 8 s per step on cpu, the remaining 200,000 steps would take 18.5 days")
    assert training.eta_warning(0.1, 200_000, float("inf"), "cuda") is None   # 5.6 hours
    assert training.eta_warning(8.0, 200_000, 3600.0, "cpu") is None          # a time limit ends it in an hour
    # In the loop: judged once, after ETA_AFTER_STEPS steps and ETA_AFTER_SECONDS seconds.
    monkeypatch.setattr(loop, "ETA_AFTER_SECONDS", 0.0)
    t = make_trainer(n_iters=10**12)  # projected past a day however fast a step is
    real_step = t.train_step

    def step_then_stop(x):
        if t.step + 1 >= loop.ETA_AFTER_STEPS + 2:
            signal.raise_signal(signal.SIGINT)
        return real_step(x)

    t.train_step = step_then_stop
    t.train()
    err = capsys.readouterr().err
    assert err.count("fastscore: at ") == 1 and "days" in err


def test_one_bar_over_several_calls():
    t = make_trainer(n_iters=6)
    bar = tqdm(file=io.StringIO())
    t.train(n_iters=3, bar=bar)
    t.train(n_iters=6, bar=bar)
    assert bar.n == 6


def test_sample_fn_gets_the_ema_weights(tmp_path):
    got = []
    t = make_trainer(str(tmp_path), n_iters=6, sample_every=3)
    t.sample_fn = lambda model, step: got.append((step, {k: v.clone() for k, v in model.named_parameters()}))
    t.train()
    assert [s for s, _ in got] == [3, 6]
    final = got[-1][1]
    for k, p in t.model.named_parameters():
        assert torch.equal(final[k], t.ema.shadow[k])
        assert not torch.equal(final[k], p)  # the EMA lags the live weights


# ---- no op reads a value back: a whole training step on meta, and on a GPU in sync-error mode -------

def _training_step(model, optimizer, ema, x, sigmas, seed, offset, backend):
    """One NCSN step as the trainer takes it: perturb, the network, dsm_loss, backward, Adam, EMA."""
    labels = torch.randint(0, sigmas.shape[0], (x.shape[0],), device=x.device)
    sigma = sigmas[labels]
    noisy = fastscore.perturb(x, sigma, seed, offset, backend=backend)
    loss = fastscore.dsm_loss(model(noisy, labels), sigma, seed, offset, backend=backend)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    ema.update(model)
    return loss


def _tiny_ncsn(device, backend, monkeypatch):
    from fastscore.ncsn.models import CondRefineNetDilated

    monkeypatch.setenv("FASTSCORE_BACKEND", backend)  # the network's norms take the backend under test
    torch.manual_seed(0)
    with torch.device(device):
        model = CondRefineNetDilated(channels=1, image_size=8, ngf=4, num_classes=3)
        sigmas = torch.tensor([1.0, 0.5, 0.1])
        x = torch.rand(2, 1, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer, training.EMA(model, 0.9), x, sigmas


@pytest.mark.parametrize("backend,device", backend_params(devices=["meta"]))
@pytest.mark.parametrize("position", ["int", "tensor"])
def test_training_step_runs_on_meta(backend, device, position, monkeypatch):
    """The meta device has no values, so any read-back fails there: a whole training step running on it
    proves that no op (and no value check) reads a tensor back to the host."""
    model, optimizer, ema, x, sigmas = _tiny_ncsn(device, backend, monkeypatch)
    seed, offset = (5, 2**33) if position == "int" else (torch.tensor(5, device=device),
                                                         torch.tensor(2**33, device=device))
    loss = _training_step(model, optimizer, ema, x, sigmas, seed, offset, backend)
    assert loss.device.type == "meta" and loss.shape == ()
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())


@requires_cuda
@pytest.mark.parametrize("backend,device", backend_params(names=("triton", "ext"), devices=["cuda"]))
@pytest.mark.parametrize("position", ["int", "tensor"])
def test_training_step_never_synchronises_the_gpu(backend, device, position, monkeypatch):
    """Whole training steps (perturb, network, dsm_loss, backward, Adam, EMA) under
    torch.cuda.set_sync_debug_mode("error"), where any device-to-host read raises. The first step runs
    outside it (kernel builds and library start-up); the offset advances on the device."""
    model, optimizer, ema, x, sigmas = _tiny_ncsn(device, backend, monkeypatch)
    seed = 5 if position == "int" else torch.tensor(5, device=device)
    offset = 2**33 if position == "int" else torch.tensor(2**33, device=device)
    _training_step(model, optimizer, ema, x, sigmas, seed, offset, backend)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            if isinstance(offset, torch.Tensor):
                offset.add_(x.numel())
            else:
                offset += x.numel()
            loss = _training_step(model, optimizer, ema, x, sigmas, seed, offset, backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(loss).item()
