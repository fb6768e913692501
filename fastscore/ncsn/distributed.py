"""Several processes on torch.distributed, as torchrun starts them: who this process is, which rows of a
batch or a sample run it owns, and the few collectives the application needs.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init` joins the process group
(NCCL when the processes run on GPUs, gloo on the CPU) and gives each process its GPU (cuda:LOCAL_RANK).
Without those variables everything here is the one-process case, with no torch.distributed call at all.

Decisions every process must take together (stop at a signal or a time limit, a diverged run) go through a
gloo group of their own on host tensors, so agreeing on them never synchronises a GPU stream.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = datetime.timedelta(minutes=30)  # a rank may wait this long for rank 0's checkpoint or metrics


def launched() -> bool:
    """Whether torchrun (or another launcher that sets its variables) started this process."""
    return all(name in os.environ for name in ENV)


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of n that `rank` of `world` owns: contiguous, sizes differing by at most one,
    in rank order (so the shares concatenate to 0 .. n)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class Group:
    """This process's place among the run's processes. The default is the lone process of a plain run."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None   # "nccl" or "gloo" when torch.distributed is initialised, else None
    control: Any = None          # the gloo group for host-side agreement

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> tuple[int, int]:
        return share(n, self.rank, self.world)

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether any process raised it (one host all-reduce; no GPU sync)."""
        if not self.distributed:
            return [bool(f) for f in flags]
        import torch.distributed as dist

        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return [bool(v) for v in t.tolist()]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the processes (on its own device, through the main group)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world

    def gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor | None:
        """On the main process, the concatenation in rank order of every process's rows (this process's
        `share(total)`), on the CPU; None elsewhere. Goes through the gloo group, so GPU memory holds
        only each process's own share."""
        rows = rows.detach().cpu().contiguous()
        if not self.distributed:
            return rows
        import torch.distributed as dist

        size = share(total, 0, self.world)
        padded = rows.new_zeros((size[1] - size[0],) + tuple(rows.shape[1:]))
        padded[:rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world)] if self.is_main else None
        dist.gather(padded, parts, dst=0, group=self.control)
        if not self.is_main:
            return None
        assert parts is not None
        return torch.cat([p[: b - a] for p, (a, b) in zip(parts, (share(total, r, self.world)
                                                                     for r in range(self.world)), strict=True)])

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self.control)


SINGLE = Group()


def init(device: str | None = None) -> tuple[Group, torch.device]:
    """Join torchrun's process group when launched by it, and pick this process's device: cuda:LOCAL_RANK
    on a GPU machine (device "auto"/None or "cuda"), else the CPU. Without torchrun: (SINGLE, the device
    the name resolves to)."""
    from .training.build import resolve_device

    if not launched():
        return SINGLE, resolve_device(device)
    import torch.distributed as dist

    rank, world, local = (int(os.environ[name]) for name in ENV)
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"process {rank} (local rank {local}) has no GPU of its own: this machine shows "
                               f"{torch.cuda.device_count()}; start at most that many processes per node "
                               "(torchrun --nproc_per_node)")
        wanted = torch.device("cuda", local)
        torch.cuda.set_device(wanted)
    backend = "nccl" if wanted.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=wanted if backend == "nccl" else None)
    control = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else None
    return Group(rank, world, local, backend, control), wanted


def finish(group: Group) -> None:
    """Leave the process group (the launcher waits for every process to do so)."""
    if group.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
