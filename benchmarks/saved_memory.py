"""What an unrolled VIN / SymVIN keeps for backward, and its training-step time: the max over Q by `channel_max`
(argmax only) against `amax`.

Counts the distinct storages autograd saves during one forward of default-size planners on 8 random 15x15 maps,
at K = 30 and 120, and times forward + backward (median of 5 after a warm-up), in one process (the amax variant by
swapping the steps' max function in):

    python -m benchmarks.saved_memory
"""

from __future__ import annotations

import statistics
import time

import torch

import idp_agents.planners.symvin as symvin
import idp_agents.planners.vin as vin
from idp_agents.planners import make_planner
from idp_agents.planners.base import channel_max
from idp_agents.training import autograd_saved_bytes

PLANNERS = ("vin", "symvin")
KS = (30, 120)


def saved_mib(name: str, k: int) -> float:
    """MiB autograd keeps for backward after one forward of the unrolled planner."""
    torch.manual_seed(0)
    planner = make_planner(name, k_fwd=k)
    return autograd_saved_bytes(lambda: planner(torch.rand(8, 2, 15, 15))) / 2**20


def step_ms(name: str, k: int, repeats: int = 5) -> float:
    """Median milliseconds of one forward + backward of the unrolled planner."""
    torch.manual_seed(0)
    planner = make_planner(name, k_fwd=k)
    maps = torch.rand(8, 2, 15, 15)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        planner(maps).logits.sum().backward()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[1:])


def measure(max_function) -> dict[tuple[str, int], tuple[float, float]]:
    vin.channel_max = symvin.channel_max = max_function
    try:
        return {(name, k): (saved_mib(name, k), step_ms(name, k)) for name in PLANNERS for k in KS}
    finally:
        vin.channel_max = symvin.channel_max = channel_max


def main() -> None:
    torch.set_num_threads(1)
    lean = measure(channel_max)
    full = measure(lambda q: q.amax(dim=1, keepdim=True))
    print("| planner | K | channel_max MiB | amax MiB | ratio | channel_max step ms | amax step ms |")
    print("|---|---|---|---|---|---|---|")
    for (name, k), (mib, ms) in lean.items():
        full_mib, full_ms = full[name, k]
        print(f"| {name} | {k} | {mib:.2f} | {full_mib:.2f} | {full_mib / mib:.1f}x | {ms:.1f} | {full_ms:.1f} |")


if __name__ == "__main__":
    main()
