"""The sweep report: finished runs collected into a table and a CSV, step times measured on trained planners,
generalisation to larger mazes, and summary.md with its figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from idp_agents import step_cost
from idp_agents.distributed import resolve_device
from idp_agents.experiments.plots import plot_generalisation, plot_step_times, plot_success_vs_k, plot_training_curves
from idp_agents.experiments.runner import STATUSES, run_status
from idp_agents.experiments.sweeps import Sweep
from idp_agents.run_config import RunConfig
from idp_agents.run_files import write_metrics_csv

DIVERGED_BELOW = 0.2


def collect(sweep: Sweep) -> list[dict]:
    """One record per run of the grid: its status, test metrics and per-epoch history (when finished)."""
    records = []
    for spec in sweep.runs():
        run_dir = sweep.run_dir(spec)
        status = run_status(run_dir)
        record = {"task": spec.task, "planner": spec.planner, "mode": spec.mode, "k": spec.k, "seed": spec.seed}
        record.update(status=status, success=None, optimal=None, spl=None, best_epoch=None, error="", history=[])
        if status == "done":
            report = json.loads((run_dir / "test_report.json").read_text())
            record.update(
                {k: report["test"][k] for k in ("success", "optimal", "spl")}, best_epoch=report["best_epoch"]
            )
        elif status != "not run":
            record["error"] = json.loads((run_dir / "failure.json").read_text())["error"]
        metrics = run_dir / "metrics.csv"
        if metrics.exists():
            with open(metrics) as f:
                record["history"] = list(csv.DictReader(f))
        records.append(record)
    return records


def summary_cell(runs: list[dict]) -> str:
    """Mean ± std (%) of test success over the finished seeds; † when any run diverged (success < 20% or a
    diverged solver), and the count of runs that ran out of memory or failed."""
    finished = [r["success"] for r in runs if r["status"] == "done"]
    counts = {s: sum(r["status"] == s for r in runs) for s in STATUSES}
    if finished:
        text = f"{100 * np.mean(finished):.1f} ± {100 * np.std(finished):.1f}"
    elif counts["out of memory"]:
        text = "OOM"
    elif counts["diverged"]:
        text = "diverged"
    elif counts["failed"]:
        text = "failed"
    else:
        return "—"
    if counts["diverged"] or any(s < DIVERGED_BELOW for s in finished):
        text += " †"
    notes = []
    if finished:
        notes += [f"OOM {counts['out of memory']}/{len(runs)}"] if counts["out of memory"] else []
        notes += [f"failed {counts['failed']}/{len(runs)}"] if counts["failed"] else []
        notes += [f"{len(finished)}/{len(runs)} seeds run"] if counts["not run"] else []
    return text + (f" ({', '.join(notes)})" if notes else "")


def success_table(sweep: Sweep, records: list[dict]) -> str:
    """Markdown: one row per planner and K, one column per task."""
    tasks = [t["name"] for t in sweep.tasks]
    lines = ["| planner | K | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for planner in sweep.planners:
        for k in sweep.k:
            cells = []
            for task in tasks:
                runs = [r for r in records if (r["task"], r["planner"], r["k"]) == (task, planner, k)]
                cells.append(summary_cell(runs))
            lines.append(f"| {planner} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results_csv(records: list[dict], path: Path) -> None:
    columns = ["task", "planner", "mode", "k", "seed", "status", "success", "optimal", "spl", "best_epoch", "error"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def time_step(planner, maps: torch.Tensor, optimal: torch.Tensor, repeats: int = 3) -> tuple[float, float]:
    """Median forward and backward milliseconds of one imitation training step, after one warm-up step."""
    from idp_agents.training import imitation_loss

    planner.train()
    times = []
    for _ in range(repeats + 1):
        planner.zero_grad(set_to_none=True)
        times.append(step_cost.timed_step(lambda: imitation_loss(planner(maps, step=0).logits, optimal), maps.device))
    forward, backward = np.median(np.array(times[1:]), axis=0)
    return 1e3 * float(forward), 1e3 * float(backward)


def measure_step_times(sweep: Sweep, device: torch.device) -> list[dict]:
    """Forward/backward time vs K of each trained (task, planner, K), on a training-size batch of its test maps
    (true maps: a mapper's cost does not grow with K); cached in the report folder."""
    from idp_agents.planner_input import task_tensors
    from idp_agents.policy import PlannerPolicy
    from idp_envs.datasets import read_dataset

    cache = sweep.report_dir() / "step_times.csv"
    rows = {}
    if cache.exists():
        with open(cache) as f:
            rows = {(r["task"], r["planner"], r["k"]): r for r in csv.DictReader(f)}
    for spec in sweep.runs():
        key = (spec.task, spec.planner, str(spec.k))
        run_dir = sweep.run_dir(spec)
        if key in rows or run_status(run_dir) != "done":
            continue
        report = json.loads((run_dir / "test_report.json").read_text())
        splits, _ = read_dataset(report["dataset"])
        batch = dict(spec.settings).get("batch_size", RunConfig.batch_size)
        tensors = task_tensors(splits["test"].subset(slice(0, batch)), device)
        planner = PlannerPolicy.load(run_dir / "best.pt", device).planner
        fwd, bwd = time_step(planner, tensors["maps"], tensors["optimal_actions"])
        rows[key] = {"task": spec.task, "planner": spec.planner, "k": str(spec.k), "forward_ms": fwd}
        rows[key].update(backward_ms=bwd, batch=len(tensors["maps"]), device=str(device))
    if rows:
        write_metrics_csv(cache, list(rows.values()))
    return list(rows.values())


def evaluate_generalisation(sweep: Sweep, device: torch.device) -> list[dict]:
    """Success of every trained run of the generalisation task on fresh mazes of each test size (cached)."""
    from idp_agents.planner_input import task_tensors
    from idp_agents.policy import PlannerPolicy
    from idp_agents.training import evaluate_planner
    from idp_envs.tasks import sample_maze_tasks

    spec_g = sweep.generalisation
    task = next(t for t in sweep.tasks if t["name"] == spec_g["task"])
    if "GridMaze" not in task["env"]:
        raise ValueError(f"generalisation evaluates on generated mazes; task {task['name']} is {task['env']}")
    cache = sweep.report_dir() / "generalisation.csv"
    rows = {}
    if cache.exists():
        with open(cache) as f:
            rows = {(r["run"], r["size"]): r for r in csv.DictReader(f)}
    tensors = {}
    for spec in sweep.runs():
        if spec.task != task["name"] or run_status(sweep.run_dir(spec)) != "done":
            continue
        todo = [size for size in spec_g["sizes"] if (spec.key, str(size)) not in rows]
        if not todo:
            continue
        planner = PlannerPolicy.load(sweep.run_dir(spec) / "best.pt", device).planner
        for size in todo:
            if size not in tensors:
                rng = np.random.default_rng(spec_g.get("seed", 12345) + size)
                tensors[size] = task_tensors(sample_maze_tasks(spec_g.get("maps", 100), size, rng), device)
            metrics = evaluate_planner(planner, tensors[size], batch_size=32)
            rows[(spec.key, str(size))] = {
                "run": spec.key,
                "planner": spec.planner,
                "k": str(spec.k),
                "seed": str(spec.seed),
                "size": str(size),
                "success": metrics.success,
                "optimal": metrics.optimal,
            }
    if rows:
        write_metrics_csv(cache, list(rows.values()))
    return list(rows.values())


def generalisation_table(sweep: Sweep, rows: list[dict]) -> str:
    sizes = sweep.generalisation["sizes"]
    lines = ["| planner | K | " + " | ".join(f"{s}x{s}" for s in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for planner in sweep.planners:
        for k in sweep.k:
            cells = []
            for size in sizes:
                values = [
                    float(r["success"])
                    for r in rows
                    if (r["planner"], r["k"], r["size"]) == (planner, str(k), str(size))
                ]
                cells.append(f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}" if values else "—")
            lines.append(f"| {planner} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(sweep: Sweep, timing: bool = True, device: str = "auto") -> Path:
    """The table, figures and a markdown summary linking them, in OUT/report; returns the summary's path."""
    out = sweep.report_dir()
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    records = collect(sweep)
    write_results_csv(records, out / "results.csv")
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    form = " --small" if sweep.small else ""
    lines = [
        f"# {sweep.name}{' (small)' if sweep.small else ''}",
        "",
        *([sweep.description.strip(), ""] if sweep.description else []),
        f"`python -m idp_agents.experiments run {sweep.path}{form}`: {len(records)} runs "
        f"({len(sweep.tasks)} tasks x {len(sweep.planners)} planners x K {sweep.k} x seeds {sweep.seeds}); "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + ".",
        "",
        "## Test success (%)",
        "",
        "Closed-loop %Success of the argmax policy over every free start cell from which the goal is reachable, on "
        f"every test map; mean ± std over seeds. † marks a method with a run under {100 * DIVERGED_BELOW:.0f}% "
        "success or a diverged solver (as the paper marks divergence); OOM: out of the memory budget; "
        "per-run numbers in [results.csv](results.csv).",
        "",
        success_table(sweep, records),
        "",
        "## Figures",
        "",
    ]
    plot_success_vs_k(sweep, records, out / "success_vs_k.png")
    lines.append("- [Success vs K](success_vs_k.png), unrolled (dashed) vs implicit (solid), one panel per task")
    if timing:
        step_rows = measure_step_times(sweep, torch_device)
        plot_step_times(sweep, step_rows, out / "time_vs_k.png")
        lines.append(
            "- [Forward and backward time vs K](time_vs_k.png) of one training step of each trained planner "
            "(median of 3; [step_times.csv](step_times.csv))"
        )
    plot_training_curves(sweep, records, out / "training_curves.png")
    lines.append("- [Training curves](training_curves.png): validation %Success per epoch, mean over seeds")
    if sweep.generalisation is not None:
        rows = evaluate_generalisation(sweep, torch_device)
        plot_generalisation(sweep, rows, out / "generalisation.png")
        g = sweep.generalisation
        lines += [
            f"- [Generalisation](generalisation.png): trained on {g['task']}, tested on {g.get('maps', 100)} fresh "
            f"mazes of each size",
            "",
            f"## Generalisation from {g['task']} (test %Success)",
            "",
            generalisation_table(sweep, rows),
        ]
    failures = [r for r in records if r["status"] not in ("done", "not run")]
    if failures:
        lines += ["", "## Runs that did not finish", ""]
        lines += [
            f"- {r['task']}/{r['planner']}/k{r['k']}/seed{r['seed']}: {r['status']}: {r['error']}" for r in failures
        ]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary
