"""Rendering VisualMaze panoramas: views per second in one process, and the time, peak memory and disk of
generating a dataset of N mazes through the on-disk view store with worker processes; then what reading that
store costs a training step: milliseconds to read a batch of 32 maps' views at random, against one ID-ConvGPPN
training step with its visual mapper on that batch (mapper, planner, backward, as ``imitate``'s joint phase).

    python benchmarks/bench_visual.py [--size 15] [--maps 1000] [--workers 2] [--single-maps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from idp_envs import datasets, maze_scene, view_store, views


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
        store = view_store.render_dataset_views(path, splits, workers=workers)
    t2 = time.perf_counter()
    free_views = int((splits["train"].occupancy == 0).sum()) * maze_scene.DIRECTIONS
    disk = sum(f.stat().st_blocks * 512 for f in store.iterdir())
    loaded, _ = datasets.load_dataset(path)  # lazily: touches nothing
    assert loaded["train"].extras["views"].shape[0] == maps
    return path, {
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
        "disk_gb_per_1000_maps": round(disk / 1e9 * 1000 / maps, 3),
    }


def bench_loading(path: Path, batch_size: int = 32, repeats: int = 8) -> dict:
    """Median milliseconds to read a random batch from the view store, and of one training step on it."""
    import torch

    from idp_agents.mappers import make_mapper
    from idp_agents.planner_input import mapped_planner_maps, task_tensors
    from idp_agents.planners import make_planner
    from idp_agents.training import batch_rows, planner_loss

    loaded, _ = datasets.load_dataset(path)
    train = loaded["train"]
    store = train.extras["views"]
    labels = task_tensors(train)
    mapper = make_mapper("views", train.occupancy.shape[1:])
    planner = make_planner("id-convgppn")
    optimizer = torch.optim.RMSprop(list(mapper.parameters()) + list(planner.parameters()), lr=1e-3)
    rng = np.random.default_rng(0)
    reads, steps = [], []
    for _ in range(repeats):
        idx = torch.from_numpy(np.sort(rng.choice(len(train), min(batch_size, len(train)), replace=False)))
        t0 = time.perf_counter()
        batch = batch_rows(store, idx)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        maps = mapped_planner_maps(mapper(batch), labels["goal"][idx])
        planner_loss(planner(maps), labels["optimal_actions"][idx]).backward()
        optimizer.step()
        t2 = time.perf_counter()
        reads.append(t1 - t0)
        steps.append(t2 - t1)
    read, step = 1000 * statistics.median(reads), 1000 * statistics.median(steps)
    return {
        "phase": f"training batch of {batch_size}",
        "read_ms": round(read, 1),
        "step_ms": round(step, 1),
        "loading_share": round(read / (read + step), 4),
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
    free_views = int((batch.occupancy[1:] == 0).sum()) * maze_scene.DIRECTIONS
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
    parser.add_argument("--threads", type=int, help="torch CPU threads for the training step")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench_visual_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        path, dataset_row = bench_dataset(args.size, args.maps, args.workers, scratch)  # first: no GL context here
        rows = [dataset_row, bench_single_process(args.size, args.single_maps), bench_loading(path)]
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
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
