"""Resumable sweeps of imitation runs (task x planner x K x seed) from a YAML config, and the paper's reports.

    python -m idp_agents.experiments run experiments/nav2d.yaml --small
    python -m idp_agents.experiments report experiments/nav2d.yaml --small

A run whose directory holds ``test_report.json`` is finished and skipped; one that failed holds ``failure.json``
(status ``out of memory``, ``diverged`` or ``failed``, and the error) and is skipped unless ``--retry-failed``; an
interrupted run resumes from its ``last.pt``. ``--jobs N`` runs N subprocesses at once, ``--devices 0 1 ..``
gives each its own GPU through CUDA_VISIBLE_DEVICES.
"""

from idp_agents.experiments.cli import main
from idp_agents.experiments.report import collect, write_report
from idp_agents.experiments.runner import classify_failure, run_sweep
from idp_agents.experiments.sweeps import RunSpec, Sweep, load_sweep, run_config

__all__ = [
    "RunSpec",
    "Sweep",
    "classify_failure",
    "collect",
    "load_sweep",
    "main",
    "run_config",
    "run_sweep",
    "write_report",
]
