"""Does each planner learn, and do the implicit ones keep their fixed point? Six planners, two tasks, several seeds.

Trains VIN, ConvGPPN and SymVIN, unrolled and implicit, on 15x15 mazes and on the 18x18 arm C-space (a torus) by
imitation, with every default of ``python -m idp_agents.imitate``, and writes one CSV row per run and a markdown
table per task: test %Success mean +- std over seeds (best-validation checkpoint), the implicit planner's gap to its
unrolled twin, the largest drop of validation %Success from the best epoch to the last, and at the last epoch the
forward solves' share above tolerance (and above it at their cap ``k_fwd``, before the stragglers' continuation),
their largest final relative residual and the largest spectral radius of the step's Jacobian on the validation probe
maps.

    python -m benchmarks.bench_learning --threads 1 --jobs 2          # CPU-sized: 2,000 maps, 10 epochs, 3 seeds
    python -m benchmarks.bench_learning --full --jobs 6               # the published protocol, for a GPU

Runs go through ``idp_agents.experiments`` (one subprocess each, resumable: a finished run is read back, an
interrupted one resumes), so re-running the command after an interruption only does what is missing.

The CSV is the record: the run directories (``runs/``) are not committed, so a row whose run is not on disk (a fresh
checkout, another machine) is kept from the existing CSV, and a run on disk replaces its row. A fresh checkout can
then add seeds to the committed tables without training again what they already hold.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from pathlib import Path

from idp_agents.experiments import Sweep, collect, run_sweep
from idp_agents.planners import PLANNERS
from idp_agents.run_config import RunConfig
from idp_envs.files import atomic_write

PROTOCOLS = {
    "cpu": {"train": 2000, "val": 200, "test": 500, "epochs": 10},
    "full": {"train": 10000, "val": 2000, "test": 2000, "epochs": 30},
}
SEEDS = (0, 1, 2)
TASKS = {"maze15": "GridMaze-15", "cspace18": "Arm2DOF-CSpace-18"}
PLANNER_ORDER = ("vin", "id-vin", "convgppn", "id-convgppn", "symvin", "id-symvin")
HEALTH = (
    "fwd_nonconverged",
    "fwd_over_cap",
    "fwd_residual_mean",
    "fwd_residual_max",
    "bwd_nonconverged",
    "bwd_residual_max",
    "spectral_radius_max",
)
COLUMNS = (
    "task",
    "planner",
    "seed",
    "status",
    "test_success",
    "test_optimal",
    "epochs",
    "best_epoch",
    "val_best",
    "val_last",
    "best_minus_last",
    *HEALTH,
    "train_minutes",
)


def build_sweep(protocol: str, tasks: list[str], planners: list[str], seeds: list[int], runs: Path, threads) -> Sweep:
    common = dict(PROTOCOLS[protocol])
    if threads:
        common["threads"] = threads
    return Sweep(
        name=f"learning-{protocol}",
        path=Path(__file__),
        small=False,
        out=runs,
        tasks=[{"name": name, "env": TASKS[name]} for name in tasks],
        planners=planners,
        k=[RunConfig.k_fwd],
        seeds=seeds,
        common=common,
    )


def number(value) -> float:
    return float("nan") if value in (None, "") else float(value)


def run_row(record: dict) -> dict:
    """One run's CSV row: test scores, best-vs-last validation success, and the last epoch's fixed-point health."""
    history = record["history"]
    row = {key: record[key] for key in ("task", "planner", "seed", "status")}
    row["test_success"] = number(record["success"])
    row["test_optimal"] = number(record["optimal"])
    row["epochs"] = len(history)  # fewer than the protocol's when a run was cut short and tested where it stood
    row["best_epoch"] = record["best_epoch"]
    val = [number(epoch["val_success"]) for epoch in history]
    row["val_best"] = max(val) if val else math.nan
    row["val_last"] = val[-1] if val else math.nan
    row["best_minus_last"] = row["val_best"] - row["val_last"]
    last = history[-1] if history else {}
    for key in HEALTH:
        row[key] = number(last.get(key))
    row["train_minutes"] = sum(number(epoch["train_seconds"]) for epoch in history) / 60
    return row


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier ``learning.csv`` (none if there is no such file), typed as ``run_row`` makes them."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or set(COLUMNS) - set(reader.fieldnames):
            missing = sorted(set(COLUMNS) - set(reader.fieldnames or []))
            raise ValueError(f"{path} is not a learning table this benchmark wrote: columns {missing} are missing")
        rows = []
        for raw in reader:
            row = {key: raw[key] for key in ("task", "planner", "status")}
            row.update(seed=int(raw["seed"]), epochs=int(raw["epochs"]), best_epoch=raw["best_epoch"])
            for key in COLUMNS[4:]:
                if key not in row:
                    row[key] = number(raw[key])
            rows.append(row)
    return rows


def merge_rows(kept: list[dict], fresh: list[dict]) -> list[dict]:
    """``kept`` rows (from the CSV) updated by ``fresh`` ones (from runs on disk), one per (task, planner, seed),
    in the benchmark's order."""
    by_run = {(r["task"], r["planner"], int(r["seed"])): r for r in kept}
    by_run.update({(r["task"], r["planner"], int(r["seed"])): r for r in fresh})
    order = {name: i for i, name in enumerate(PLANNER_ORDER)}
    tasks = {name: i for i, name in enumerate(TASKS)}
    return sorted(
        by_run.values(), key=lambda r: (tasks.get(r["task"], 99), order.get(r["planner"], 99), int(r["seed"]))
    )


def twin_gap(runs: list[dict], twin_runs: list[dict]) -> str:
    """The implicit planner's test %Success minus its unrolled twin's, over the seeds both have: the mean of the
    per-seed differences, and their range when there are several (a seed gives both planners the same maps, so
    the pairing removes the spread between datasets that both means carry)."""
    twin = {int(r["seed"]): r["test_success"] for r in twin_runs}
    diffs = [100 * (r["test_success"] - twin[int(r["seed"])]) for r in runs if int(r["seed"]) in twin]
    if not diffs:
        return "-"
    text = f"{statistics.fmean(diffs):+.1f}"
    if len(diffs) > 1:
        text += f" ({min(diffs):+.1f} to {max(diffs):+.1f}, {len(diffs)} seeds)"
    return text


def mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def worst(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    values = [v for v in values if not math.isnan(v)]
    return format(scale * max(values), fmt) if values else "-"


def markdown_table(rows: list[dict], task: str) -> str:
    """One line per planner: mean ± std over seeds, and the worst seed for every health column."""
    lines = [
        "| planner | seeds | epochs | test %Success | test %Optimal | vs unrolled twin (per seed) | "
        "best - last val (pts) | fwd % above tol | fwd % at cap | fwd residual max | spectral radius max | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = {
        planner: [r for r in rows if r["task"] == task and r["planner"] == planner and r["status"] == "done"]
        for planner in PLANNER_ORDER
    }
    for planner, runs in done.items():
        if not runs:
            continue
        twin = planner.removeprefix("id-")
        gap = twin_gap(runs, done[twin]) if planner != twin else "-"
        epochs = sorted({r["epochs"] for r in runs})
        epochs = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
        lines.append(
            f"| {planner} | {len(runs)} | {epochs} | {mean_std([r['test_success'] for r in runs])} | "
            f"{mean_std([r['test_optimal'] for r in runs])} | {gap} | "
            f"{worst([r['best_minus_last'] for r in runs], 100)} | "
            f"{worst([r['fwd_nonconverged'] for r in runs], 100, '.2f')} | "
            f"{worst([r['fwd_over_cap'] for r in runs], 100, '.2f')} | "
            f"{worst([r['fwd_residual_max'] for r in runs], 1, '.1e')} | "
            f"{worst([r['spectral_radius_max'] for r in runs], 1, '.3f')} | "
            f"{statistics.fmean(r['train_minutes'] for r in runs):.1f} |"
        )
    return "\n".join(lines)


def write_results(rows: list[dict], tasks: list[str], out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "learning.csv") as f:
        lines = [",".join(COLUMNS)] + [",".join(str(row[c]) for c in COLUMNS) for row in rows]
        f.write(("\n".join(lines) + "\n").encode())
    sections = [f"# {title}\n"]
    for task in tasks:
        sections.append(f"## {task} ({TASKS[task]})\n\n{markdown_table(rows, task)}\n")
    with atomic_write(out / "learning.md") as f:
        f.write("\n".join(sections).encode())


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_learning", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the published protocol (10k/2k/2k maps, 30 epochs)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--planners", nargs="+", default=list(PLANNER_ORDER), choices=sorted(PLANNERS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--jobs", type=int, default=1, help="runs at once (subprocesses)")
    p.add_argument("--devices", nargs="+", help="GPU indices to spread the jobs over")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (1 when several runs share a CPU)")
    p.add_argument("--out", type=Path, help="tables; default: benchmarks/results/learning-cpu or learning-full")
    p.add_argument("--runs", type=Path, help="run directories; default: runs/bench_learning-cpu or -full")
    p.add_argument("--report-only", action="store_true", help="tabulate the finished runs; train nothing")
    args = p.parse_args(argv)
    protocol = "full" if args.full else "cpu"
    out = args.out or Path("benchmarks/results") / f"learning-{protocol}"
    runs = args.runs or Path("runs") / f"bench_learning-{protocol}"
    sweep = build_sweep(protocol, args.tasks, args.planners, args.seeds, runs, args.threads)
    if not args.report_only:
        run_sweep(sweep, jobs=args.jobs, devices=args.devices)
    # The tables cover every finished run, not only the ones this call chose: a call that trains one missing seed
    # must not shrink them to that seed.
    seeds = sorted(set(SEEDS) | set(args.seeds))
    report = build_sweep(protocol, list(TASKS), list(PLANNER_ORDER), seeds, runs, args.threads)
    fresh = [run_row(record) for record in collect(report) if record["status"] != "not run"]
    rows = merge_rows(read_rows(out / "learning.csv"), fresh)
    settings = ", ".join(f"{k} {v}" for k, v in PROTOCOLS[protocol].items())
    write_results(rows, list(TASKS), out, f"Learning benchmark, {protocol} protocol ({settings}; imitate's defaults)")
    print((out / "learning.md").read_text())
    return rows


if __name__ == "__main__":
    main()
