"""Helpers for inpainting half-hidden images: which images, which half, and how to lay out the grid.

The sampling itself is fastscore.sampling.AnnealedLangevin.inpaint; these only prepare its inputs and
arrange its outputs for `fastscore inpaint` and `fastscore demo`.
"""
from __future__ import annotations

import torch

from .data import BUNDLED, DataSpec, TensorImages, get_dataset

HALVES = ("top", "bottom", "left", "right")


def half_mask(shape, keep: str = "top") -> torch.Tensor:
    """A float mask of `shape` (N, C, H, W): 1 on the half that is kept (known), 0 on the half to fill."""
    if keep not in HALVES:
        raise ValueError(f"keep must be one of {', '.join(HALVES)}, got {keep!r}")
    n, c, h, w = shape
    mask = torch.zeros(shape)
    if keep == "top":
        mask[:, :, : h // 2] = 1
    elif keep == "bottom":
        mask[:, :, h // 2:] = 1
    elif keep == "left":
        mask[:, :, :, : w // 2] = 1
    else:
        mask[:, :, :, w // 2:] = 1
    return mask


def reference_images(spec: DataSpec, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n held-out images in [0, 1] (N, C, H, W) and their labels. For the bundled subset: its held-out
    split, taking classes in turn (0, 1, ..., 9, 0, ...) so that ten images show ten different digits."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dataset = get_dataset(spec)
    if spec.name == BUNDLED and isinstance(dataset, TensorImages):
        labels = dataset.labels
        order = torch.argsort(labels, stable=True)
        per_class = torch.bincount(labels)
        starts = torch.cumsum(per_class, 0) - per_class
        picks = [int(order[starts[i % 10] + i // 10]) for i in range(n)]
        return dataset.images[picks], labels[picks]
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def inpaint_grid(originals: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor, per_image: int,
                 hidden_value: float = 0.5) -> torch.Tensor:
    """Rows for a grid of len(originals) columns: the inputs (hidden half shown grey), the per_image
    completions (filled holds them as per_image consecutive blocks of len(originals)), the originals."""
    n = originals.shape[0]
    if filled.shape[0] != per_image * n:
        raise ValueError(f"expected {per_image} x {n} completions, got {filled.shape[0]}")
    masked = torch.where(mask.bool(), originals, torch.full_like(originals, hidden_value))
    return torch.cat([masked, filled.to(originals.dtype).cpu(), originals])
