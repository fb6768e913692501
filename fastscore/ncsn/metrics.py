"""Does a grid of samples look like digits? A small MNIST classifier answers in numbers.

`train_classifier` fits a small CNN on the bundled subset's training split in seconds on a CPU;
`digit_report` then gives, for any batch of images in [0, 1], the classifier's mean confidence (mean
of the top softmax probability), how many of the 10 classes its predictions cover, and the class
histogram. The same figures on held-out real digits are the yardstick printed beside them.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import load_mnist5k

_CACHE: dict[tuple, DigitClassifier] = {}


class DigitClassifier(nn.Module):
    """Two conv blocks and a linear head on 28x28 grey images in [0, 1]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),            # 14x14
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),    # 7x7
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3x3
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * width * 9, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.body(x - 0.13))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels: cheap, and it keeps the classifier from trusting position."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=g)
    dy = torch.randint(0, 5, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(28)).view(n, 1, 28, 1).expand(n, 1, 28, 32)
    shifted = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(28)).view(n, 1, 1, 28).expand(n, 1, 28, 28)
    return shifted.gather(3, cols)


def _junk(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Images that are not digits: pixel-shuffled digits, uniform noise, and smooth random blobs.

    Trained towards the uniform prediction (outlier exposure), so that the classifier's confidence
    on generated samples means something: an untrained sampler's noise scores near 0.1, not 1.0.
    """
    n = x.shape[0]
    third = max(1, n // 3)
    shuffled = x[:third].flatten(1)[:, torch.randperm(784, generator=g)].view(-1, 1, 28, 28)
    # Squared uniform noise at random brightness, from faint (near blank) to full.
    noise = torch.rand((third, 1, 28, 28), generator=g) ** 2 * torch.rand((third, 1, 1, 1), generator=g)
    blobs = F.interpolate(torch.rand((n - 2 * third, 1, 7, 7), generator=g), size=(28, 28),
                          mode="bilinear", align_corners=False)
    return torch.cat([shuffled, noise, (blobs - 0.4).clamp(0, 1) * 1.6])


def train_classifier(epochs: int = 4, batch_size: int = 64, seed: int = 0, width: int = 24,
                     cache: bool = True) -> DigitClassifier:
    """Fit the classifier on the bundled training split (4,500 digits); cached in-process by arguments."""
    key = (epochs, batch_size, seed, width)
    if cache and key in _CACHE:
        return _CACHE[key]
    images, labels = load_mnist5k("train")
    x = images.unsqueeze(1).float() / 255.0
    g = torch.Generator().manual_seed(seed)
    # The global generator drives init and dropout: fork it so training is a function of `seed`
    # and leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(width)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        steps = epochs * (len(x) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(len(x) // batch_size):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                batch = _augment(x[idx], g)
                junk = _junk(batch[: batch_size // 4], g)
                logits = model(torch.cat([batch, junk]))
                loss = F.cross_entropy(logits[:batch_size], labels[idx])
                # Outlier exposure: cross-entropy to the uniform distribution on the junk images.
                loss = loss - 0.5 * F.log_softmax(logits[batch_size:], dim=1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    if cache:
        _CACHE[key] = model
    return model


@dataclass
class DigitReport:
    count: int
    mean_confidence: float       # mean over images of the top softmax probability
    classes_covered: int         # distinct classes among images predicted with probability >= 0.5
    confident_fraction: float    # images whose top probability is at least 0.9
    histogram: list[int]         # predicted-class counts, classes 0..9
    accuracy: float | None = None  # only when true labels are given

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def digit_report(classifier: DigitClassifier, images: torch.Tensor,
                 labels: torch.Tensor | None = None) -> DigitReport:
    """Classifier figures for images (N, 1, H, W) in [0, 1] (values outside are clamped)."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W) grey images, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to measure")
    x = images.detach().float().cpu().clamp(0.0, 1.0)
    probs = torch.cat([F.softmax(classifier(chunk), dim=1) for chunk in x.split(256)])
    top, pred = probs.max(dim=1)
    hist = torch.bincount(pred, minlength=10)
    acc = None if labels is None else float((pred == labels.cpu()).float().mean())
    return DigitReport(
        count=int(x.shape[0]),
        mean_confidence=float(top.mean()),
        classes_covered=int(pred[top >= 0.5].unique().numel()),
        confident_fraction=float((top >= 0.9).float().mean()),
        histogram=[int(h) for h in hist],
        accuracy=acc,
    )


def real_digit_report(classifier: DigitClassifier, count: int | None = None, seed: int = 0) -> DigitReport:
    """The yardstick: the same figures on held-out real digits (a random `count` of the 500, or all)."""
    images, labels = load_mnist5k("test")
    if count is not None and count < len(images):
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
        images, labels = images[idx], labels[idx]
    return digit_report(classifier, images.unsqueeze(1).float() / 255.0, labels)


def timed_classifier(**kwargs) -> tuple[DigitClassifier, float]:
    t0 = time.perf_counter()
    model = train_classifier(**kwargs)
    return model, time.perf_counter() - t0
