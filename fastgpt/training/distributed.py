"""Data-parallel training across processes, as `torchrun --nproc_per_node=N -m fastgpt.train` starts
them: each process holds a replica of the model wrapped in DistributedDataParallel, trains on its
share of every global batch, and DDP averages the gradients (NCCL between GPUs, gloo between CPU
processes). Only rank 0 evaluates, logs and writes checkpoints. Without torchrun: one process, no
process group.
"""
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    local_rank: int = 0  # which GPU of its node the process uses
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_gather(self, obj) -> list:
        """Every process's `obj`, in rank order (picklable objects; every process must call)."""
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def max(self, value: int, device: torch.device) -> int:
        """The largest of every process's `value` (every process must call; `device` is the one
        the process group communicates on: the GPU under NCCL)."""
        if not self.distributed:
            return value
        largest = torch.tensor(value, device=device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return int(largest.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Processes()


def launched_processes() -> Processes:
    """This process's place among those torchrun started (RANK, LOCAL_RANK, WORLD_SIZE)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    return Processes(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world_size)


def start(procs: Processes, device: torch.device) -> torch.device:
    """Join the process group; the device this process trains on (its own GPU under NCCL)."""
    if not procs.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop(procs: Processes) -> None:
    if procs.distributed and dist.is_initialized():
        # Cyclic garbage can still hold the DDP wrapper, and its reducer the process group (rank 0:
        # a loss plot's figure keeps the evaluation's frames alive): free it while the group is
        # whole, or gloo's threads may be torn down under a live reducer at exit.
        gc.collect()
        dist.destroy_process_group()
