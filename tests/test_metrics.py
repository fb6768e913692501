"""The digit classifier: accurate on held-out real digits, unconfident on non-digits, honest figures."""
import pytest
import torch

from fastscore.ncsn import metrics
from fastscore.ncsn.data import load_mnist5k


@pytest.fixture(scope="module")
def classifier():
    # Fewer epochs than the demo's default keep this test quick; still well above chance.
    return metrics.train_classifier(epochs=2, width=16, seed=0)


def test_classifier_recognises_held_out_digits(classifier):
    real = metrics.real_digit_report(classifier)
    assert real.count == 500
    assert real.accuracy > 0.9
    assert real.mean_confidence > 0.85
    assert real.classes_covered == 10
    assert sum(real.histogram) == 500 and min(real.histogram) > 30


def test_classifier_is_not_confident_on_junk(classifier):
    g = torch.Generator().manual_seed(5)
    noise = torch.rand((200, 1, 28, 28), generator=g)
    blank = torch.zeros(50, 1, 28, 28)
    for junk in (noise, blank):
        r = metrics.digit_report(classifier, junk)
        assert r.mean_confidence < 0.4, r
        assert r.confident_fraction < 0.1


def test_report_counts_only_confident_classes(classifier):
    images, labels = load_mnist5k("test")
    ones = images[labels == 1][:20].unsqueeze(1).float() / 255
    noise = torch.rand((20, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    r = metrics.digit_report(classifier, torch.cat([ones, noise]))
    # Noise gets some argmax class, but unconfidently: it counts in no covered class.
    assert r.count == 40 and 1 <= r.classes_covered < sum(h > 0 for h in r.histogram)
    assert r.histogram[1] >= 18 and r.accuracy is None
    assert 0.4 < r.mean_confidence < 0.8
    d = r.as_dict()
    assert set(d) >= {"mean_confidence", "classes_covered", "histogram"}


def test_report_resizes_and_validates(classifier):
    images, labels = load_mnist5k("test")
    x = torch.nn.functional.interpolate(images[:64].unsqueeze(1).float() / 255, size=(32, 32), mode="bilinear")
    assert metrics.digit_report(classifier, x, labels[:64]).accuracy > 0.8
    with pytest.raises(ValueError, match="grey"):
        metrics.digit_report(classifier, torch.rand(4, 3, 28, 28))
    with pytest.raises(ValueError, match="no images"):
        metrics.digit_report(classifier, torch.rand(0, 1, 28, 28))


def test_classifier_cache_and_determinism():
    a = metrics.train_classifier(epochs=1, seed=3, width=8)
    assert metrics.train_classifier(epochs=1, seed=3, width=8) is a
    b = metrics.train_classifier(epochs=1, seed=3, width=8, cache=False)
    assert b is not a
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
