"""One annealed-Langevin update captured in a CUDA graph, replayed for every step of a run.

Sampling is 1,000 model evaluations of a network whose layers are small at batch 100: launching its
kernels one by one from Python costs as much as running them. Capturing one update (score, fused
Langevin step, optional re-imposition of known pixels) and replaying it removes that cost. Everything
that changes between steps lives in device tensors the graph reads: the level labels, the step size
and noise scale (set once per level), and the noise stream's seed and offset, written before each
replay from the position the sampling loop (fastscore.sampling.annealed_langevin) hands every step,
eager or captured alike.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .ops import langevin_step_


class CapturedLangevinStep:
    """Capture `score(x, labels)` + langevin_step_ on the tensor x, updated in place by each call.

    keep_mask: where to re-impose `keep_values` after each update (inpainting); its values are set per
    level through set_level. The backend must be a fused one that reads the stream position from
    device memory (not the plain-PyTorch reference, which would have to read it back to the host).
    """

    def __init__(self, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 backend: str | None = None,
                 keep_mask: torch.Tensor | None = None):
        if not x.is_cuda:
            raise ValueError(f"CUDA graphs need x on a CUDA device, got {x.device}")
        device = x.device
        self.score, self.x, self.backend, self.keep_mask = score, x, backend, keep_mask
        self.labels = torch.zeros(x.shape[0], dtype=torch.long, device=device)
        self.coeffs = torch.zeros(2, dtype=torch.float32, device=device)  # step size, noise scale
        self.stream = torch.zeros(2, dtype=torch.int64, device=device)    # seed, offset
        self.keep_values = torch.empty_like(x) if keep_mask is not None else None
        self.graph = self._capture()

    def _update(self) -> None:
        x = self.x
        langevin_step_(x, self.score(x, self.labels), self.coeffs[0:1], self.stream[0:1], self.stream[1:2],
                       self.coeffs[1:2], backend=self.backend)
        if self.keep_mask is not None:
            assert self.keep_values is not None  # allocated with the mask
            x.copy_(torch.where(self.keep_mask, self.keep_values, x))

    def _capture(self) -> torch.cuda.CUDAGraph:
        saved = self.x.clone()
        # Warm up on a side stream (lazy initialisation, kernel compilation, allocator pools) before
        # capture, as torch.cuda.graphs requires; then undo what the warm-up did to x.
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch.cuda.Stream.__new__ is unannotated
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._update()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._update()
        self.x.copy_(saved)
        return graph

    def set_level(self, level: int, step_size: float, keep_values: torch.Tensor | None = None,
                  noise_scale: float | None = None) -> None:
        """Point the next replays at a level: its labels, step size and known-pixel values."""
        self.labels.fill_(level)
        scale = math.sqrt(2.0 * step_size) if noise_scale is None else noise_scale
        self.coeffs.copy_(torch.tensor([step_size, scale], dtype=torch.float32))
        if keep_values is not None:
            if self.keep_values is None:
                raise ValueError("keep_values given to a step captured without a keep_mask")
            self.keep_values.copy_(keep_values)

    def __call__(self, seed: int, offset: int) -> None:
        """One update with the noise at (seed, offset): two fills (kernels, no host sync) and a replay."""
        self.stream[0].fill_(seed)
        self.stream[1].fill_(offset)
        self.graph.replay()
