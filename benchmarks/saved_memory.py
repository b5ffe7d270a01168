"""What an unrolled VIN / SymVIN keeps for backward, and its training-step time: the max over Q by `channel_max`
(argmax only) against `amax`.

Counts the distinct storages autograd saves during one forward of default-size planners on 8 random maps (15x15
by default, at K = 30 and 120), the peak memory of one forward + backward (torch.profiler's CPU memory events, as
``bench_planners``), and times forward + backward (median of 5 after a warm-up), in one process (the amax variant by
swapping the steps' max function in):

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


def saved_mib(name: str, k: int, size: int) -> float:
    """MiB autograd keeps for backward after one forward of the unrolled planner."""
    torch.manual_seed(0)
    planner = make_planner(name, k_fwd=k)
    return autograd_saved_bytes(lambda: planner(torch.rand(8, 2, size, size))) / 2**20


def peak_mib(name: str, k: int, size: int) -> float:
    """Peak MiB above the start during one forward + backward of the unrolled planner."""
    torch.manual_seed(0)
    planner = make_planner(name, k_fwd=k)
    labels = torch.randint(0, 4, (8, size, size))
    return peak_memory_bytes(planner, torch.rand(8, 2, size, size), labels) / 2**20


def step_ms(name: str, k: int, size: int, repeats: int = 5) -> float:
    """Median milliseconds of one forward + backward of the unrolled planner."""
    torch.manual_seed(0)
    planner = make_planner(name, k_fwd=k)
    maps = torch.rand(8, 2, size, size)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        planner(maps).logits.sum().backward()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[1:])


def measure(max_function, ks: list[int], size: int) -> dict[tuple[str, int], tuple[float, float, float]]:
    vin.channel_max = symvin.channel_max = max_function
    try:
        return {
            (name, k): (saved_mib(name, k, size), peak_mib(name, k, size), step_ms(name, k, size))
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
    lean = measure(channel_max, args.ks, args.size)
    full = measure(lambda q: q.amax(dim=1, keepdim=True), args.ks, args.size)
    print(f"{args.size}x{args.size} maps, batch 8")
    print(
        "| planner | K | saved MiB, channel_max | amax | ratio | peak MiB, channel_max | amax | ratio "
        "| step ms, channel_max | amax |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, k), (mib, peak, ms) in lean.items():
        full_mib, full_peak, full_ms = full[name, k]
        print(
            f"| {name} | {k} | {mib:.2f} | {full_mib:.2f} | {full_mib / mib:.1f}x | {peak:.1f} | {full_peak:.1f} | "
            f"{full_peak / peak:.1f}x | {ms:.1f} | {full_ms:.1f} |"
        )


if __name__ == "__main__":
    main()
