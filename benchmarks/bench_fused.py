"""Plain vs fused Bellman steps: forward-solve time per iteration, training step, 2,000-map evaluation, large maps.

Sections (each measured plain and fused in one run, repeats interleaved, medians reported with their ratio):

- ``solve``: ms per forward-solver iteration (Anderson, no tolerance) of ID-VIN, ID-SymVIN and ID-ConvGPPN on
  random maps, batch 32, sizes 15, 49, 99; the time of a fixed-budget solve is linear in K, so sizes above 49 use
  ``--k-large`` iterations to keep the run short.
- ``train``: one imitation step (forward, loss, backward, RMSprop) of ID-VIN 15x15, K_fwd=30, K_bwd=15, batch 32.
- ``eval``: `idp_agents.training.evaluate_planner` (%Success/%Optimal from every start) on 2,000 generated 15x15
  mazes, per planner.
- ``large``: ID-VIN forward only (inference mode, fused) on 99x99 and 151x151 maps at two K: time and peak memory
  (torch.profiler CPU memory events, as in bench_planners), which grow with the map and not with K.

The machine is shared, so absolute times are noisy; ratios come from interleaved runs in one process. Writes
``fused.csv`` to ``--out`` and prints the table::

    python -m benchmarks.bench_fused                # about 10 minutes on 2 busy cores
    python -m benchmarks.bench_fused --quick        # smoke run
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.bench_planners import random_maps
from idp_agents.implicit import FixedPointConfig
from idp_agents.planner_input import task_tensors
from idp_agents.planners import Planner, make_planner
from idp_agents.solvers import get_solver
from idp_agents.step_cost import synchronize
from idp_agents.training import evaluate_planner
from idp_envs.tasks import sample_maze_tasks

PLANNERS = ("id-vin", "id-symvin", "id-convgppn")
VARIANTS = ("plain", "fused")


@dataclass
class Row:
    """One line of the table: a quantity measured plain and fused (``plain`` empty where only fused is run)."""

    section: str
    planner: str
    size: int
    batch: int
    k: int
    unit: str
    plain: float
    fused: float
    ratio: float
    note: str = ""


def set_fused(planner: Planner, variant: str) -> None:
    planner.step.fused = variant == "fused"


def interleaved_medians(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Call each run once as warm-up, then ``repeats`` times in turn; the median of what each returns."""
    for run in runs.values():
        run()
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def perturbed(planner: Planner, seed: int) -> Planner:
    """Give VIN/SymVIN's zero-initialised value share small random weights, as after some training."""
    torch.manual_seed(seed)
    q_value = getattr(planner.step, "q_value", None)
    if q_value is not None:
        weight = q_value if isinstance(q_value, torch.nn.Parameter) else q_value.weight
        with torch.no_grad():
            weight.normal_(std=0.05)
    return planner


def solve_row(name: str, size: int, k: int, args: argparse.Namespace, device: torch.device) -> Row:
    planner = perturbed(make_planner(name), args.seed).to(device)
    maps, _ = random_maps(args.batch, size, torch.Generator().manual_seed(args.seed))
    maps = maps.to(device)
    solver = get_solver(args.solver_fwd)

    def run(variant: str) -> float:
        set_fused(planner, variant)
        with torch.no_grad():
            ctx = planner.step.encode(maps)
            z0 = planner.step.initial_state(ctx)
            synchronize(device)
            start = time.perf_counter()
            solver(lambda z: planner.step(z, ctx), z0, k)
            synchronize(device)
        return 1e3 * (time.perf_counter() - start) / k

    medians = interleaved_medians({v: (lambda v=v: run(v)) for v in VARIANTS}, args.repeats)
    return Row("solve", name, size, args.batch, k, "ms/iter", medians["plain"], medians["fused"],
               medians["plain"] / medians["fused"], f"{args.solver_fwd}, no tolerance")  # fmt: skip


def train_row(args: argparse.Namespace, device: torch.device) -> Row:
    fixed_point = FixedPointConfig(k_fwd=30, k_bwd=15)
    planner = perturbed(make_planner("id-vin", fixed_point=fixed_point), args.seed).to(device)
    optimizer = torch.optim.RMSprop(planner.parameters(), lr=1e-3)
    maps, labels = random_maps(args.batch, 15, torch.Generator().manual_seed(args.seed))
    maps, labels = maps.to(device), labels.to(device)
    state = {k: v.clone() for k, v in planner.state_dict().items()}

    def run(variant: str) -> float:
        set_fused(planner, variant)
        planner.load_state_dict(state)  # every run starts from the same weights
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(planner(maps).logits, labels).backward()
        optimizer.step()
        synchronize(device)
        return 1e3 * (time.perf_counter() - start)

    medians = interleaved_medians({v: (lambda v=v: run(v)) for v in VARIANTS}, args.repeats)
    return Row("train", "id-vin", 15, args.batch, 30, "ms/step", medians["plain"], medians["fused"],
               medians["plain"] / medians["fused"], "k_bwd=15, anderson both ways, RMSprop")  # fmt: skip


def eval_row(name: str, tensors: dict, args: argparse.Namespace, device: torch.device) -> Row:
    planner = perturbed(make_planner(name), args.seed).to(device)

    def run(variant: str) -> float:
        set_fused(planner, variant)
        synchronize(device)
        start = time.perf_counter()
        evaluate_planner(planner, tensors, args.eval_batch)
        synchronize(device)
        return time.perf_counter() - start

    medians = interleaved_medians({v: (lambda v=v: run(v)) for v in VARIANTS}, max(1, args.repeats // 2))
    n, size = tensors["maps"].shape[0], tensors["maps"].shape[-1]
    return Row("eval", name, size, args.eval_batch, 30, "s", medians["plain"], medians["fused"],
               medians["plain"] / medians["fused"], f"{n} maps, all starts, inference_mode")  # fmt: skip


def peak_forward_bytes(planner: Planner, maps: torch.Tensor) -> int:
    """Peak bytes allocated above the start during one inference-mode forward (CUDA allocator or CPU profiler)."""
    if maps.device.type == "cuda":
        synchronize(maps.device)
        torch.cuda.reset_peak_memory_stats(maps.device)
        start = torch.cuda.memory_allocated(maps.device)
        with torch.inference_mode():
            planner(maps)
        synchronize(maps.device)
        return torch.cuda.max_memory_allocated(maps.device) - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        with torch.inference_mode():
            planner(maps)
    events = [e for e in profile.profiler.kineto_results.events() if e.name() == "[memory]"]
    sizes = torch.tensor([e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())], dtype=torch.float64)
    return int(sizes.cumsum(0).max().clamp_min(0).item()) if len(sizes) else 0


def large_rows(args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows = []
    for size in args.large_sizes:
        maps, _ = random_maps(args.large_batch, size, torch.Generator().manual_seed(args.seed))
        maps = maps.to(device)
        for k in args.large_ks:
            planner = perturbed(make_planner("id-vin", k_fwd=k), args.seed).to(device).eval()
            synchronize(device)
            start = time.perf_counter()
            with torch.inference_mode():
                planner(maps)
            synchronize(device)
            seconds = time.perf_counter() - start
            peak = peak_forward_bytes(planner, maps) / 2**20
            rows.append(Row("large", "id-vin", size, args.large_batch, k, "MiB", float("nan"), peak, float("nan"),
                            f"fused forward only, {seconds:.2f} s"))  # fmt: skip
    return rows


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(row).items()})


def format_table(rows: Sequence[Row]) -> str:
    header = (
        f"{'section':<6} {'planner':<12} {'size':>4} {'B':>4} {'K':>4} {'unit':<8} {'plain':>9} {'fused':>9} {'x':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.section:<6} {r.planner:<12} {r.size:>4} {r.batch:>4} {r.k:>4} {r.unit:<8} {r.plain:>9.2f} "
            f"{r.fused:>9.2f} {r.ratio:>6.2f}  {r.note}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["solve", "train", "eval", "large"])
    parser.add_argument("--planners", nargs="+", default=list(PLANNERS), choices=PLANNERS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[15, 49, 99])
    parser.add_argument("--k", type=int, default=80, help="solver iterations timed for sizes up to 49")
    parser.add_argument("--k-large", type=int, default=10, help="solver iterations timed for sizes above 49")
    parser.add_argument("--solver-fwd", default="anderson")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per variant (median)")
    parser.add_argument("--eval-maps", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=15)
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--large-sizes", nargs="+", type=int, default=[99, 151])
    parser.add_argument("--large-ks", nargs="+", type=int, default=[30, 120])
    parser.add_argument("--large-batch", type=int, default=4)
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, few iterations and maps")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.sizes, args.k, args.k_large, args.repeats, args.batch = [15], 5, 5, 1, 4
        args.eval_maps, args.large_sizes, args.large_ks, args.large_batch = 64, [31], [5, 10], 1
    for name in ("batch", "repeats", "k", "k_large", "eval_maps", "eval_batch", "large_batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    unknown = sorted(set(args.sections) - {"solve", "train", "eval", "large"})
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from solve, train, eval, large")
    return args


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows: list[Row] = []
    if "solve" in args.sections:
        configs = [(name, size) for size in args.sizes for name in args.planners]
        for name, size in tqdm(configs, desc="solve", unit="config"):
            rows.append(solve_row(name, size, args.k if size <= 49 else args.k_large, args, device))
    if "train" in args.sections:
        rows.append(train_row(args, device))
    if "eval" in args.sections:
        tasks = sample_maze_tasks(args.eval_maps, args.eval_size, np.random.default_rng(args.seed))
        tensors = task_tensors(tasks, device)
        for name in tqdm(args.planners, desc="eval", unit="planner"):
            rows.append(eval_row(name, tensors, args, device))
    if "large" in args.sections:
        rows.extend(large_rows(args, device))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fused.csv"
    write_csv(rows, path)
    print(format_table(rows))
    print(f"device {device}, {args.threads} thread(s), medians of {args.repeats} interleaved runs; wrote {path}")
    return rows


if __name__ == "__main__":
    main()
