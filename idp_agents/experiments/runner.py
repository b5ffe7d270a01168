"""Running a sweep: each unfinished run in a subprocess (or in this process), N at once, each GPU its own; a
failure recorded with its status and the sweep going on."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from idp_agents import imitate
from idp_agents.experiments.sweeps import RunSpec, Sweep, run_config
from idp_agents.run_config import RunConfig
from idp_agents.run_flags import write_config_file
from idp_envs.files import atomic_write

STATUSES = ("done", "out of memory", "diverged", "failed", "not run")


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
