"""What one training step costs: its time split into forward and backward, its peak memory, and the memory budget
a run is held to. Shared by the training command, the sweeps' reports and the benchmarks, so all three measure the
same way.

Peak memory is measured above the level allocated before the step: on CUDA from the caching allocator's statistics,
on the CPU from torch.profiler's memory events (their running sum's maximum)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch


class MemoryBudgetExceeded(RuntimeError):
    """A run that needs more memory than --memory-budget-gb allows: a result to report, not a crash."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(loss_of_forward: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float]:
    """Seconds of the forward pass (``loss_of_forward()``, which returns the loss) and of its backward pass."""
    synchronize(device)
    start = time.perf_counter()
    loss = loss_of_forward()
    synchronize(device)
    middle = time.perf_counter()
    loss.backward()
    synchronize(device)
    return middle - start, time.perf_counter() - middle


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated above the starting level while ``step()`` runs (see the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # else the profiler writes 'USDT: profiler_start' lines to stderr
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.random.fork_rng(devices=[]), torch.profiler.profile(activities=activities, profile_memory=True) as run:
        step()
    events = [e for e in run.profiler.kineto_results.events() if e.name() == "[memory]"]
    sizes = torch.tensor([e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())], dtype=torch.float64)
    return int(sizes.cumsum(0).max().clamp_min(0).item()) if len(sizes) else 0


def held_bytes(modules: list[torch.nn.Module], tensors: list[torch.Tensor]) -> int:
    """Bytes held through training: parameters with their gradients and RMSprop state, and ``tensors`` (the data
    kept on the device)."""
    params = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    return 3 * params + sum(t.numel() * t.element_size() for t in tensors)


def apply_memory_budget(
    budget_gb: float, modules: list[torch.nn.Module], tensors: list[torch.Tensor], step: Callable[[], None], device
) -> None:
    """On CUDA cap the caching allocator at the budget; on the CPU measure what training needs (``held_bytes`` and
    the peak of one training ``step``) and refuse the run with `MemoryBudgetExceeded` when it is over the budget."""
    budget = budget_gb * 2**30
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
        return
    needed = held_bytes(modules, tensors) + peak_bytes(step, device)
    for module in modules:
        module.zero_grad(set_to_none=True)
    if needed > budget:
        raise MemoryBudgetExceeded(
            f"out of memory: training needs {needed / 2**30:.3f} GB (parameters, optimizer state, data and the "
            f"first batch's forward + backward peak) over --memory-budget-gb {budget_gb:g}"
        )
