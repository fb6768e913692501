"""FID, IS and KID through torch-fidelity, on Inception weights made here (a randomly initialised network of
the real architecture, saved in torch-fidelity's format): nothing is downloaded."""
import os
from unittest import mock

import numpy as np
import pytest
import torch

pytest.importorskip("torch_fidelity", reason="the eval extra (torch-fidelity) is not installed")
scipy_linalg = pytest.importorskip("scipy.linalg")

from fastscore.ncsn import fidelity  # noqa: E402

from helpers import random_inception  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception(str(tmp_path_factory.mktemp("inception") / "random-inception.pth"))


@pytest.fixture(scope="module")
def inception(weights):
    return fidelity.Inception(weights, batch=16)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    base = torch.randint(40, 180, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    return base, (base.int() + 70).clamp(0, 255).to(torch.uint8)


DIMS = 8  # fewer than the 12 images: full-rank covariances; the metrics on 2048 take minutes on two cores


@pytest.fixture(scope="module")
def features(inception, images):
    """(pool features, logits) of the two sets, the pool features cut to their first DIMS columns."""
    base, shifted = images
    (pa, la), (pb, lb) = inception.features(base, progress=False), inception.features(shifted, progress=False)
    assert pa.shape == (12, 2048) and la.shape == (12, 1008)
    return (pa[:, :DIMS], la), (pb[:, :DIMS], lb)


def test_fid_of_identical_sets_is_about_zero_and_of_shifted_sets_larger(features):
    (pool, _), (shifted, _) = features
    same = fidelity.frechet_distance(fidelity.statistics(pool), fidelity.statistics(pool.clone()))
    apart = fidelity.frechet_distance(fidelity.statistics(pool), fidelity.statistics(shifted))
    scale = float(np.trace(fidelity.statistics(pool)["sigma"]))
    print(f"FID identical {same:.3g}, shifted {apart:.4g} (trace of the covariance {scale:.4g})")
    assert abs(same) < 1e-6 * scale
    assert apart > 1e-2 * scale and apart > 1e4 * abs(same)


def test_frechet_distance_agrees_with_scipy(features):
    (pool, _), (shifted, _) = features
    a, b = pool.numpy(), shifted.numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    got = fidelity.frechet_distance(fidelity.statistics(pool), fidelity.statistics(shifted))
    assert got == pytest.approx(direct, rel=1e-4, abs=1e-6 * np.trace(s1))


def test_inception_score_is_the_formula_on_the_same_logits(features):
    (_, logits), _ = features
    z = logits.numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    direct = float(np.exp((p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean()))
    mean, std = fidelity.inception_score(logits, splits=1)
    assert mean == pytest.approx(direct, rel=1e-9) and std == 0.0
    assert mean > 1.0 + 1e-6  # the random network does not give one class to every image


def test_kid_of_identical_sets_is_about_zero_and_of_shifted_sets_larger(features):
    (pool, _), (shifted, _) = features
    same, _ = fidelity.kernel_inception_distance(pool, pool.clone(), subsets=5)
    apart, _ = fidelity.kernel_inception_distance(pool, shifted, subsets=5)
    assert apart > 0 and abs(same) < 1e-3 * apart


def test_missing_weights_say_where_to_put_them(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(fidelity.EvalUnavailable) as err:
        fidelity.weights_path(missing)
    message = str(err.value)
    assert missing in message and fidelity.WEIGHTS_URL in message and "\n" not in message
    with mock.patch.object(torch.hub, "get_dir", return_value=str(tmp_path)):
        with pytest.raises(fidelity.EvalUnavailable, match=os.path.join(str(tmp_path), "checkpoints")):
            fidelity.weights_path()


def test_reference_statistics_are_cached(inception, images, tmp_path):
    from fastscore.ncsn.data import TensorImages

    base, _ = images
    data = TensorImages(base.float() / 255, torch.zeros(len(base), dtype=torch.long))
    describe = {"name": "test", "root": None, "image_size": 16}
    stats, pool, path = fidelity.reference(data, describe, inception, str(tmp_path), limit=4, progress=False)
    assert os.path.isfile(path) and pool.shape == (4, 2048)
    want, _ = inception.features(base[:4], progress=False)
    torch.testing.assert_close(pool, want)
    with mock.patch.object(fidelity.Inception, "features", side_effect=AssertionError("recomputed")):
        again, pool2, path2 = fidelity.reference(data, describe, inception, str(tmp_path), limit=4)
    assert path2 == path and np.array_equal(again["sigma"], stats["sigma"]) and torch.equal(pool2, pool)
