"""Training images: the bundled MNIST subset, and torchvision datasets from a local directory.

Every dataset here yields (image, label) with image a float32 (C, H, W) tensor in [0, 1]; the random
parts of ncsn's data pipeline (horizontal flips, dequantization noise, the logit transform) are
applied by the trainer to whole batches (see `preprocess`), drawing from the trainer's own generator,
so that a resumed run sees the very same numbers as an uninterrupted one.

Batches come from `BatchStream`, whose order is a pure function of (seed, step): the permutation of
epoch e is drawn from a generator seeded with (seed, e), so resuming at step k needs no saved
iterator state.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

BUNDLED = "mnist5k"
DATASETS = (BUNDLED, "mnist", "cifar10", "celeba", "folder")
CHANNELS = {BUNDLED: 1, "mnist": 1, "cifar10": 3, "celeba": 3, "folder": 3}
HELD_OUT_PER_CLASS = 50  # the last 50 digits of each class (500 in all) are never trained on


# ----------------------------------------------------------------------------- the bundled subset

def load_mnist5k(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled 5,000 MNIST digits (500 per class) as uint8 (N, 28, 28) images and int64 labels.

    split: "train" (4,500), "test" (the fixed held-out 500: the last 50 of each class in file
    order) or "all". The split is fixed so that classifier figures are comparable between runs.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    with resources.files(__package__).joinpath("assets/mnist_5k.npz").open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    if split != "all":
        # Rank of each digit within its class, in file order.
        rank = np.zeros(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rank[idx] = np.arange(len(idx))
        per_class = np.bincount(labels)[labels]
        held_out = rank >= per_class - HELD_OUT_PER_CLASS
        keep = held_out if split == "test" else ~held_out
        images, labels = images[keep], labels[keep]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


class TensorImages(torch.utils.data.Dataset):
    """In-memory images as float32 (N, C, H, W) in [0, 1] plus labels; batches are gathered by index."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def mnist5k_dataset(split: str = "train", image_size: int = 28) -> TensorImages:
    images, labels = load_mnist5k(split)
    x = images.unsqueeze(1).to(torch.float32) / 255.0
    if image_size != 28:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).clamp_(0.0, 1.0)
    return TensorImages(x, labels)


# ----------------------------------------------------------------------------- torchvision datasets

class DataUnavailable(RuntimeError):
    """A dataset's files (or torchvision) are not there; the message says what to do."""


def _torchvision():
    try:
        import torchvision
        from torchvision import transforms
    except ImportError as exc:
        raise DataUnavailable(
            "this dataset is read through torchvision, which is not installed: "
            "`pip install torchvision` (or `pip install fastscore[vision]`), or use the bundled "
            f"dataset '{BUNDLED}' which needs nothing ({exc})") from exc
    return torchvision, transforms


def _missing(name: str, root: str, expected: str, exc: Exception | None = None) -> DataUnavailable:
    # torchvision's own advice ("You can use download=True ...") contradicts fastscore's rule: cut it.
    reason = " ".join(part for part in str(exc or "").split(". ") if "download" not in part).strip(" .")
    detail = f" ({reason})" if reason else ""
    where = "cannot be read from" if os.path.isdir(root) else "was not found under"
    return DataUnavailable(
        f"{name} {where} {root!r}: expected {expected}. fastscore never downloads data; "
        f"put the files there (torchvision's layout) or pass --data-root, or use the bundled "
        f"dataset '{BUNDLED}'{detail}")


def read_image(path: str) -> Any:
    """An image folder's loader: the image as RGB, or DataUnavailable naming the file that is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataUnavailable(f"{path} is not a readable image ({type(exc).__name__}: {exc}); remove it from "
                              "the image folder or replace it") from None


def torchvision_dataset(name: str, root: str, image_size: int, split: str = "train"):
    """MNIST, CIFAR-10, CelebA or an image folder from a local directory (no downloads).

    Transforms are deterministic (resize, crop, to [0, 1]) as in ncsn's runners; random flips are
    the trainer's job. Raises DataUnavailable with what to do when files or torchvision are missing.
    """
    if name not in DATASETS or name == BUNDLED:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if not root:
        raise DataUnavailable(f"dataset {name!r} needs --data-root (a local directory holding it)")
    if not os.path.isdir(root):
        raise _missing(name, root, "an existing directory")
    tv, T = _torchvision()
    train = split == "train"
    try:
        if name == "mnist":
            tf = T.Compose([T.Resize(image_size), T.ToTensor()])
            return tv.datasets.MNIST(root, train=train, transform=tf, download=False)
        if name == "cifar10":
            tf = T.Compose([T.Resize(image_size), T.ToTensor()])
            return tv.datasets.CIFAR10(root, train=train, transform=tf, download=False)
        if name == "celeba":
            # ncsn: center-crop 140 then resize.
            tf = T.Compose([T.CenterCrop(140), T.Resize(image_size), T.ToTensor()])
            return tv.datasets.CelebA(root, split="train" if train else "test", transform=tf,
                                      download=False)
        tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()])
        return tv.datasets.ImageFolder(root, transform=tf, loader=read_image)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        expected = {
            "mnist": "MNIST/raw/*-ubyte files",
            "cifar10": "cifar-10-batches-py/",
            "celeba": "celeba/img_align_celeba/ and celeba/list_eval_partition.txt etc.",
            "folder": "one sub-directory of images per class",
        }[name]
        raise _missing(name, root, expected, exc) from exc


@dataclass
class DataSpec:
    name: str = BUNDLED
    root: str | None = None
    image_size: int = 28
    split: str = "train"


def get_dataset(spec: DataSpec):
    """A dataset of (float (C, H, W) in [0, 1], label) for the spec; the bundled one is in memory."""
    if spec.name == BUNDLED:
        return mnist5k_dataset(spec.split, spec.image_size)
    return torchvision_dataset(spec.name, spec.root, spec.image_size, spec.split)


# ----------------------------------------------------------------------------- batches

class BatchStream:
    """Batches whose order is a pure function of (seed, step): epoch e uses randperm seeded (seed, e).

    Each epoch yields len(dataset) // batch_size full batches (the remainder is dropped, as ncsn's
    DataLoader with shuffle does over time). `batches(start_step)` resumes anywhere.
    """

    def __init__(self, dataset, batch_size: int, seed: int, num_workers: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) < batch_size:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = int(seed)
        self.num_workers = num_workers
        self.per_epoch = len(dataset) // batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return torch.randperm(len(self.dataset), generator=g)

    def indices(self, start_step: int, rows: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
        """The dataset indices of each batch; rows (a, b): only rows a .. b of each (a process's share)."""
        a, b = rows if rows is not None else (0, self.batch_size)
        step = start_step
        while True:
            epoch, i = divmod(step, self.per_epoch)
            perm = self.permutation(epoch)
            for j in range(i, self.per_epoch):
                yield perm[j * self.batch_size + a:j * self.batch_size + b]
            step = (epoch + 1) * self.per_epoch

    def batches(self, start_step: int = 0,
                rows: tuple[int, int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (images, labels) batches from global step `start_step` on; rows (a, b): rows a .. b of
        each batch only, so that each process of a distributed run reads just its share."""
        if rows is not None and not 0 <= rows[0] < rows[1] <= self.batch_size:
            raise ValueError(f"rows must satisfy 0 <= a < b <= batch_size ({self.batch_size}), got {rows}")
        if isinstance(self.dataset, TensorImages):
            for idx in self.indices(start_step, rows):
                yield self.dataset.images[idx], self.dataset.labels[idx]
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_IndexSampler(self.indices(start_step, rows)),
            num_workers=self.num_workers, persistent_workers=False)
        for x, y in loader:
            yield x, torch.as_tensor(y)


class _IndexSampler(torch.utils.data.Sampler):
    def __init__(self, it):
        self.it = it

    def __iter__(self):
        for idx in self.it:
            yield idx.tolist()


# ----------------------------------------------------------------------------- ncsn's preprocessing

@dataclass
class Preprocess:
    """ncsn's data pipeline on a [0, 1] batch: random horizontal flip, uniform dequantization
    (x * 255/256 + U(0, 1/256), as ncsn's anneal runner), and the optional logit transform."""
    random_flip: bool = False
    dequantize: bool = True
    logit_transform: bool = False
    lam: float = 1e-6

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 share: tuple[int, int] | None = None) -> torch.Tensor:
        """share (start, total): x is rows start .. start + len(x) of a batch of `total`; the random
        numbers are drawn for the whole batch and this share's rows kept, so that the processes of a
        distributed run together apply what one process applies to the whole batch."""
        n = x.shape[0]
        start, total = share if share is not None else (0, n)
        rows = slice(start, start + n)
        if self.random_flip:
            flip = (torch.rand(total, generator=generator, device=generator.device) < 0.5)[rows]
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
        if self.dequantize:
            u = torch.rand((total,) + tuple(x.shape[1:]), generator=generator, device=generator.device)[rows]
            x = x / 256.0 * 255.0 + u.to(x.device) / 256.0
        if self.logit_transform:
            x = logit(x, self.lam)
        return x

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images as the network sees them, without the random parts (for inpainting references)."""
        return logit(x, self.lam) if self.logit_transform else x

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] image space (for writing samples)."""
        if self.logit_transform:
            x = torch.sigmoid(x)
        return x.clamp(0.0, 1.0)


def logit(x: torch.Tensor, lam: float = 1e-6) -> torch.Tensor:
    x = lam + (1 - 2 * lam) * x
    return torch.log(x) - torch.log1p(-x)
