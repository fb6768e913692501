"""Nothing lost, nothing silent: divergence, signals, kills inside a save, full disks, bad files and
arguments, one writer per run directory."""
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

from fastscore.ncsn import training
from fastscore.ncsn.cli import main
from fastscore.ncsn.data import DataUnavailable, _missing, read_image
from fastscore.sampling import AnnealedLangevin

from helpers import make_trainer

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _states(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ---- divergence --------------------------------------------------------------------------------------

def _poison_after(trainer, steps):
    """Make the network's output NaN from the given call on (as a diverging run would)."""
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) > steps:
            return output * float("nan")
        return output

    trainer.model.out.register_forward_hook(hook)


def test_a_diverging_run_stops_names_the_step_and_level_and_keeps_the_last_good_checkpoint(tmp_path):
    t = make_trainer(str(tmp_path), n_iters=40, checkpoint_every=7, log_every=5)
    _poison_after(t, 9)  # step 10's loss is the first NaN
    result = t.train()
    assert result.stopped == "diverged"
    assert "non-finite at step 10 (noise level " in result.message
    assert "--resume --set optim.lr=" in result.message
    assert training.load_checkpoint(str(tmp_path))["step"] == 7  # the save at step 14 never happened
    saved = training.load_checkpoint(str(tmp_path))["model"]
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_the_level_named_is_the_level_of_a_broken_sample():
    t = make_trainer(n_iters=3, log_every=1)
    labels = torch.tensor([2, 0, 3, 1])
    t.watch.update(5, torch.tensor([1.0, 2.0, float("inf"), float("nan")]), labels)
    t.watch.update(6, torch.tensor([float("nan"), 1.0, 1.0, 1.0]), labels)
    assert t.watch.found() == (5, 3)  # the first step, its first non-finite sample's level


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    t = make_trainer(str(tmp_path), n_iters=6, checkpoint_every=3)
    t.train(3)
    with torch.no_grad():  # the averaged weights: the loss stays finite, only the save-time check sees it
        next(iter(t.ema.shadow.values()))[0] = float("inf")
    result = t.train()
    assert result.stopped == "diverged" and "weights are non-finite" in result.message
    assert training.load_checkpoint(str(tmp_path))["step"] == 3


def test_the_sampler_names_where_samples_became_non_finite():
    class Exploding(torch.nn.Module):
        def forward(self, x, labels):  # finite at level 0, blows up from level 1 on
            return torch.where(labels[:, None, None, None] >= 1, x * 1e30, -x)

    sampler = AnnealedLangevin(Exploding(), [1.0, 0.5, 0.1], n_steps_each=4, step_lr=1e-3, shape=(1, 4, 4))
    with pytest.warns(RuntimeWarning, match=r"non-finite at noise level 1 \(sigma 0.5\), Langevin step \d of 4"):
        sampler.sample(2, seed=0, progress=False)
    assert sampler.first_nonfinite is not None and sampler.first_nonfinite[0] == 1
    healthy = AnnealedLangevin(lambda x, labels: -x, [1.0, 0.1], n_steps_each=3, shape=(1, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        healthy.sample(2, seed=0, progress=False)
    assert healthy.first_nonfinite is None


# ---- signals ----------------------------------------------------------------------------------------

def _train_args(tmp_path, n_iters=40):
    return ["train", "--config", "demo", "--workdir", str(tmp_path / "run"), "--n-iters", str(n_iters),
            "--set", "model.ngf=4", "--set", "model.num_classes=3", "--set", "training.batch_size=8",
            "--set", "data.subset=64", "--set", "training.snapshot_freq=1000", "--set", "sampling.n_steps_each=2",
            "--sample-count", "4", "--quiet"]


def _signal_during_training(monkeypatch, signals_at):
    """Send the given signals from inside the given training steps (1-based)."""
    real = training.Trainer.train_step
    count = []

    def step(self, x):
        count.append(1)
        for sig in signals_at.get(len(count), ()):
            signal.raise_signal(sig)
        return real(self, x)

    monkeypatch.setattr(training.Trainer, "train_step", step)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_skips_the_sample_grid_and_exits_128_plus_its_number(tmp_path, capsys, monkeypatch, sig):
    _signal_during_training(monkeypatch, {3: [sig]})
    before = signal.getsignal(signal.SIGTERM)
    assert main(_train_args(tmp_path)) == 128 + sig
    assert training.load_checkpoint(str(tmp_path / "run"))["step"] == 3
    err = capsys.readouterr().err
    assert "finishing this step and saving a checkpoint" in err and "no end-of-run sample grid" in err
    assert not os.path.exists(tmp_path / "run" / "samples")
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_a_second_ctrl_c_stops_at_once_with_one_line(tmp_path, capsys, monkeypatch):
    _signal_during_training(monkeypatch, {2: [signal.SIGINT, signal.SIGINT]})
    assert main(_train_args(tmp_path)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "fastscore: interrupted"


# ---- kills inside a save ----------------------------------------------------------------------------

KILLED_RUN = textwrap.dedent("""
    import os, signal, sys, threading
    sys.path.insert(0, {tests!r})
    from fastscore.ncsn.training import checkpoint
    from helpers import make_trainer
    workdir, point, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
    trainer = make_trainer(workdir, n_iters={steps}, checkpoint_every=4)
    seen = []
    def hook(name):
        if name == point:
            seen.append(1)
            if len(seen) == value:
                os.kill(os.getpid(), signal.SIGKILL)
    if point == "random":  # a moment `value` seconds into training
        threading.Timer(value, os.kill, (os.getpid(), signal.SIGKILL)).start()
    else:
        checkpoint.save_hook = hook
    trainer.train()
""")
STEPS = 60


def test_a_kill_at_any_point_of_a_save_or_any_moment_leaves_a_checkpoint_that_resumes_exactly(tmp_path):
    straight = make_trainer(str(tmp_path / "straight"), n_iters=STEPS, checkpoint_every=4)
    t0 = time.perf_counter()
    straight.train()
    seconds = time.perf_counter() - t0
    want = _states(straight)
    rng = random.Random(0)
    cases = [("written", 2), ("synced", 3), ("renamed", 2)] + [("random", rng.uniform(0.1, 1.0) * seconds)
                                                                 for _ in range(3)]
    script = KILLED_RUN.format(tests=TESTS, steps=STEPS)
    for i, (point, value) in enumerate(cases):
        workdir = str(tmp_path / f"killed{i}")
        rc = subprocess.run([sys.executable, "-c", script, workdir, point, str(value)], cwd=ROOT,
                            timeout=900).returncode
        if point != "random":
            assert rc == -signal.SIGKILL, (point, rc)
        if not os.path.exists(os.path.join(workdir, training.CHECKPOINT_NAME)):
            assert point == "random"  # killed before its first save: nothing to resume, nothing torn
            continue
        resumed = make_trainer(workdir, n_iters=STEPS, checkpoint_every=4)
        resumed.resume(workdir)  # loads: the checkpoint is whole
        resumed.train()
        assert [f for f in os.listdir(workdir) if ".tmp" in f] == []  # a killed save's leftovers are cleared
        got = _states(resumed)
        for k in want:
            assert torch.equal(want[k], got[k]), (point, value, k)


# ---- full disks and bad files -----------------------------------------------------------------------

def test_a_failed_save_keeps_the_previous_checkpoint_and_says_why(tmp_path, capsys, monkeypatch):
    assert main(_train_args(tmp_path, n_iters=2)) == 0
    before = training.load_checkpoint(str(tmp_path / "run"))["step"]
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert main(_train_args(tmp_path, n_iters=4)[:-1] + ["--resume", "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "could not write the checkpoint" in err and "No space left on device" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert training.load_checkpoint(str(tmp_path / "run"))["step"] == before
    assert [f for f in os.listdir(tmp_path / "run") if ".tmp" in f] == []


@pytest.mark.parametrize("command", ["sample", "inpaint", "resume"])
def test_a_truncated_or_foreign_checkpoint_is_one_line_exit_2(tmp_path, capsys, command):
    assert main(_train_args(tmp_path, n_iters=2)) == 0
    path = tmp_path / "run" / training.CHECKPOINT_NAME
    data = path.read_bytes()
    for content in (data[: len(data) // 2], b"not a checkpoint at all"):
        path.write_bytes(content)
        capsys.readouterr()
        argv = (_train_args(tmp_path, n_iters=4) + ["--resume"]) if command == "resume" else \
            [command, str(tmp_path / "run"), "--quiet", "--out", str(tmp_path / "x.png")]
        assert main(argv) == 2
        err = _one_line_error(capsys)
        assert str(path) in err and "not a readable fastscore checkpoint" in err


def test_a_plain_file_as_the_run_directory(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("hello")
    assert main(["sample", str(afile), "--quiet"]) == 2
    assert "not a readable fastscore checkpoint" in _one_line_error(capsys)
    assert main(["train", "--workdir", str(afile), "--quiet"]) == 2
    assert "is a file, not a directory" in _one_line_error(capsys)


@pytest.mark.parametrize("argv,flag", [
    (["sample", "x", "--n", "0"], "--num-samples/--n"), (["sample", "x", "--num-samples", "-3"], "--num-samples/--n"),
    (["inpaint", "x", "--n", "0"], "--n"), (["inpaint", "x", "--per-image", "0"], "--per-image"),
    (["sample", "x", "--step-lr", "-0.003"], "--step-lr"), (["sample", "x", "--steps-each", "0"], "--steps-each"),
    (["train", "--workdir", "w", "--n-iters", "0"], "--n-iters"), (["demo", "--minutes", "nan"], "--minutes"),
])
def test_bad_numbers_on_the_command_line_are_one_line_exit_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {flag}: expected" in err.strip().splitlines()[-1]


def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", "demo", "--workdir", str(tmp_path / "r"), "--set", "model.ngf=wide"]) == 2
    assert "model.ngf" in _one_line_error(capsys)


def test_an_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "cls" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataUnavailable, match=r"broken\.png is not a readable image"):
        read_image(str(bad))


def test_dataset_messages_never_suggest_downloading(tmp_path):
    advice = RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
    message = str(_missing("cifar10", str(tmp_path), "cifar-10-batches-py/", advice))
    assert "download=True" not in message and "never downloads" in message
    assert "cannot be read from" in message  # the folder exists: it is not "not found"
    assert "was not found under" in str(_missing("cifar10", str(tmp_path / "nope"), "cifar-10-batches-py/"))


# ---- one writer per run directory -------------------------------------------------------------------

def test_a_second_run_on_a_held_directory_is_refused_naming_the_holder(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    with training.run_lock(workdir):
        with pytest.raises(training.RunLocked, match=rf"in use by another fastscore run \(pid {os.getpid()} on"):
            make_trainer(workdir, n_iters=2).train()
        assert main(_train_args(tmp_path, n_iters=2)) == 2
        assert f"pid {os.getpid()}" in _one_line_error(capsys)
    assert make_trainer(workdir, n_iters=2).train().stopped == "done"  # released


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from fastscore.ncsn.training import run_lock
        with run_lock({str(workdir)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(training.RunLocked, match=f"pid {holder.pid}"):
        with training.run_lock(str(workdir)):
            pass
    holder.kill()
    holder.wait()
    with training.run_lock(str(workdir)):
        pass
    assert f"taking over the lock of a run that ended without releasing it (pid {holder.pid}" in \
        capsys.readouterr().err


def test_only_rank_0_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with training.run_lock(str(tmp_path)):
        assert not os.path.exists(tmp_path / ".lock")
