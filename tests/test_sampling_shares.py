"""A run of n samples split into shares (rows a .. b) gives the n-sample run's samples: the start rows and
the noise positions of each share are that run's (fastscore/sampling.py), so distributed sampling cannot
change what one process draws."""
import pytest
import torch

from fastscore.sampling import AnnealedLangevin, uniform_init

from helpers import TinyScore

SIGMAS = (1.0, 0.5, 0.1)


def test_uniform_init_rows_are_the_rows_of_the_whole_draw():
    full = uniform_init((7, 2, 3, 3), seed=5)
    for a, b in ((0, 7), (0, 3), (3, 7), (2, 5), (6, 7), (4, 4)):
        assert torch.equal(uniform_init((7, 2, 3, 3), seed=5, rows=(a, b)), full[a:b]), (a, b)


def test_uniform_init_rows_skip_in_chunks(monkeypatch):
    """The rows before a share are drawn in chunks (bounded memory) and still land on the same numbers."""
    import fastscore.sampling as sampling

    monkeypatch.setattr(sampling, "_SKIP_CHUNK", 5)  # 5 does not divide a row (18): chunks straddle rows
    full = uniform_init((9, 2, 3, 3), seed=8)
    assert torch.equal(uniform_init((9, 2, 3, 3), seed=8, rows=(4, 9)), full[4:])


@pytest.mark.parametrize("cut", [(0, 2, 5), (0, 1, 4, 5), (0, 3, 5)])
def test_shares_concatenate_to_the_whole_run(cut):
    torch.manual_seed(0)
    model = TinyScore(len(SIGMAS), channels=2).eval()
    sampler = AnnealedLangevin(model, SIGMAS, n_steps_each=3, step_lr=0.01, shape=(2, 4, 4))
    whole = sampler.sample(5, seed=21, progress=False)
    parts = [sampler.sample(b - a, seed=21, progress=False, start=a, total=5)
             for a, b in zip(cut[:-1], cut[1:], strict=True)]
    # a convolution's CPU kernel may sum in another order for another batch size: float rounding only
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-6)


def test_shares_are_bitwise_with_a_batch_independent_score():
    """Where the score does not depend on the batch (an elementwise formula), the shares are the run bit
    for bit: the start rows and the noise positions are exactly the whole run's."""
    def score(x, labels):
        return -(x - 0.3) / (1.0 + labels.to(x.dtype).view(-1, 1, 1, 1))

    sampler = AnnealedLangevin(score, SIGMAS, n_steps_each=4, step_lr=0.02, shape=(1, 3, 5))
    whole = sampler.sample(6, seed=3, progress=False)
    parts = [sampler.sample(2, seed=3, progress=False, start=a, total=6) for a in (0, 2, 4)]
    assert torch.equal(torch.cat(parts), whole)
    x_init = uniform_init((6, 1, 3, 5), seed=3, rows=(2, 6))
    assert torch.equal(sampler.sample(x_init, seed=3, progress=False, start=2, total=6), whole[2:])
    # and a share is not merely some other draw: shifting its start changes it
    assert not torch.equal(sampler.sample(2, seed=3, progress=False, start=2, total=6), whole[:2])


def test_share_outside_the_run_is_refused():
    sampler = AnnealedLangevin(lambda x, i: -x, SIGMAS, n_steps_each=1, shape=(1, 2, 2))
    with pytest.raises(ValueError, match="within the run"):
        sampler.sample(3, seed=0, progress=False, start=2, total=4)


def test_uniform_init_batches_run_through_the_rows_in_order():
    from fastscore.sampling import uniform_init_batches

    full = uniform_init((10, 1, 2, 3), seed=4)
    parts = list(uniform_init_batches((10, 1, 2, 3), 4, (3, 10), batch=3))
    assert [p.shape[0] for p in parts] == [3, 3, 1]
    assert torch.equal(torch.cat(parts), full[3:])
