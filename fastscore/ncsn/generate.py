"""Many samples from one seed, on one process or across torchrun's processes, as one ordered set.

Sample i of an n-sample run is the same whoever draws it: each process takes its share of rows
(fastscore.ncsn.distributed.share), draws it in batches as shares of the n-sample run
(LadderSampler.sample's start/total, any sampler), and rank 0 gathers the images in order. So the set does not
depend on the number of processes or the batch size (bitwise where the network's kernels do not depend
on the batch size, else to float rounding).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..sampling import LadderSampler, uniform_init_batches
from .distributed import SINGLE, Group


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) as uint8, rounded as PIL writes them."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def generate(sampler: LadderSampler, n: int, seed: int, group: Group = SINGLE, batch: int | None = None,
             progress: bool = True, to_image: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> torch.Tensor | None:
    """Samples 0 .. n of the n-sample run of `seed`: on rank 0 a CPU tensor of all n in order, None on the
    other ranks. batch: at most this many samples per sampler call (default: the whole share).
    to_image: applied to each batch on its device before it is gathered (e.g. to uint8 images)."""
    if sampler.shape is None:
        raise ValueError("generate needs a sampler that knows the shape of one sample (shape=(C, H, W))")
    a, b = group.share(n)
    batch = batch or max(b - a, 1)
    starts = uniform_init_batches((n,) + sampler.shape, seed, (a, b), batch, sampler.device, sampler.dtype)
    parts = []
    bar = tqdm(total=n, desc="sampling", unit="img", disable=not (progress and group.is_main), dynamic_ncols=True)
    try:
        for first, x_init in zip(range(a, b, batch), starts, strict=False):
            x = sampler.sample(x_init, seed=seed, progress=False, start=first, total=n)
            parts.append((to_image(x) if to_image else x).cpu())
            # rank 0's share is as large as any other's: its progress is the run's
            bar.update(min(x.shape[0] * group.world, n - bar.n))
    finally:
        bar.close()
    mine = torch.cat(parts) if parts else torch.empty(0)
    return group.gather_rows(mine, n)


def write_npz(images: torch.Tensor, path: str) -> str:
    """uint8 images (N, C, H, W) as `samples` (N, H, W, C) in an .npz, the layout FID tools read;
    written beside the target and renamed, so a crash never leaves a torn file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, samples=images.permute(0, 2, 3, 1).contiguous().numpy())
    os.replace(tmp, path)
    return path


def read_npz(path: str) -> torch.Tensor:
    """An .npz written by write_npz (or any with uint8 `samples` or `arr_0` of shape (N, H, W, C)) as
    uint8 (N, C, H, W)."""
    with np.load(path) as f:
        key = "samples" if "samples" in f.files else "arr_0"
        if key not in f.files:
            raise ValueError(f"{path} holds no `samples` (or `arr_0`) array; write it with `fastscore sample --npz`")
        arr = f[key]
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 images (N, H, W, C), got {arr.dtype} of shape {arr.shape}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def write_folder(images: torch.Tensor, directory: str) -> str:
    """uint8 images (N, C, H, W) as <directory>/000000.png, 000001.png, ... (grey or RGB)."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    width = max(6, len(str(images.shape[0] - 1)))
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(os.path.join(directory, f"{i:0{width}d}.png"))
    return directory
