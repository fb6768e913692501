"""fastscore.schedule: the noise-level ladder is ncsn's, value for value, and the step sizes its rule."""
import numpy as np
import pytest
import torch

from fastscore.schedule import langevin_step_sizes, noise_levels


@pytest.mark.parametrize("begin,end,n", [(1.0, 0.01, 10), (50.0, 0.01, 232), (1.0, 0.1, 5), (20.0, 1.0, 10),
                                         (0.3, 0.3, 4), (2.0, 1.0, 1)])
def test_geometric_levels_are_ncsns_float_for_float(begin, end, n):
    ncsn = np.exp(np.linspace(np.log(begin), np.log(end), n))  # ncsn's anneal runner
    got = noise_levels(begin, end, n)
    assert got.dtype == torch.float32 and got.shape == (n,)
    assert torch.equal(got, torch.from_numpy(ncsn).to(torch.float32))
    assert got[0].item() == np.float32(begin) and got[-1].item() == np.float32(end if n > 1 else begin)


def test_linear_levels_are_numpys_linspace():
    assert torch.equal(noise_levels(1.0, 0.01, 7, "linear"),
                       torch.from_numpy(np.linspace(1.0, 0.01, 7)).to(torch.float32))


@pytest.mark.parametrize("args", [(1.0, 0.0, 10), (float("nan"), 0.1, 3), (1.0, float("inf"), 3), (1.0, 0.1, 0),
                                  (1.0, 0.1, 2.5), (1.0, 0.1, 3, "cosine")])
def test_bad_ladders_are_refused(args):
    with pytest.raises(ValueError):
        noise_levels(*args)


def test_step_sizes_follow_ncsns_rule():
    sigmas = noise_levels(1.0, 0.01, 10).tolist()
    sizes = langevin_step_sizes(sigmas, 2e-5)
    assert sizes[-1] == 2e-5 and sizes == tuple(2e-5 * (s / sigmas[-1]) ** 2 for s in sigmas)
