"""What an unrolled VIN / SymVIN keeps for backward, and its training-step time, for three ways of taking the max
over Q: the default (VIN: ``bellman_max``, one op with an argmax-sparse backward; SymVIN: a dense convolution and
``channel_max``), and on the plain path (``step.fused = False``) a dense convolution followed by ``channel_max`` (argmax
only) or by ``amax`` (keeps Q, as the published code).

Counts the distinct storages autograd saves during one forward of default-size planners on 8 random maps (15x15
by default, at K = 30 and 120), the peak memory of one forward + backward (torch.profiler's CPU memory events, as
``bench_planners``), and times forward + backward (median of 5 after a warm-up), in one process (the amax variant by
swapping the plain steps' max function in):

    python -m benchmarks.saved_memory
    python -m benchmarks.saved_memory --size 49 --ks 80
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import idp_agents.planners.symvin as symvin
import idp_agents.planners.vin as vin
from benchmarks.bench_planners import peak_memory_bytes
from idp_agents.planners import make_planner
from idp_agents.planners.base import channel_max
from idp_agents.training import autograd_saved_bytes

PLANNERS = ("vin", "symvin")


def unrolled(name: str, k: int, fused: bool):
    """The unrolled planner, seeded; on its plain path (dense convolution, then the max) unless ``fused``."""
    torch.manual_seed(0)
    planner = make_planner(name, k_fwd=k)
    planner.step.fused = fused
    return planner


def saved_mib(name: str, k: int, size: int, fused: bool) -> float:
    """MiB autograd keeps for backward after one forward of the unrolled planner."""
    planner = unrolled(name, k, fused)
    return autograd_saved_bytes(lambda: planner(torch.rand(8, 2, size, size))) / 2**20


def peak_mib(name: str, k: int, size: int, fused: bool) -> float:
    """Peak MiB above the start during one forward + backward of the unrolled planner."""
    planner = unrolled(name, k, fused)
    labels = torch.randint(0, 4, (8, size, size))
    return peak_memory_bytes(planner, torch.rand(8, 2, size, size), labels) / 2**20


def step_ms(name: str, k: int, size: int, fused: bool, repeats: int = 5) -> float:
    """Median milliseconds of one forward + backward of the unrolled planner."""
    planner = unrolled(name, k, fused)
    maps = torch.rand(8, 2, size, size)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        planner(maps).logits.sum().backward()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[1:])


VARIANTS = {"default": None, "channel_max": channel_max, "amax": lambda q: q.amax(dim=1, keepdim=True)}


def measure(variant: str, ks: list[int], size: int) -> dict[tuple[str, int], tuple[float, float, float]]:
    """(saved MiB, peak MiB, step ms) per (planner, K) with the max over Q taken by ``variant``."""
    max_function = VARIANTS[variant]
    vin.channel_max = symvin.channel_max = max_function or channel_max
    fused = max_function is None  # the other variants replace the plain path's max
    try:
        return {
            (name, k): (saved_mib(name, k, size, fused), peak_mib(name, k, size, fused), step_ms(name, k, size, fused))
            for name in PLANNERS
            for k in ks
        }
    finally:
        vin.channel_max = symvin.channel_max = channel_max


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.saved_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=15)
    p.add_argument("--ks", type=int, nargs="+", default=[30, 120])
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {variant: measure(variant, args.ks, args.size) for variant in VARIANTS}
    names = " / ".join(VARIANTS)
    print(f"{args.size}x{args.size} maps, batch 8; each cell: {names}")
    print("| planner | K | saved MiB | peak MiB | step ms |")
    print("|---|---|---|---|---|")
    for name, k in results["default"]:
        cells = [" / ".join(f"{results[v][name, k][i]:.{1 if i else 2}f}" for v in VARIANTS) for i in range(3)]
        print(f"| {name} | {k} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
