"""One annealed-Langevin update captured in a CUDA graph, replayed for every step of a run.

Sampling is 1,000 model evaluations of a network whose layers are small at batch 100: launching its
kernels one by one from Python costs as much as running them. Capturing one update (score, fused
Langevin step, offset advance, optional re-imposition of known pixels) and replaying it removes that
cost. Everything that changes between steps lives in device tensors the graph reads: the level labels,
the step size and noise scale (set once per level), and the noise stream's seed and offset (the graph
itself adds numel to the offset, so every replay draws fresh noise exactly as the eager loop does).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .ops import langevin_step_


class CapturedLangevinStep:
    """Capture `score(x, labels)` + langevin_step_ on the tensor x, updated in place by each replay.

    keep_mask: where to re-impose `keep_values` after each update (inpainting); its values are set per
    level through set_level. The backend must be a fused one that reads the stream position from
    device memory (not the plain-PyTorch reference, which would have to read it back to the host).
    """

    def __init__(self, score: Callable, x: torch.Tensor, backend: str | None = None,
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
        self.stream[1:2].add_(x.numel())
        if self.keep_mask is not None:
            x.copy_(torch.where(self.keep_mask, self.keep_values, x))

    def _capture(self) -> torch.cuda.CUDAGraph:
        saved = self.x.clone()
        # Warm up on a side stream (lazy initialisation, kernel compilation, allocator pools) before
        # capture, as torch.cuda.graphs requires; then undo what the warm-up did to x.
        side = torch.cuda.Stream()
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

    def set_level(self, level: int, step_size: float, seed: int, offset: int,
                  keep_values: torch.Tensor | None = None, noise_scale: float | None = None) -> None:
        """Point the next replays at a level: its labels, step size, and the stream position."""
        self.labels.fill_(level)
        scale = math.sqrt(2.0 * step_size) if noise_scale is None else noise_scale
        self.coeffs.copy_(torch.tensor([step_size, scale], dtype=torch.float32))
        self.stream.copy_(torch.tensor([seed, offset], dtype=torch.int64))
        if keep_values is not None:
            self.keep_values.copy_(keep_values)

    def replay(self) -> None:
        self.graph.replay()
