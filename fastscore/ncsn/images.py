"""Sample grids as PNG files: make_grid tiles a batch, save_png writes it with Pillow.

Kept free of torchvision on purpose: a tiled grid is a few lines of indexing, and Pillow alone
decodes and encodes PNG. Pillow is imported only when a file is written, so `import fastscore`
stays cheap.
"""
from __future__ import annotations

import math
import os

import torch


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile a batch (N, C, H, W) into one (C, H', W') float32 image on the CPU, values clamped to [0, 1].

    nrow images per row (default: ceil(sqrt(N)), a square-ish grid); `padding` pixels of `pad_value`
    between images and around the border. Values are clamped because samplers return unclamped x
    (ncsn clamps only when it saves a grid). A (C, H, W) tensor is treated as a batch of one.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("images must hold at least one image, got N = 0")
    if c not in (1, 3):
        raise ValueError(f"images must have 1 (grey) or 3 (RGB) channels, got C = {c}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    nrow = math.ceil(math.sqrt(n)) if nrow is None else nrow
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol_images = min(nrow, n)
    nrows = math.ceil(n / nrow)
    images = images.detach().to("cpu", torch.float32).nan_to_num(0.0).clamp(0.0, 1.0)
    grid = torch.full(
        (c, padding + nrows * (h + padding), padding + ncol_images * (w + padding)), float(pad_value)
    )
    for i in range(n):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) floats in [0, 1] -> (H, W, C) uint8, rounding to the nearest level."""
    return (image.detach().to("cpu", torch.float32).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0)


def save_png(image: torch.Tensor, path: str | os.PathLike, **grid_kwargs) -> str:
    """Write a (C, H, W) image, or a batch (N, C, H, W) tiled by make_grid(**grid_kwargs), as a PNG.

    Grey (C = 1) images are written as 8-bit greyscale, C = 3 as RGB. Returns the path written.
    """
    from PIL import Image  # deferred: only needed when a file is written

    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 4 or grid_kwargs:
        image = make_grid(image, **grid_kwargs)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in (1, 3), got shape {tuple(image.shape)}")
    pixels = to_uint8(image).numpy()
    # Pillow infers the mode from the array: 2-D uint8 is "L" (grey), (H, W, 3) uint8 is "RGB".
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    picture.save(path, format="PNG")
    return path
