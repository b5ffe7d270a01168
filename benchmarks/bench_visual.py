"""Rendering VisualMaze panoramas: views per second in one process, and the time, peak memory and disk of
generating a dataset of N mazes through the on-disk view store with worker processes.

    python benchmarks/bench_visual.py [--size 15] [--maps 1000] [--workers 2] [--single-maps 20]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from idp_envs import datasets, views


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc), 0 if it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory:
    """Samples the summed resident memory of this process and its live children, keeping the peak."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = rss_mb(os.getpid()) + sum(rss_mb(p.pid) for p in multiprocessing.active_children())
            self.peak_mb = max(self.peak_mb, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_dataset(size: int, maps: int, workers: int, folder: Path) -> dict:
    t0 = time.perf_counter()
    splits, meta = datasets.generate_splits(
        "IDP/VisualMaze-v0", {"train": maps}, seed=0, env_kwargs={"size": size}, progress=False
    )
    path = datasets.save_dataset(folder / f"visual{size}.npz", splits, meta)
    t1 = time.perf_counter()
    with PeakMemory() as memory:
        store = views.render_dataset_views(path, splits, workers=workers)
    t2 = time.perf_counter()
    free_views = int((splits["train"].occupancy == 0).sum()) * views.DIRECTIONS
    disk = sum(f.stat().st_blocks * 512 for f in store.iterdir())
    loaded, _ = datasets.load_dataset(path)  # lazily: touches nothing
    assert loaded["train"].extras["views"].shape[0] == maps
    return {
        "phase": f"dataset ({workers} workers)",
        "size": size,
        "maps": maps,
        "views_rendered": free_views,
        "seconds": round(t2 - t1, 1),
        "views_per_s": round(free_views / (t2 - t1)),
        "views_per_s_per_process": round(free_views / (t2 - t1) / max(workers, 1)),
        "tasks_s": round(t1 - t0, 2),
        "peak_rss_total_mb": round(memory.peak_mb),
        "peak_rss_parent_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_worker_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "disk_mb": round(disk / 2**20),
    }


def bench_single_process(size: int, maps: int) -> dict:
    from idp_envs import grid
    from idp_envs.tasks import sample_goals_and_starts

    rng = np.random.default_rng(1)
    batch = sample_goals_and_starts(grid.generate_mazes(maps + 1, size, rng), rng)
    t0 = time.perf_counter()
    renderer = views.PanoramaRenderer()
    renderer.render(batch.occupancy[0], batch.goal[0])  # warm-up: the software rasteriser compiles its shaders
    t1 = time.perf_counter()
    for occ, goal in zip(batch.occupancy[1:], batch.goal[1:], strict=True):
        renderer.render(occ, goal)
    t2 = time.perf_counter()
    free_views = int((batch.occupancy[1:] == 0).sum()) * views.DIRECTIONS
    return {
        "phase": "one process",
        "size": size,
        "maps": maps,
        "views_rendered": free_views,
        "seconds": round(t2 - t1, 2),
        "views_per_s": round(free_views / (t2 - t1)),
        "views_per_s_per_process": round(free_views / (t2 - t1)),
        "tasks_s": "",
        "peak_rss_total_mb": "",
        "peak_rss_parent_mb": "",
        "peak_rss_worker_mb": "",
        "disk_mb": "",
        "startup_s": round(t1 - t0, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=15)
    parser.add_argument("--maps", type=int, default=1000, help="maps in the generated dataset")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--single-maps", type=int, default=20, help="maps rendered in one process")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--scratch", default=None, help="folder for the dataset (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_visual_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        rows = [bench_dataset(args.size, args.maps, args.workers, scratch)]  # first: no GL context in the parent
        rows.append(bench_single_process(args.size, args.single_maps))
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[1])
    with open(out / "bench_visual.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(" | ".join(fields))
    for row in rows:
        print(" | ".join(str(row.get(k, "")) for k in fields))


if __name__ == "__main__":
    main()
