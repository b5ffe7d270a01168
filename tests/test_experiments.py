"""Sweeps: shipped configs validate, a small sweep resumes and reports, failures and OOM are results, DDP trains."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from idp_agents import experiments, imitate
from idp_agents.run_flags import parse_config, write_config_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = """
name: tiny
tasks:
  - {name: maze7, env: GridMaze-v0, size: 7, memory_budget_gb: 2}
  - {name: budget, env: GridMaze-v0, size: 7, memory_budget_gb: 1.0e-6}
planners: [vin, id-convgppn]
k: [3, 6]
seeds: [0, 1]
common: {train: 32, val: 8, test: 8, epochs: 2, batch_size: 16, lr: 5.0e-3, k_bwd: 3, l_h: 4, l_q: 4, hidden: 4}
generalisation: {task: maze7, sizes: [7, 9], maps: 6}
"""


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("small", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_configs_validate_and_round_trip_through_the_config_file(config, small, tmp_path):
    sweep = experiments.load_sweep(config, small=small)
    runs = sweep.runs()
    assert len(runs) == len(sweep.tasks) * len(sweep.planners) * len(sweep.k) * len(sweep.seeds)
    assert len({r.key for r in runs}) == len(runs)
    for spec in runs:
        run = experiments.run_config(sweep, spec)
        run.planner_kwargs()  # step flags the planner does not take were dropped
        write_config_file(run, tmp_path / "config.json")
        assert parse_config(["--config", str(tmp_path / "config.json")]) == run, spec.key


def test_paper_grids():
    nav2d = experiments.load_sweep(ROOT / "experiments" / "nav2d.yaml")
    assert [t["env"] for t in nav2d.tasks] == ["GridMaze-15", "GridMaze-27", "GridMaze-49"]
    assert nav2d.k == [30, 50, 80] and len(nav2d.planners) == 6
    assert experiments.load_sweep(ROOT / "experiments" / "nav2d-75.yaml").k == [30, 50, 80, 120]
    general = experiments.load_sweep(ROOT / "experiments" / "generalisation.yaml")
    assert general.tasks[0]["env"] == "GridMaze-15" and max(general.generalisation["sizes"]) == 99
    table1 = experiments.load_sweep(ROOT / "experiments" / "table1.yaml")
    assert {t["env"] for t in table1.tasks} == {
        "Arm2DOF-CSpace-18",
        "Arm2DOF-CSpace-36",
        "Arm2DOF-Workspace",
        "VisualMaze-15",
    }


def test_bad_configs_fail_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="unknown keys \\['epoch'\\]"):
        experiments.load_sweep(write_config(tmp_path, TINY.replace("epochs: 2", "epoch: 2")))
    with pytest.raises(ValueError, match="unknown planners"):
        experiments.load_sweep(write_config(tmp_path, TINY.replace("id-convgppn", "id-gppn")))
    with pytest.raises(ValueError, match="no small: section"):
        experiments.load_sweep(write_config(tmp_path, TINY), small=True)


def test_failures_are_classified():
    assert experiments.classify_failure("OutOfMemoryError: CUDA out of memory. Tried to allocate") == "out of memory"
    assert experiments.classify_failure("error: out of memory: training needs 3 GB") == "out of memory"
    assert experiments.classify_failure("FloatingPointError: forward solver 'anderson' diverged") == "diverged"
    assert experiments.classify_failure("ValueError: bad map") == "failed"


@pytest.mark.slow
def test_small_sweep_resumes_after_an_interruption_and_reports(tmp_path, monkeypatch, capsys):
    sweep = experiments.load_sweep(write_config(tmp_path, TINY), out=str(tmp_path / "out"))
    overrides = {"threads": 1, "cache_dir": str(tmp_path / "data")}
    calls = []
    original = imitate.run

    def interrupted_on_third_run(config):
        calls.append(config.out)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(config)

    monkeypatch.setattr(imitate, "run", interrupted_on_third_run)
    with pytest.raises(KeyboardInterrupt):
        experiments.run_sweep(sweep, overrides, in_process=True)
    finished = {spec.key: sweep.run_dir(spec) / "test_report.json" for spec in sweep.runs()[:2]}
    stamps = {key: path.stat().st_mtime_ns for key, path in finished.items()}

    calls.clear()
    monkeypatch.setattr(imitate, "run", lambda config: calls.append(config.out) or original(config))
    statuses = experiments.run_sweep(sweep, overrides, in_process=True)
    assert len(calls) == 16 - 2  # the two finished runs were not redone
    assert {key: path.stat().st_mtime_ns for key, path in finished.items()} == stamps
    for spec in sweep.runs():
        assert statuses[spec.key] == ("done" if spec.task == "maze7" else "out of memory"), spec.key
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines[-1].startswith("[16/16] budget/id-convgppn/k6/seed1: out of memory")
    failure = json.loads((sweep.out / "budget/vin/k3/seed0/failure.json").read_text())
    assert failure["status"] == "out of memory" and "memory-budget-gb" in failure["error"]

    calls.clear()
    experiments.run_sweep(sweep, overrides, in_process=True)
    assert calls == []  # everything recorded: nothing reruns

    summary = experiments.write_report(sweep, timing=True, device="cpu")
    text = summary.read_text()
    assert "| planner | K | maze7 | budget |" in text
    assert "| id-convgppn | 6 | " in text and " | OOM |" in text
    for name in ("success_vs_k.png", "time_vs_k.png", "training_curves.png", "generalisation.png"):
        assert f"({name})" in text
        assert (summary.parent / name).read_bytes()[:8] == PNG_MAGIC
    with open(summary.parent / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {r["status"] for r in rows} == {"done", "out of memory"}
    done = [float(r["success"]) for r in rows if r["status"] == "done"]
    assert all(0.0 <= s <= 1.0 for s in done)
    with open(summary.parent / "generalisation.csv") as f:
        general = list(csv.DictReader(f))
    assert len(general) == 8 * 2 and {r["size"] for r in general} == {"7", "9"}


@pytest.mark.slow
def test_failing_subprocess_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    text = TINY.replace("memory_budget_gb: 1.0e-6", f"data: {tmp_path / 'missing.npz'}")
    text = text.replace("planners: [vin, id-convgppn]", "planners: [vin]").replace("k: [3, 6]", "k: [3]")
    text = text.replace("seeds: [0, 1]", "seeds: [0]")
    sweep = experiments.load_sweep(write_config(tmp_path, text), out=str(tmp_path / "out"))
    statuses = experiments.run_sweep(sweep, {"threads": 1, "cache_dir": str(tmp_path / "data")})
    assert statuses == {"maze7/vin/k3/seed0": "done", "budget/vin/k3/seed0": "failed"}
    failure = json.loads((sweep.out / "budget/vin/k3/seed0/failure.json").read_text())
    config_file = sweep.out / "budget/vin/k3/seed0/config.json"
    assert "does not exist" in failure["error"] and failure["command"] == ["--config", str(config_file)]
    assert json.loads(config_file.read_text())["env"] == "GridMaze-v0"  # the run's settings, whole
    out = capsys.readouterr().out
    assert "[1/2] maze7/vin/k3/seed0: done" in out and "[2/2] budget/vin/k3/seed0: failed" in out
    assert (sweep.out / "maze7/vin/k3/seed0/command.txt").read_text().startswith("python -m idp_agents.imitate")


def test_cpu_memory_budget_refuses_the_run_with_a_clear_error(tmp_path):
    args = "--env GridMaze-v0 --size 7 --planner vin --l-h 4 --l-q 4 --k 20 --train 16 --val 4 --test 4".split()
    args += ["--threads", "1", "--no-progress", "--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match="out of memory: training needs .* over --memory-budget-gb 0.0001"):
        imitate.main([*args, "--memory-budget-gb", "0.0001"])
    assert not (tmp_path / "r" / "last.pt").exists()


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_trains(tmp_path):
    args = "--env GridMaze-v0 --size 7 --planner id-vin --l-h 8 --l-q 8 --k 10 --k-bwd 5 --train 96 --val 16".split()
    args += "--test 16 --epochs 3 --batch-size 16 --lr 5e-3 --threads 1 --device cpu --no-progress".split()
    args += ["--cache-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, "-m", "idp_agents.imitate", *args], capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "test_report.json").read_text())
    assert report["processes"] == 2 and report["test"]["starts"] > 0
    with open(tmp_path / "run" / "metrics.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    assert result.stdout.count("epoch 3/3:") == 1  # only rank 0 logs


def test_report_of_an_empty_small_sweep_describes_the_small_runs_without_warnings(tmp_path):
    import warnings

    sweep = experiments.load_sweep(ROOT / "experiments" / "nav2d.yaml", small=True, out=str(tmp_path / "sweep"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
        summary = experiments.write_report(sweep, timing=False, device="cpu").read_text()
    assert "small form (--small)" in summary and "maze7 (GridMaze-v0 size 7)" in summary
