"""The benchmarks' own bookkeeping: what their tables say about the runs they read."""

from __future__ import annotations

import math

from benchmarks.bench_learning import markdown_table, run_row
from benchmarks.bench_planners import build_planner


def record(planner: str, epochs: int, success: float) -> dict:
    history = [
        {"val_success": str(0.5 + 0.1 * e), "train_seconds": "60", "fwd_nonconverged": "0.01"} for e in range(epochs)
    ]
    return {
        "task": "maze15",
        "planner": planner,
        "seed": 0,
        "status": "done",
        "success": success,
        "optimal": success - 0.01,
        "best_epoch": epochs,
        "history": history,
    }


def test_learning_table_says_how_many_epochs_each_run_had():
    """A run cut short and tested where it stood must not pass for one of the protocol's length."""
    rows = [run_row(record("convgppn", 3, 0.9)), run_row(record("id-convgppn", 2, 0.8))]
    assert [r["epochs"] for r in rows] == [3, 2]
    assert math.isnan(rows[0]["spectral_radius_max"])  # absent from the history: not a number made up
    table = markdown_table(rows, "maze15").splitlines()
    assert table[0].startswith("| planner | seeds | epochs |")
    assert table[2].startswith("| convgppn | 1 | 3 | 90.0 ± 0.0 |")
    assert table[3].startswith("| id-convgppn | 1 | 2 | 80.0 ± 0.0 | 79.0 ± 0.0 | -10.0 |")


def test_bench_planners_hidden_channels_reach_convgppn_only():
    assert build_planner("convgppn", "implicit", 5, 5, "anderson", "anderson", hidden=12).step.hidden == 12
    vin = build_planner("vin", "unrolled", 5, 5, "anderson", "anderson", hidden=12)
    assert not hasattr(vin.step, "hidden")
