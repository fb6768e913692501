"""Training and sampling on 2 gloo processes (spawned here, each bounded in time) give what one process
gives: the same weights as one process on the whole batch, the same samples as one process."""
import os

import pytest
import torch

from fastscore.ncsn import distributed, training

from helpers import TinyScore, run_ranks, tiny_training

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")


def test_shares_cover_the_rows_in_order():
    for n in (0, 1, 7, 16):
        for world in (1, 2, 3, 5):
            shares = [distributed.share(n, r, world) for r in range(world)]
            assert shares[0][0] == 0 and shares[-1][1] == n
            assert all(shares[r][1] == shares[r + 1][0] for r in range(world - 1))
            sizes = [b - a for a, b in shares]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def _max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """tests/ddp_worker.py on 2 processes of 8 rows each (the batch is 16 in all)."""
    out = str(tmp_path_factory.mktemp("ddp"))
    run_ranks(2, [WORKER, out])
    return out, [torch.load(os.path.join(out, f"rank{r}.pt")) for r in (0, 1)]


def test_two_processes_train_the_one_process_run(two_process_run):
    _, ranks = two_process_run
    ranks = [r["straight"] for r in ranks]
    # every process holds the same weights, EMA and optimizer state, bit for bit
    for k in ranks[0]["model"]:
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), k
        assert torch.equal(ranks[0]["ema"][k], ranks[1]["ema"][k]), k
    for i, state in ranks[0]["optimizer"].items():
        for k, v in state.items():
            assert torch.equal(v, ranks[1]["optimizer"][i][k]), (i, k)
    one = tiny_training(n_iters=6)
    one.train()
    assert ranks[0]["offset"] == one.noise_offset == 6 * 16 * 100  # the whole batch's positions, once
    diff, ema_diff = _max_diff(one.model.state_dict(), ranks[0]["model"]), _max_diff(one.ema.shadow, ranks[0]["ema"])
    print(f"max |weights(2 processes) - weights(1 process)| = {diff:.3g}, EMA {ema_diff:.3g}")
    assert diff < 1e-5 and ema_diff < 1e-5
    # and not trivially: the run moved the weights far more than that
    torch.manual_seed(0)
    assert _max_diff(TinyScore(4).state_dict(), ranks[0]["model"]) > 1e-3


def test_rank_zero_alone_writes_the_checkpoint_and_log(two_process_run):
    run = os.path.join(two_process_run[0], "straight")
    ckpt = training.load_checkpoint(run)
    assert ckpt["step"] == 6 and ckpt["data"]["world_size"] == 2 and ckpt["data"]["batch_size"] == 16
    rows = open(os.path.join(run, "log.csv")).read().split()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]  # one log, not one per process
    assert not [f for f in os.listdir(run) if ".tmp" in f]


def test_resume_on_the_same_number_of_processes_is_exact(two_process_run):
    for rank in two_process_run[1]:
        straight, resumed = rank["straight"], rank["resumed"]
        for k in straight["model"]:
            assert torch.equal(straight["model"][k], resumed["model"][k]), k
            assert torch.equal(straight["ema"][k], resumed["ema"][k]), k


def test_resume_on_another_number_of_processes_says_what_happens(two_process_run, tmp_path, capsys):
    """A 2-process checkpoint (step 6) resumed by one process continues the same run, to float rounding."""
    one = tiny_training(str(tmp_path), n_iters=9)
    one.resume(os.path.join(two_process_run[0], "straight"))
    assert "trained by 2 process(es) with 1" in capsys.readouterr().err
    one.train()
    straight = tiny_training(n_iters=9)
    straight.train()
    assert _max_diff(straight.model.state_dict(), one.model.state_dict()) < 1e-5


def test_two_processes_sample_the_one_process_images(two_process_run):
    from fastscore.sampling import AnnealedLangevin

    got = two_process_run[1][0]["samples"]
    torch.manual_seed(0)
    model = TinyScore(3, channels=2).eval()
    sampler = AnnealedLangevin(model, (1.0, 0.5, 0.1), n_steps_each=3, step_lr=0.01, shape=(2, 4, 4))
    want = sampler.sample(7, seed=21, progress=False)
    assert got.shape == want.shape
    print(f"max |samples(2 processes) - samples(1 process)| = {(got - want).abs().max().item():.3g}")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
