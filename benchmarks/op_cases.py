"""The op benchmark cases, shared by the GPU timings (gpu_ops.py) and `pytest --benchmark`.

A case holds its inputs and makes one call of an implementation:
    baseline   ncsn's plain eager PyTorch with torch.randn_like noise (ncsn_baseline.py)
    compiled   torch.compile of the baseline
    triton, ext  fastscore's fused backends
    oracle     fastscore's own torch backend: the correctness reference, never a speed baseline
and the bytes the op must move at least (each tensor it touches counted once).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ncsn_baseline  # noqa: E402

import fastscore  # noqa: E402

FUSED = ("triton", "ext")


@dataclass
class Case:
    name: str
    bytes_moved: int
    make: Callable[[str], Callable[[], object]]   # implementation -> one call
    impls: tuple[str, ...] = ("baseline",) + FUSED + ("oracle",)


def _rand(shape, device, dtype=torch.float32, fmt=torch.contiguous_format, requires_grad=False):
    t = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)
    return t.requires_grad_(requires_grad)


def norm_case(shape, device, dtype=torch.float32, channels_last=False, backward=False) -> Case:
    n, c = shape[:2]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _rand(shape, device, dtype, fmt, backward)
    gamma = (torch.randn(n, c, device=device) * 0.2 + 1).to(dtype).requires_grad_(backward)
    alpha = torch.randn(n, c, device=device).to(dtype).requires_grad_(backward)
    beta = torch.randn(n, c, device=device).to(dtype).requires_grad_(backward)
    inputs = (x, gamma, alpha, beta)
    dy = _rand(shape, device, dtype, fmt) if backward else None

    def make(impl):
        if impl == "baseline":
            fn = ncsn_baseline.norm_elu
        elif impl == "compiled":
            fn = torch.compile(ncsn_baseline.norm_elu, dynamic=False)
        else:
            backend = "torch" if impl == "oracle" else impl
            def fn(*a):
                return fastscore.cond_instance_norm_plus(*a, activation="elu", backend=backend)
        if not backward:
            return lambda: fn(*inputs)
        return lambda: torch.autograd.grad(fn(*inputs), inputs, dy)

    what = "forward+backward" if backward else "forward"
    layout = ", channels_last" if channels_last else ""
    name = f"norm+elu {what} {'x'.join(map(str, shape))} {_dtype_name(dtype)}{layout}"
    return Case(name, (5 if backward else 2) * x.numel() * x.element_size(), make)


def dsm_pair_case(shape, device) -> Case:
    """perturb + dsm_loss, forward and backward to the scores (the network's output is given)."""
    x = _rand(shape, device)
    scores = _rand(shape, device, requires_grad=True)
    sigma = torch.rand(shape[0], device=device) + 0.1
    offset = x.numel()

    def make(impl):
        if impl in ("baseline", "compiled"):
            pair = (ncsn_baseline.dsm_pair if impl == "baseline"
                    else torch.compile(ncsn_baseline.dsm_pair, dynamic=False))

            def step():
                _, loss = pair(x, scores, sigma)
                return torch.autograd.grad(loss, scores)
            return step
        backend = "torch" if impl == "oracle" else impl

        def step():
            fastscore.perturb(x, sigma, 1, offset, backend=backend)
            return torch.autograd.grad(fastscore.dsm_loss(scores, sigma, 1, offset, backend=backend), scores)
        return step

    # x read, perturbed x written, scores read, d(loss)/d(scores) written
    return Case(f"perturb + dsm_loss forward+backward {'x'.join(map(str, shape))} fp32",
                4 * x.numel() * 4, make)


def langevin_case(shape, device) -> Case:
    x = _rand(shape, device)
    score = _rand(shape, device)
    step = 1e-5

    def make(impl):
        if impl == "baseline":
            return lambda: ncsn_baseline.langevin_update(x, score, step)
        if impl == "compiled":
            update = torch.compile(ncsn_baseline.langevin_update, dynamic=False)
            return lambda: update(x, score, step)
        backend = "torch" if impl == "oracle" else impl
        return lambda: fastscore.langevin_step_(x, score, step, 2, 0, backend=backend)

    return Case(f"langevin_step_ {'x'.join(map(str, shape))} fp32", 3 * x.numel() * 4, make)


# Per size: (norm's big shape, its mid shape, the DSM batch, Langevin's small and large shapes).
SIZES = {
    # the hot ops of ncsn's CIFAR-10 network on a GPU, and a 64M-element update for bandwidth
    "gpu": ((128, 128, 32, 32), (100, 256, 16, 16), (128, 3, 32, 32), (100, 3, 32, 32), (64, 1024, 32, 32)),
    # the same ops at sizes a 2-core CPU times in seconds
    "cpu": ((32, 128, 32, 32), (32, 256, 16, 16), (128, 3, 32, 32), (100, 3, 32, 32), None),
    # a check of the code paths, not a measurement
    "tiny": ((2, 8, 8, 8), (2, 16, 4, 4), (4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 16, 16)),
}


def cases(device: str, size: str) -> list[Case]:
    big, mid, dsm, flat, huge = SIZES[size]
    out = [
        norm_case(big, device),
        norm_case(big, device, backward=True),
        norm_case(mid, device),
        norm_case(mid, device, torch.bfloat16),
        norm_case(big, device, channels_last=True),
        norm_case(big, device, channels_last=True, backward=True),
        dsm_pair_case(dsm, device),
        langevin_case(flat, device),
    ]
    return out + ([langevin_case(huge, device)] if huge else [])


def _dtype_name(dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
