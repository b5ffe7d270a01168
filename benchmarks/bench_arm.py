"""Tasks per second for generating labelled two-link-arm tasks (obstacles, exact C-space, workspace image, BFS
labels) on 18x18 and 36x36 C-spaces, median of repeats.

    python benchmarks/bench_arm.py [--bins 18 36] [--tasks 10000 10000] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import numpy as np

from idp_envs import arm_geometry as geometry
from idp_envs.envs import arm


def time_once(bins: int, n: int, seed: int) -> dict[str, float]:
    """Seconds spent in each stage of `arm.sample_arm_tasks` (the same calls, timed one by one)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    vertices, counts = arm.sample_obstacles(n, rng)
    t1 = time.perf_counter()
    occupancy = geometry.cspace_occupancy(vertices, counts, bins)
    t2 = time.perf_counter()
    geometry.rasterise_workspace(vertices, counts)
    t3 = time.perf_counter()
    batch = arm.sample_arm_tasks(n, bins, np.random.default_rng(seed))
    t4 = time.perf_counter()
    assert len(batch) == n and occupancy.shape == (n, bins, bins)
    return {
        "obstacles_s": t1 - t0,
        "cspace_s": t2 - t1,
        "raster_s": t3 - t2,
        "end_to_end_s": t4 - t3,
        "cspace_occupied": float(batch.occupancy.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bins", type=int, nargs="+", default=[18, 36])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10000, 10000], help="tasks per C-space size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if len(args.tasks) != len(args.bins):
        parser.error("--tasks needs one count per --bins value")
    rows = []
    for bins, n in zip(args.bins, args.tasks, strict=True):
        runs = [time_once(bins, n, seed) for seed in range(args.repeats)]
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        rows.append(
            {
                "bins": bins,
                "tasks": n,
                **{k: round(v, 3) for k, v in med.items()},
                "cspace_tasks_per_s": round(n / med["cspace_s"]),
                "raster_tasks_per_s": round(n / med["raster_s"]),
                "tasks_per_s": round(n / med["end_to_end_s"]),
            }
        )
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench_arm.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, median of {args.repeats}; wrote {out / 'bench_arm.csv'}")


if __name__ == "__main__":
    main()
