"""A sampler's updates captured in CUDA graphs, one graph per update kind, replayed for every step.

Sampling is hundreds of model evaluations of a network whose layers are small at batch 100: launching
its kernels one by one from Python costs as much as running them. Capturing one update (the score
calls, the fused steps, the optional re-imposition of known pixels) and replaying it removes that
cost. Everything that changes between steps lives in device tensors the graphs read: the level labels
and the two coefficients (set when the update changes), and the noise stream's seed and offset,
written before each replay from the position the sampling loop (fastscore.sampling.run_plan) hands
every step, eager or captured alike.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from .updates import Score, Update, apply


class CapturedStep:
    """Capture each update kind of `kinds` (fastscore.updates) on the tensor x, updated in place.

    keep_mask: where to re-impose the known values after each update (inpainting); the values are set
    per level through set_level. The backend must be a fused one that reads the stream position from
    device memory (not the plain-PyTorch reference, which would have to read it back to the host).
    """

    def __init__(self, score: Score, x: torch.Tensor, kinds: Iterable[str], backend: str | None = None,
                 keep_mask: torch.Tensor | None = None):
        if not x.is_cuda:
            raise ValueError(f"CUDA graphs need x on a CUDA device, got {x.device}")
        device = x.device
        self.score, self.x, self.backend, self.keep_mask = score, x, backend, keep_mask
        self.labels = torch.zeros(2, x.shape[0], dtype=torch.long, device=device)  # one row per score call
        self.coeffs = torch.zeros(2, dtype=torch.float32, device=device)
        self.stream = torch.zeros(2, dtype=torch.int64, device=device)    # seed, offset
        self.keep_values = torch.empty_like(x) if keep_mask is not None else None
        self.graphs = {kind: self._capture(kind) for kind in dict.fromkeys(kinds)}

    def _update(self, kind: str) -> None:
        x = self.x
        apply(kind, self.score, x, (self.labels[0], self.labels[1]), (self.coeffs[0:1], self.coeffs[1:2]),
              self.stream[0:1], self.stream[1:2], self.backend)
        if self.keep_mask is not None:
            assert self.keep_values is not None  # allocated with the mask
            x.copy_(torch.where(self.keep_mask, self.keep_values, x))

    def _capture(self, kind: str) -> torch.cuda.CUDAGraph:
        saved = self.x.clone()
        # Coefficients that keep the warm-up finite whatever the kind (the corrector divides by the
        # score's norm); the warm-up's effect on x is undone below.
        self.coeffs.fill_(1e-3)
        # Warm up on a side stream (lazy initialisation, kernel compilation, allocator pools) before
        # capture, as torch.cuda.graphs requires; then undo what the warm-up did to x.
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch.cuda.Stream.__new__ is unannotated
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._update(kind)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._update(kind)
        self.x.copy_(saved)
        return graph

    def set_level(self, keep_values: torch.Tensor | None) -> None:
        """The known-pixel values of the level that starts (inpainting), re-imposed after every update."""
        if keep_values is not None:
            if self.keep_values is None:
                raise ValueError("keep_values given to a step captured without a keep_mask")
            self.keep_values.copy_(keep_values)

    def set_update(self, update: Update) -> None:
        """Point the next replays at an update's labels and coefficients (two small host-to-device writes)."""
        for row, label in enumerate(update.labels):
            self.labels[row].fill_(label)
        self.coeffs.copy_(torch.tensor(update.tensor_coeffs(), dtype=torch.float32))

    def __call__(self, kind: str, seed: int, offset: int) -> None:
        """One update with the noise at (seed, offset): two fills (kernels, no host sync) and a replay."""
        self.stream[0].fill_(seed)
        self.stream[1].fill_(offset)
        self.graphs[kind].replay()
