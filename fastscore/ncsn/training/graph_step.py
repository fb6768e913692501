"""One whole training step captured in a CUDA graph and replayed: perturb, the network, the loss, its
backward, the optimizer and the EMA update, with no host work between kernels.

The step's inputs live in static device tensors: the preprocessed batch and its noise-level labels
(drawn by the trainer's generator outside the graph, exactly as the eager step draws them), and the
noise stream's seed and offset and the step number, which the ops read on the device. The first
WARMUP steps run eagerly on a side stream (they are real training steps: cuDNN's algorithm choices,
the optimizer's state and the allocator settle), the next one is captured, and from then on every step
of the same batch shape is one replay. A step of another shape (a short last batch) runs eagerly.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .loop import Trainer

WARMUP = 3


def unavailable_reason(trainer: Trainer) -> str | None:
    """None when the trainer's step can be captured, else why not."""
    from ...backend import dispatch

    if trainer.device.type != "cuda":
        return f"the model is on {trainer.device}, not a CUDA GPU"
    if trainer.group.distributed:
        # DDP all-reduces the gradients from autograd hooks between backward and the optimizer step; that
        # traffic is not part of a captured graph here (not tried: no multi-GPU machine to test it on).
        return "training runs on several processes (DDP), whose gradient all-reduce the captured step does not hold"
    backend = dispatch.resolve_name(trainer.settings.backend, trainer.device)
    if backend == "torch":
        return "the torch backend reads the noise stream's position on the host (ext and triton do not)"
    if trainer.forward is not trainer.model:
        return "the network runs through torch.compile (its mode='reduce-overhead' captures graphs itself)"
    return None


class CapturedTrainStep:
    """Trainer.train_step's work as one CUDA graph replay (see the module's docstring)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        device = trainer.device
        self.seed, self.offset, self.step = (torch.zeros((), dtype=torch.int64, device=device) for _ in range(3))
        self.x: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0

    def accepts(self, x: torch.Tensor) -> bool:
        return self.x is None or (x.shape == self.x.shape and x.dtype == self.x.dtype)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, seed: int, offset: int, step: int) -> torch.Tensor:
        t = self.trainer
        if self.graph is None and self.warm < WARMUP:
            side = torch.cuda.Stream(device=t.device)
            side.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(side):
                loss = t.eager_step(x, labels, seed, offset, step)
            torch.cuda.current_stream(t.device).wait_stream(side)
            self.warm += 1
            return loss
        if self.graph is None:
            try:
                self._capture(x, labels)
            except Exception as exc:  # where it was not asked for by name, capture degrades to eager, loudly
                if t.settings.cuda_graph:
                    raise
                warnings.warn(f"CUDA graph capture of the training step failed ({type(exc).__name__}: {exc}); "
                              "training eagerly (--no-cuda-graph silences this)", RuntimeWarning, stacklevel=2)
                t.captured, t.graph_step = False, None
                return t.eager_step(x, labels, seed, offset, step)
        assert self.graph is not None and self.x is not None and self.labels is not None and self.loss is not None
        self.x.copy_(x)
        self.labels.copy_(labels)
        self.seed.fill_(seed)
        self.offset.fill_(offset)
        self.step.fill_(step)
        self.graph.replay()
        return self.loss.clone()  # the next replay overwrites the static loss

    def _capture(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        t = self.trainer
        self.x, self.labels = torch.empty_like(x), torch.empty_like(labels)
        t.optimizer.zero_grad(set_to_none=True)  # the gradients are then allocated in the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = t.objective(self.x, self.labels, self.seed, self.offset, self.step)
            t.update(loss)
            self.loss = loss.detach()
        self.graph = graph
