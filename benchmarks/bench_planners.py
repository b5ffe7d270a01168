"""Forward time, backward time and peak memory of unrolled vs implicit planners as the number of iterations K grows.

For each planner (vin, convgppn, symvin) x {unrolled, implicit} x map size x K, one imitation-style step
(cross-entropy of the action logits against random labels) on random maps: the forward pass, then
``loss.backward()``, each timed separately; the median over ``--repeats`` runs after one warm-up run.
Implicit planners use fixed budgets (k_fwd = K forward-solver iterations, k_bwd = 15, no tolerances), so their
times are comparable across K; ``--tol 1e-4`` stops both solves at that relative residual instead, as training does.

Peak memory is measured in a separate, untimed forward + backward: on CUDA from the caching allocator's
statistics (max_memory_allocated minus what was allocated before); on the CPU from torch.profiler's memory events
(every CPU allocator allocation and free during the pass, summed in time order; peak of live bytes above the
start). Parameters and input maps, allocated before, are not counted in either. A third untimed step counts the
host synchronisations (scalar reads and nonzero) and top-level operator calls with torch.profiler
(``training.count_host_syncs_and_ops``); those counts are the same on a CPU and a GPU.

Writes ``planners.csv`` and ``planners.png`` (backward time and peak memory vs K, one panel per size, unrolled
dashed, implicit solid) to ``--out`` and prints the table::

    python -m benchmarks.bench_planners --planners vin convgppn --sizes 15 27
    python -m benchmarks.bench_planners --quick
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from idp_agents import step_cost
from idp_agents.implicit import FixedPointConfig
from idp_agents.planners import Planner, make_planner
from idp_agents.training import count_host_syncs_and_ops

PLANNER_NAMES = ("vin", "convgppn", "symvin")
MODES = ("unrolled", "implicit")
MEMORY_METHODS = {"cuda": "cuda allocator max_memory_allocated", "cpu": "torch.profiler CPU memory events"}


@dataclass
class Measurement:
    """One row of the benchmark table."""

    planner: str
    mode: str
    size: int
    k: int
    batch: int
    hidden: int | None  # ConvGPPN's hidden channels
    device: str
    k_bwd: int
    solver_fwd: str
    solver_bwd: str
    tol: float | None
    forward_ms: float
    backward_ms: float
    peak_memory_mb: float
    memory_method: str
    host_syncs: int
    operators: int
    repeats: int


def random_maps(batch: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Maps (B, 2, size, size) with ~30% obstacles and one free goal cell each, and random action labels."""
    obstacles = (torch.rand(batch, size, size, generator=generator) < 0.3).float()
    goal_index = torch.randint(0, size * size, (batch,), generator=generator)
    goal = F.one_hot(goal_index, size * size).float().reshape(batch, size, size)
    obstacles = obstacles * (1 - goal)
    labels = torch.randint(0, 4, (batch, size, size), generator=generator)
    return torch.stack([obstacles, goal], dim=1), labels


def build_planner(
    name: str,
    mode: str,
    k: int,
    k_bwd: int,
    solver_fwd: str,
    solver_bwd: str,
    tol: float | None = None,
    hidden: int | None = None,
) -> Planner:
    fixed_point = FixedPointConfig(
        k_fwd=k, k_bwd=k_bwd, solver_fwd=solver_fwd, solver_bwd=solver_bwd, tol_fwd=tol, tol_bwd=tol
    )
    hyper = {"hidden": hidden} if hidden is not None and name == "convgppn" else {}
    return make_planner(name if mode == "unrolled" else f"id-{name}", fixed_point=fixed_point, **hyper)


def timed_step(planner: Planner, maps: Tensor, labels: Tensor) -> tuple[float, float]:
    """Seconds for the forward pass (with the loss) and for the backward pass."""
    planner.zero_grad(set_to_none=True)
    return step_cost.timed_step(lambda: F.cross_entropy(planner(maps, step=0).logits, labels), maps.device)


def peak_memory_bytes(planner: Planner, maps: Tensor, labels: Tensor) -> int:
    """Peak bytes allocated above the starting level during one forward + backward (see the module docstring)."""
    planner.zero_grad(set_to_none=True)
    return step_cost.peak_bytes(lambda: F.cross_entropy(planner(maps, step=0).logits, labels).backward(), maps.device)


def measure(name: str, mode: str, size: int, k: int, args: argparse.Namespace, device: torch.device) -> Measurement:
    torch.manual_seed(args.seed)
    planner = build_planner(name, mode, k, args.k_bwd, args.solver_fwd, args.solver_bwd, args.tol, args.hidden)
    planner = planner.to(device)
    maps, labels = random_maps(args.batch, size, torch.Generator().manual_seed(args.seed))
    maps, labels = maps.to(device), labels.to(device)
    timed_step(planner, maps, labels)
    times = [timed_step(planner, maps, labels) for _ in range(args.repeats)]
    peak = peak_memory_bytes(planner, maps, labels)
    planner.zero_grad(set_to_none=True)
    syncs, operators = count_host_syncs_and_ops(
        lambda: F.cross_entropy(planner(maps, step=0).logits, labels).backward()
    )
    return Measurement(
        planner=name,
        mode=mode,
        size=size,
        k=k,
        batch=args.batch,
        hidden=getattr(planner.step, "hidden", None),
        device=str(device),
        k_bwd=args.k_bwd if mode == "implicit" else 0,
        solver_fwd=args.solver_fwd if mode == "implicit" else "",
        solver_bwd=args.solver_bwd if mode == "implicit" else "",
        tol=args.tol if mode == "implicit" else None,
        forward_ms=1e3 * statistics.median(t[0] for t in times),
        backward_ms=1e3 * statistics.median(t[1] for t in times),
        peak_memory_mb=peak / 2**20,
        memory_method=MEMORY_METHODS[device.type if device.type == "cuda" else "cpu"],
        host_syncs=syncs,
        operators=operators,
        repeats=args.repeats,
    )


def write_csv(rows: Sequence[Measurement], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(row).items()})


def plot(rows: Sequence[Measurement], path: Path) -> None:
    """Backward time (top) and peak memory (bottom) vs K; one column per map size; unrolled dashed, implicit solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.size for r in rows})
    planners = list(dict.fromkeys(r.planner for r in rows))
    colours = dict(zip(planners, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    figure, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.4), squeeze=False, sharex=True)
    for column, size in enumerate(sizes):
        for planner in planners:
            for mode in MODES:
                line = sorted(
                    (r for r in rows if (r.size, r.planner, r.mode) == (size, planner, mode)), key=lambda r: r.k
                )
                if not line:
                    continue
                label = planner if mode == "unrolled" else f"id-{planner}"
                style = dict(color=colours[planner], linestyle="--" if mode == "unrolled" else "-", marker="o")
                axes[0, column].plot([r.k for r in line], [r.backward_ms for r in line], label=label, **style)
                axes[1, column].plot([r.k for r in line], [r.peak_memory_mb for r in line], label=label, **style)
        axes[0, column].set_title(f"{size}x{size} maps")
        axes[1, column].set_xlabel("K (iterations)")
    axes[0, 0].set_ylabel("backward time (ms)")
    axes[1, 0].set_ylabel("peak memory (MiB)")
    axes[0, -1].legend(fontsize="small")
    device = rows[0].device
    figure.suptitle(f"unrolled (dashed) vs implicit (solid)\nbatch {rows[0].batch}, {device}", fontsize="medium")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_table(rows: Sequence[Measurement]) -> str:
    header = (
        f"{'planner':<9} {'mode':<9} {'size':>4} {'K':>4} {'fwd ms':>9} {'bwd ms':>9} {'peak MiB':>9} "
        f"{'syncs':>6} {'ops':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.planner:<9} {r.mode:<9} {r.size:>4} {r.k:>4} {r.forward_ms:>9.1f} {r.backward_ms:>9.1f} "
            f"{r.peak_memory_mb:>9.1f} {r.host_syncs:>6} {r.operators:>7}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planners", nargs="+", default=list(PLANNER_NAMES), choices=PLANNER_NAMES)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[15, 27, 49])
    parser.add_argument("--ks", nargs="+", type=int, default=[30, 50, 80, 120])
    parser.add_argument("--k-bwd", type=int, default=15, help="backward-solver iterations of implicit planners")
    parser.add_argument("--solver-fwd", default="anderson")
    parser.add_argument("--solver-bwd", default="anderson")
    parser.add_argument("--tol", type=float, default=None, help="tolerance of both implicit solves (default: none)")
    parser.add_argument("--hidden", type=int, default=None, help="ConvGPPN hidden channels (default: its own, 40)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8 on the CPU, 32 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="smoke run: size 15, K 10 and 20, one repeat, batch 2")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.sizes, args.ks, args.repeats, args.batch = [15], [10, 20], 1, args.batch or 2
    if args.batch is None:
        args.batch = 32 if torch.device(args.device).type == "cuda" else 8
    for name in ("batch", "repeats", "k_bwd"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.sizes) < 3 or min(args.ks) < 1:
        parser.error("sizes must be at least 3 and Ks at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[Measurement]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = [
        (name, mode, size, k) for name in args.planners for size in args.sizes for mode in args.modes for k in args.ks
    ]
    rows = [measure(*config, args, device) for config in tqdm(configs, desc="planners", unit="config")]
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "planners.csv")
    plot(rows, args.out / "planners.png")
    print(format_table(rows))
    print(f"device {device}, batch {args.batch}, median of {args.repeats}; peak memory: {rows[0].memory_method}")
    print(f"wrote {args.out / 'planners.csv'} and {args.out / 'planners.png'}")
    return rows


if __name__ == "__main__":
    main()
