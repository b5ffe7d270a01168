"""Resumable sweeps of imitation runs (task x planner x K x seed) from a YAML config, and the paper's reports.

    python -m idp_agents.experiments run experiments/nav2d.yaml --small
    python -m idp_agents.experiments report experiments/nav2d.yaml --small

A run whose directory holds ``test_report.json`` is finished and skipped; one that failed holds ``failure.json``
(status ``out of memory``, ``diverged`` or ``failed``, and the error) and is skipped unless ``--retry-failed``; an
interrupted run resumes from its ``last.pt``. ``--jobs N`` runs N subprocesses at once, ``--devices 0 1 ..``
gives each its own GPU through CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from idp_agents import imitate, step_cost
from idp_agents.distributed import resolve_device
from idp_agents.planners import PLANNERS, step_hyperparameters
from idp_agents.run_config import STEP_FIELDS, RunConfig, write_config_file
from idp_agents.run_files import write_metrics_csv
from idp_agents.solvers import clear_workspaces
from idp_envs.files import atomic_write

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
SWEEP_KEYS = {"name", "description", "tasks", "planners", "k", "seeds", "common", "planner_settings", "generalisation"}
SET_BY_SWEEP = {"planner", "k_fwd", "seed", "out", "resume"}
DIVERGED_BELOW = 0.2
STATUSES = ("done", "out of memory", "diverged", "failed", "not run")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a task of the config, a planner, K and a seed, with every RunConfig setting it takes."""

    task: str
    planner: str
    k: int | None  # None: the planner's default
    seed: int
    settings: tuple = ()

    @property
    def key(self) -> str:
        k = "default" if self.k is None else self.k
        return f"{self.task}/{self.planner}/k{k}/seed{self.seed}"

    @property
    def mode(self) -> str:
        return PLANNERS[self.planner].mode


@dataclass
class Sweep:
    """A config file resolved for one form (full or ``--small``)."""

    name: str
    path: Path
    small: bool
    out: Path
    tasks: list[dict]
    planners: list[str]
    k: list[int]
    seeds: list[int]
    common: dict = field(default_factory=dict)
    planner_settings: dict = field(default_factory=dict)
    generalisation: dict | None = None
    description: str = ""

    def runs(self) -> list[RunSpec]:
        """Every run of the grid, task-major, with the settings the planner accepts."""
        return [
            RunSpec(t["name"], p, k, s, tuple(sorted(self.settings(t, p).items())))
            for t in self.tasks
            for p in self.planners
            for k in self.k
            for s in self.seeds
        ]

    def settings(self, task: dict, planner: str) -> dict:
        """RunConfig fields of a run: common, then the task's, then the planner's; step hyperparameters the planner
        does not take (``hidden`` for VIN, ``l_h`` for ConvGPPN) are dropped so one ``common`` serves all six."""
        merged = {**self.common, **{k: v for k, v in task.items() if k != "name"}}
        merged.update(self.planner_settings.get(planner, {}))
        accepted = step_hyperparameters(PLANNERS[planner].step)
        return {k: v for k, v in merged.items() if k not in STEP_FIELDS or k in accepted}

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / spec.key

    def report_dir(self) -> Path:
        return self.out / "report"


def _check_keys(where: str, given: dict, valid: set) -> None:
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid: {sorted(valid)}")


def _check_mappings(where: str, raw: dict) -> None:
    for key in ("common", "planner_settings", "generalisation"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ValueError(f"{where}: {key} must be a mapping, got {raw[key]!r}")


def _small_description(raw: dict, small_part: dict) -> str:
    """What a config's small form runs, for a config whose ``small:`` section has no description of its own."""
    tasks = [t for t in small_part.get("tasks", raw.get("tasks", [])) if isinstance(t, dict)]
    runs = ", ".join(
        f"{t.get('name')} ({t.get('env')}" + (f" size {t['size']})" if "size" in t else ")") for t in tasks
    )
    full = str(raw.get("description", "")).strip()
    return f"The small form (--small) of this config, sized for a CPU in minutes: {runs}." + (
        f" The full config: {full}" if full else ""
    )


def load_sweep(path: str | os.PathLike, small: bool = False, out: str | None = None) -> Sweep:
    """Read a sweep config; ``small`` overlays its ``small:`` section (``common`` merged key by key, the rest
    replaced). Every key is checked here, so a typo fails before the first run starts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep config at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path} is not valid YAML{line}: {problem}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text file, so not a sweep config") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep config is a YAML mapping")
    small_part = raw.pop("small", None)
    _check_keys(str(path), raw, SWEEP_KEYS)
    _check_mappings(str(path), raw)
    if small:
        if not isinstance(small_part, dict):
            raise ValueError(f"{path} has no small: section for --small")
        _check_keys(f"{path} small:", small_part, SWEEP_KEYS - {"name"})
        _check_mappings(f"{path} small:", small_part)
        common = {**(raw.get("common") or {}), **(small_part.get("common") or {})}
        if "description" not in small_part:  # the full config's description would describe other runs
            small_part = {**small_part, "description": _small_description(raw, small_part)}
        raw = {**raw, **small_part, "common": common}
    for key in ("tasks", "planners", "k", "seeds"):
        if not raw.get(key) or not isinstance(raw[key], list):
            raise ValueError(f"{path}: {key} must be a non-empty list, got {raw.get(key)!r}")
    name = raw.get("name", path.stem)
    tasks = raw["tasks"]
    if not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{path}: every task is a mapping with a name and an env, got {tasks!r}")
    names = [t.get("name") for t in tasks]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"{path}: every task needs a unique name, got {names}")
    for task in tasks:
        _check_keys(f"{path} task {task['name']}", task, (RUN_FIELDS - SET_BY_SWEEP) | {"name"})
        if "env" not in task:
            raise ValueError(f"{path} task {task['name']}: no env")
    _check_keys(f"{path} common", raw.get("common", {}), RUN_FIELDS - SET_BY_SWEEP)
    unknown = sorted(set(raw["planners"]) - set(PLANNERS))
    if unknown:
        raise ValueError(f"{path}: unknown planners {unknown}; valid: {sorted(PLANNERS)}")
    for planner, settings in raw.get("planner_settings", {}).items():
        _check_keys(f"{path} planner_settings {planner}", settings, RUN_FIELDS - SET_BY_SWEEP)
    default_out = Path("runs") / "experiments" / (name + ("-small" if small else ""))
    sweep = Sweep(
        name=name,
        path=path,
        small=small,
        out=Path(out) if out else default_out,
        tasks=tasks,
        planners=list(raw["planners"]),
        k=[int(k) for k in raw["k"]],
        seeds=[int(s) for s in raw["seeds"]],
        common=dict(raw.get("common", {})),
        planner_settings=dict(raw.get("planner_settings", {})),
        generalisation=raw.get("generalisation"),
        description=raw.get("description", ""),
    )
    if sweep.generalisation is not None:
        _check_keys(f"{path} generalisation", sweep.generalisation, {"task", "sizes", "maps", "seed"})
        if sweep.generalisation.get("task") not in names:
            raise ValueError(f"{path} generalisation: task must be one of {names}")
    for spec in sweep.runs():  # every value checked too, before the first run starts
        try:
            run_config(sweep, spec)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} run {spec.key}: {exc}") from None
    return sweep


def run_config(sweep: Sweep, spec: RunSpec, overrides: dict | None = None) -> RunConfig:
    """The imitation run of ``spec``; ``overrides`` (threads, device, cache_dir from the command line) win."""
    settings = {"progress": False, "gif": False, **dict(spec.settings), **(overrides or {})}  # no bars or GIFs
    return RunConfig(**settings, planner=spec.planner, k_fwd=spec.k, seed=spec.seed, out=str(sweep.run_dir(spec)))


def run_status(run_dir: Path) -> str:
    """done | out of memory | diverged | failed (from failure.json) | not run."""
    if (run_dir / "test_report.json").exists():
        return "done"
    failure = run_dir / "failure.json"
    if failure.exists():
        return json.loads(failure.read_text())["status"]
    return "not run"


def classify_failure(error: str) -> str:
    """Out of memory and a diverged solver are results the report shows; anything else is a plain failure."""
    lowered = error.lower()
    if "out of memory" in lowered or "outofmemoryerror" in lowered or "memorybudgetexceeded" in lowered:
        return "out of memory"
    if "diverged" in lowered or "floatingpointerror" in lowered:
        return "diverged"
    return "failed"


def record_failure(run_dir: Path, spec: RunSpec, error: str, detail: str, argv: list[str]) -> str:
    status = classify_failure(f"{error}\n{detail}")
    payload = {"run": spec.key, "status": status, "error": error, "detail": detail, "command": argv}
    with atomic_write(run_dir / "failure.json") as f:
        f.write(json.dumps(payload, indent=2).encode())
    return status


def execute_in_process(config: RunConfig, log: Path) -> str | None:
    """Run in this process, its output to ``log``; the error line and traceback of a failure, or None."""
    with open(log, "a") as f, contextlib.redirect_stdout(f):
        try:
            clear_workspaces()  # free the previous run's cached solver buffers
            imitate.run(config)
        except Exception as exc:  # recorded as the run's result; the sweep goes on
            return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return None


def execute_subprocess(argv: list[str], log: Path, gpu: str | None) -> str | None:
    """Run ``python -m idp_agents.imitate`` in a child process (its own memory; its own GPU when ``gpu``)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    with open(log, "a") as f:
        code = subprocess.run(
            [sys.executable, "-m", "idp_agents.imitate", *argv], stdout=f, stderr=subprocess.STDOUT, env=env
        ).returncode
    if code == 0:
        return None
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    tail = "\n".join(lines[-20:])
    return f"{lines[-1] if lines else f'exit status {code}'}\n{tail}"


def run_one(sweep: Sweep, spec: RunSpec, overrides: dict, in_process: bool, gpu: str | None) -> tuple[str, str]:
    """Run (or resume) one run; its status and a short note for the progress line."""
    run_dir = sweep.run_dir(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "failure.json").unlink(missing_ok=True)
    config = dataclasses.replace(run_config(sweep, spec, overrides), resume=(run_dir / "last.pt").exists())
    write_config_file(config, run_dir / "config.json")  # the run, whole: what the subprocess runs
    argv = ["--config", str(run_dir / "config.json")]
    (run_dir / "command.txt").write_text("python -m idp_agents.imitate " + " ".join(argv) + "\n")
    log = run_dir / "log.txt"
    error = execute_in_process(config, log) if in_process else execute_subprocess(argv, log, gpu)
    if error is None:
        report = json.loads((run_dir / "test_report.json").read_text())
        return "done", f"test %Success {100 * report['test']['success']:.1f}"
    first, _, detail = error.partition("\n")
    return record_failure(run_dir, spec, first, detail, argv), first[:160]


def run_sweep(
    sweep: Sweep,
    overrides: dict | None = None,
    in_process: bool = False,
    jobs: int = 1,
    devices: list[str] | None = None,
    retry_failed: bool = False,
) -> dict[str, str]:
    """Run every unfinished run of the sweep, printing one progress line per run; returns each run's status."""
    overrides = overrides or {}
    if in_process and jobs > 1:
        raise ValueError("--in-process runs one at a time; drop --jobs or run subprocesses")
    specs = sweep.runs()
    statuses = {spec.key: run_status(sweep.run_dir(spec)) for spec in specs}
    todo = [s for s in specs if statuses[s.key] == "not run" or (retry_failed and statuses[s.key] != "done")]
    skipped = len(specs) - len(todo)
    print(f"{sweep.name}: {len(specs)} runs, {skipped} already recorded, {len(todo)} to run -> {sweep.out}", flush=True)
    gpus: queue.Queue = queue.Queue()
    for slot in range(max(jobs, 1)):
        gpus.put(devices[slot % len(devices)] if devices else None)
    lock, done = threading.Lock(), [skipped]

    def work(spec: RunSpec) -> None:
        gpu = gpus.get()
        t0 = time.perf_counter()
        try:
            status, note = run_one(sweep, spec, overrides, in_process, gpu)
        finally:
            gpus.put(gpu)
        with lock:
            statuses[spec.key] = status
            done[0] += 1
            where = f" [gpu {gpu}]" if gpu is not None else ""
            seconds = time.perf_counter() - t0
            print(f"[{done[0]}/{len(specs)}] {spec.key}: {status}, {note} ({seconds:.0f} s){where}", flush=True)

    if jobs <= 1:
        for spec in todo:
            work(spec)
    else:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(work, spec) for spec in todo]:
                future.result()
    return statuses


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


def planner_style(planner: str) -> dict:
    """One colour per Bellman step; implicit solid, unrolled dashed."""
    base = planner.removeprefix("id-")
    colours = {"vin": "tab:blue", "convgppn": "tab:orange", "symvin": "tab:green"}
    return {"color": colours.get(base, "tab:gray"), "linestyle": "-" if planner.startswith("id-") else "--"}


def _figure(rows: int, cols: int, width: float = 4.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return plt, fig, axes


def _legend(ax, fontsize: int) -> None:
    """The planners' legend, saying which lines are which; none when nothing was plotted (an empty sweep)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, title="solid: implicit (id-)\ndashed: unrolled", title_fontsize=fontsize)


def plot_success_vs_k(sweep: Sweep, records: list[dict], path: Path) -> None:
    """Test success vs K, one panel per task; mean ± std over seeds; an x at 0 marks a K that ran out of memory."""
    plt, fig, axes = _figure(1, len(sweep.tasks))
    for ax, task in zip(axes[0], sweep.tasks, strict=True):
        for planner in sweep.planners:
            style = planner_style(planner)
            ks, means, stds, oom = [], [], [], []
            for k in sweep.k:
                runs = [r for r in records if (r["task"], r["planner"], r["k"]) == (task["name"], planner, k)]
                finished = [r["success"] for r in runs if r["status"] == "done"]
                if finished:
                    ks.append(k)
                    means.append(100 * np.mean(finished))
                    stds.append(100 * np.std(finished))
                elif any(r["status"] == "out of memory" for r in runs):
                    oom.append(k)
            if ks:
                ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=planner, **style)
            if oom:
                ax.plot(oom, [0] * len(oom), "x", markersize=9, color=style["color"])
        ax.set(title=task["name"], xlabel="K", ylabel="test %Success", ylim=(-3, 103), xticks=sweep.k)
        ax.grid(alpha=0.3)
    _legend(axes[0][0], 8)
    fig.suptitle("Success vs K (implicit solid, unrolled dashed; x = out of memory)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_curves(sweep: Sweep, records: list[dict], path: Path) -> None:
    """Validation success per epoch, mean over seeds; one panel per task and K."""
    plt, fig, axes = _figure(len(sweep.tasks), len(sweep.k), 3.6, 2.8)
    for row, task in zip(axes, sweep.tasks, strict=True):
        for ax, k in zip(row, sweep.k, strict=True):
            for planner in sweep.planners:
                curves = [
                    [float(h["val_success"]) for h in r["history"]]
                    for r in records
                    if (r["task"], r["planner"], r["k"]) == (task["name"], planner, k) and r["history"]
                ]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                mean = 100 * np.mean([c[:length] for c in curves], axis=0)
                ax.plot(range(1, length + 1), mean, marker=".", label=planner, **planner_style(planner))
            ax.set(title=f"{task['name']}, K={k}", xlabel="epoch", ylabel="val %Success", ylim=(-3, 103))
            ax.grid(alpha=0.3)
    _legend(axes[0][0], 7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_step(planner, maps: torch.Tensor, optimal: torch.Tensor, repeats: int = 3) -> tuple[float, float]:
    """Median forward and backward milliseconds of one imitation training step, after one warm-up step."""
    from idp_agents.training import imitation_loss

    planner.train()
    times = []
    for _ in range(repeats + 1):
        planner.zero_grad(set_to_none=True)
        times.append(step_cost.timed_step(lambda: imitation_loss(planner(maps).logits, optimal), maps.device))
    forward, backward = np.median(np.array(times[1:]), axis=0)
    return 1e3 * float(forward), 1e3 * float(backward)


def measure_step_times(sweep: Sweep, device: torch.device) -> list[dict]:
    """Forward/backward time vs K of each trained (task, planner, K), on a training-size batch of its test maps
    (true maps: a mapper's cost does not grow with K); cached in the report folder."""
    from idp_agents.policy import PlannerPolicy
    from idp_envs.datasets import load_dataset, task_tensors

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
        splits, _ = load_dataset(report["dataset"], with_views=False)
        batch = dict(spec.settings).get("batch_size", RunConfig.batch_size)
        tensors = task_tensors(splits["test"].subset(slice(0, batch)), device)
        planner = PlannerPolicy.load(run_dir / "best.pt", device).planner
        fwd, bwd = time_step(planner, tensors["maps"], tensors["optimal_actions"])
        rows[key] = {"task": spec.task, "planner": spec.planner, "k": str(spec.k), "forward_ms": fwd}
        rows[key].update(backward_ms=bwd, batch=len(tensors["maps"]), device=str(device))
    if rows:
        write_metrics_csv(cache, list(rows.values()))
    return list(rows.values())


def plot_step_times(sweep: Sweep, rows: list[dict], path: Path) -> None:
    plt, fig, axes = _figure(2, len(sweep.tasks))
    for col, task in enumerate(sweep.tasks):
        for row, what in enumerate(("forward_ms", "backward_ms")):
            ax = axes[row][col]
            for planner in sweep.planners:
                points = sorted(
                    (int(r["k"]), float(r[what])) for r in rows if (r["task"], r["planner"]) == (task["name"], planner)
                )
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=planner, **planner_style(planner))
            ax.set(title=f"{task['name']}: {what.split('_')[0]}", xlabel="K", ylabel="ms per batch", xticks=sweep.k)
            ax.grid(alpha=0.3)
    _legend(axes[0][0], 8)
    device = rows[0]["device"] if rows else "?"
    fig.suptitle(f"Forward and backward time of one training step vs K ({device})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_generalisation(sweep: Sweep, device: torch.device) -> list[dict]:
    """Success of every trained run of the generalisation task on fresh mazes of each test size (cached)."""
    from idp_agents.policy import PlannerPolicy
    from idp_agents.training import evaluate_planner
    from idp_envs.datasets import task_tensors
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


def plot_generalisation(sweep: Sweep, rows: list[dict], path: Path) -> None:
    plt, fig, axes = _figure(1, len(sweep.k))
    for ax, k in zip(axes[0], sweep.k, strict=True):
        for planner in sweep.planners:
            points = []
            for size in sweep.generalisation["sizes"]:
                values = [
                    float(r["success"])
                    for r in rows
                    if (r["planner"], r["k"], r["size"]) == (planner, str(k), str(size))
                ]
                if values:
                    points.append((size, 100 * np.mean(values), 100 * np.std(values)))
            if points:
                sizes, means, stds = zip(*points, strict=True)
                ax.errorbar(sizes, means, yerr=stds, marker="o", capsize=3, label=planner, **planner_style(planner))
        ax.set(title=f"trained on {sweep.generalisation['task']}, K={k}", xlabel="test map size", ylabel="%Success")
        ax.set(ylim=(-3, 103), xticks=sweep.generalisation["sizes"])
        ax.grid(alpha=0.3)
    _legend(axes[0][0], 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m idp_agents.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "report"))
    p.add_argument("config", help="a sweep config, e.g. experiments/nav2d.yaml")
    p.add_argument("--small", action="store_true", help="the config's small: form (a 2-core CPU in minutes)")
    p.add_argument("--out", help="sweep folder (default runs/experiments/NAME[-small])")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads per run (imitate --threads) and for report-time timing"
    )
    p.add_argument("--device", help="imitate --device for every run, and the device of report-time timing")
    p.add_argument("--cache-dir", help="where generated datasets are cached (imitate --cache-dir)")
    p.add_argument("--in-process", action="store_true", help="run in this process instead of one subprocess each")
    p.add_argument("--jobs", type=int, default=None, help="runs at once, each a subprocess (default: one per device)")
    p.add_argument("--devices", nargs="+", help="CUDA device indices to spread runs over (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed or OOM")
    p.add_argument("--no-timing", dest="timing", action="store_false", help="report: skip the time-vs-K figure")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be at least 1, got {getattr(args, name)}")
    try:
        sweep = load_sweep(args.config, args.small, args.out)
        if args.command == "report":
            if args.threads:
                torch.set_num_threads(args.threads)
            print(write_report(sweep, args.timing, args.device or "auto"))
            return
        overrides = {k: getattr(args, k) for k in ("threads", "device", "cache_dir") if getattr(args, k) is not None}
        jobs = args.jobs or (len(args.devices) if args.devices else 1)
        statuses = run_sweep(sweep, overrides, args.in_process, jobs, args.devices, args.retry_failed)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    except KeyboardInterrupt:
        print(
            "error: interrupted; finished runs are kept and an interrupted run resumes from its last.pt: rerun the "
            "same command to continue",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    counts = {s: sum(v == s for v in statuses.values()) for s in STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))


if __name__ == "__main__":
    main()
