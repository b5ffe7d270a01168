"""How long from a click in the viewer to the redrawn plan? Milliseconds per wall toggle on 15x15 and 49x49 mazes.

Each click goes through the viewer as a real one does (`Viewer.handle` of a mouse event, then `Viewer.show`: the
edit, one forward solve, the map's scores from every start, the frame, the blit), on SDL's dummy video driver.
Planners: an implicit VIN set to exact value iteration (`set_value_iteration`: one cell per iteration, so the
solve runs as long as the longest path), and, given ``--checkpoint``, a trained one (a convolutional planner trained
on 15x15 maps plans 49x49 ones too).

    python -m benchmarks.bench_view --threads 1 --checkpoint runs/latest/best.pt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pygame  # noqa: E402
import torch  # noqa: E402

import idp_envs  # noqa: E402, F401
from idp_agents.plan_view import PlanView  # noqa: E402
from idp_agents.planners import make_planner  # noqa: E402
from idp_agents.planners.vin import set_value_iteration  # noqa: E402
from idp_agents.policy import PlannerPolicy  # noqa: E402
from idp_agents.view import Viewer  # noqa: E402
from idp_envs.files import atomic_write  # noqa: E402


def machine() -> str:
    """The CPU's model name and core count (Linux's /proc/cpuinfo), else what ``platform`` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}; {os.cpu_count()} cores; {torch.get_num_threads()} torch threads"


def value_iteration_policy(size: int) -> PlannerPolicy:
    planner = make_planner("id-vin", k_fwd=4 * size * size)  # the default channel counts: a default-sized step
    set_value_iteration(planner.step)
    return PlannerPolicy(planner)


def time_clicks(policy: PlannerPolicy, size: int, clicks: int, seed: int) -> dict:
    """Median and 90th percentile milliseconds from a wall-toggling click to the shown frame, over ``clicks``."""
    env = gym.make(f"IDP/GridMaze-{size}-v0", render_mode="rgb_array")
    viewer = Viewer(PlanView(env, policy, seed=seed))
    viewer.open()
    rng = np.random.default_rng(seed)
    times, iterations, refused = [], [], 0
    try:
        viewer.show()
        top, left, px = viewer.view.inner.grid_panel()
        while len(times) < clicks:
            r, c = (int(i) for i in rng.integers(0, size, 2))
            event = pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(left + c * px + 1, top + r * px + 1))
            begin = time.perf_counter()
            viewer.handle(event)
            viewer.show()
            elapsed = 1000 * (time.perf_counter() - begin)
            if viewer.view.message.startswith("refused"):
                refused += 1
                continue
            times.append(elapsed)
            iterations.append(viewer.view.plan.iterations)
    finally:
        viewer.close()
        env.close()
    return {
        "ms_median": statistics.median(times),
        "ms_p90": float(np.percentile(times, 90)),
        "iterations_median": statistics.median(iterations),
        "refused": refused,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_view", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a trained planner's checkpoint, timed beside value iteration")
    p.add_argument("--sizes", nargs="+", type=int, default=[15, 49], choices=idp_envs.MAZE_SIZES)
    p.add_argument("--clicks", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/view.csv"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        policies = {"value iteration (id-vin)": value_iteration_policy(size)}
        if args.checkpoint:
            policies[f"{args.checkpoint}"] = PlannerPolicy.load(args.checkpoint)
        for name, policy in policies.items():
            row = {"size": size, "planner": name, **time_clicks(policy, size, args.clicks, args.seed)}
            rows.append(row)
            print(
                f"{size}x{size} {name}: click to redrawn plan {row['ms_median']:.1f} ms median, "
                f"{row['ms_p90']:.1f} ms p90 ({row['iterations_median']:.0f} solver iterations, median)"
            )
    where = machine().replace(",", " ")
    lines = ["size,planner,ms_median,ms_p90,iterations_median,machine"] + [
        f"{r['size']},{r['planner']},{r['ms_median']:.2f},{r['ms_p90']:.2f},{r['iterations_median']:.0f},{where}"
        for r in rows
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        f.write(("\n".join(lines) + "\n").encode())
    return rows


if __name__ == "__main__":
    main()
