"""Where a training run computes: the device a flag names, and data-parallel training under ``torchrun``.

Outside ``torchrun`` every function here is a no-op or answers for one process, so single-process code calls them
unconditionally."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def resolve_device(name: str) -> torch.device:
    """The device ``--device name`` asks for: auto (CUDA when present), cpu, cuda, cuda:N or mps."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: not a device this library trains on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple's MPS is not available on this machine; use cpu")
    return device


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def run_device(name: str) -> torch.device:
    """The device ``--device name`` asks for; under torchrun on CUDA, the GPU of this process's local rank."""
    device = resolve_device(name)
    if launched_by_torchrun() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def start_distributed(device_name: str) -> bool:
    """Join the torchrun process group (NCCL on CUDA, Gloo on the CPU); True when this call created it."""
    if not launched_by_torchrun() or distributed():
        return False
    backend = "nccl" if run_device(device_name).type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return True


def barrier() -> None:
    if distributed():
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. generates the cached dataset); the other ranks wait, then run it."""
    rank, _ = rank_and_world()
    if rank != 0:
        barrier()
    yield
    if rank == 0:
        barrier()


def data_parallel(module: torch.nn.Module | None, device: torch.device) -> torch.nn.Module | None:
    """``module`` wrapped in DistributedDataParallel when this is a torchrun process; else ``module`` itself."""
    if module is None or not distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def epoch_order(n: int, device: torch.device) -> torch.Tensor:
    """The epoch's order of training maps; under DDP one shuffle shared by all ranks, each taking an equal shard."""
    order = torch.randperm(n)
    if not distributed():
        return order
    rank, world = rank_and_world()
    shared = order.to(device)
    dist.broadcast(shared, 0)
    return shared.cpu()[rank::world][: n // world]


def sum_over_ranks(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` in place over the ranks (nothing outside torchrun)."""
    if distributed():
        dist.all_reduce(tensor)
