"""Maps per second for generating and labelling mazes (BFS distances + optimal-action masks), median of repeats.

python benchmarks/bench_datasets.py [--sizes 15 49] [--maps 10000 1000] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import numpy as np

from idp_envs import grid
from idp_envs.tasks import sample_goals_and_starts


def time_once(size: int, n: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    occupancy = grid.generate_mazes(n, size, rng)
    t1 = time.perf_counter()
    sample_goals_and_starts(occupancy, rng)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[15, 49])
    parser.add_argument("--maps", type=int, nargs="+", default=[10000, 1000], help="maps per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if len(args.maps) != len(args.sizes):
        parser.error("--maps needs one count per size")
    rows = []
    for size, n in zip(args.sizes, args.maps, strict=True):
        times = np.array([time_once(size, n, seed) for seed in range(args.repeats)])
        gen, label = np.median(times, axis=0)
        rows.append(
            {
                "size": size,
                "maps": n,
                "generate_s": round(gen, 3),
                "label_s": round(label, 3),
                "generate_maps_per_s": round(n / gen),
                "label_maps_per_s": round(n / label),
                "total_maps_per_s": round(n / (gen + label)),
            }
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_datasets.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"machine: {platform.processor() or platform.machine()}, median of {args.repeats}")
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))


if __name__ == "__main__":
    main()
