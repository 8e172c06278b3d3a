"""Multi-process meta-training on torch.distributed.

Each meta-batch of ``B`` tasks is split across ``W`` processes: rank ``r`` computes the
meta-gradient of tasks ``r*B/W .. (r+1)*B/W - 1`` of the step (episodes are a pure function
of their index, so no data moves between processes), gradients are averaged with an
all-reduce, and every process applies the same optimizer step. Batch-norm running buffers
are averaged the same way. Only rank 0 writes files. Backend: chosen by where the model's
tensors live (:func:`backend_for`), never by whether the machine has a GPU: the trainer
keeps models on the CPU, so gloo, even on a machine with CUDA (nccl cannot reduce CPU
tensors).

Launch with ``metarch train --nproc N`` (processes on this machine), or with torchrun,
which sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``::

    torchrun --nproc-per-node 2 -m metarch train --config C.yaml --out RUN

On several machines, run the same torchrun command on each with ``--nnodes M
--node-rank I --master-addr HOST0 --master-port PORT`` (HOST0 reachable from all).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import spawn

__all__ = [
    "ProcessGroup",
    "backend_for",
    "average_buffers",
    "average_gradients",
    "current_group",
    "launch",
]


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the training processes.

    Attributes:
        rank: Index of this process.
        world_size: Number of processes.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    def local_tasks(self, meta_batch: int) -> tuple[int, int]:
        """``(first, count)`` of this rank's tasks within a meta-batch."""
        per_rank = meta_batch // self.world_size
        return self.rank * per_rank, per_rank


def current_group() -> ProcessGroup:
    """The process group torch.distributed was initialised with (or a single process)."""
    if dist.is_available() and dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size())
    return ProcessGroup()


def backend_for(device: torch.device | str) -> str:
    """The torch.distributed backend that reduces tensors on ``device``."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


# Where the trainer keeps models and their gradients.
_TRAINING_DEVICE = torch.device("cpu")


def _initialise_from_environment() -> None:
    dist.init_process_group(backend=backend_for(_TRAINING_DEVICE))


def average_gradients(parameters: Iterable[nn.Parameter], group: ProcessGroup) -> None:
    """Replace every gradient by its mean over the processes (one flat all-reduce)."""
    if not group.distributed:
        return
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= group.world_size
    offset = 0
    for p in params:
        assert p.grad is not None
        size = p.grad.numel()
        p.grad.copy_(flat[offset : offset + size].view_as(p.grad))
        offset += size


@torch.no_grad()
def average_buffers(module: nn.Module, group: ProcessGroup) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the processes."""
    if not group.distributed:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer /= group.world_size


def all_reduce_mean(value: float, group: ProcessGroup) -> float:
    """Mean of a scalar over the processes."""
    if not group.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor) / group.world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _worker(
    rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    # The processes share the machine's cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    _initialise_from_environment()
    _run_then_tear_down(fn, args)


def _run_then_tear_down(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """``fn(*args)`` in the process group, then leave it together with the other ranks.

    Only rank 0 validates and writes the final checkpoint after the last step; the other
    ranks would otherwise tear down at once and exit, closing their connections while
    rank 0 is still working, and gloo may then abort rank 0 ("terminate called without an
    active exception") before its final checkpoint is on disk. The barrier makes every
    rank wait until rank 0 is done. After an error there is no barrier: the other ranks
    may never reach it.
    """
    try:
        fn(*args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` processes joined in one process group.

    Under torchrun (``WORLD_SIZE`` set) the process group is initialised from the
    environment and ``fn`` runs in this process only.
    """
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ and not dist.is_initialized():
        _initialise_from_environment()
        _run_then_tear_down(fn, args)
        return
    if nproc <= 1:
        fn(*args)
        return
    spawn(_worker, args=(nproc, _free_port(), fn, args), nprocs=nproc, join=True)
