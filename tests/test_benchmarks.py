"""The benchmarks' own bookkeeping: what their tables say about the runs they read."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest

from benchmarks.bench_learning import markdown_table, merge_rows, read_rows, run_row, write_results
from benchmarks.bench_planners import build_planner
from benchmarks.trained import dataset_config


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


def test_learning_csv_keeps_rows_whose_runs_are_not_on_disk(tmp_path):
    """The committed CSV is the record: a fresh checkout that trains one more seed adds its row and keeps the rest;
    a run on disk replaces its row."""
    old = [run_row(record("vin", 3, 0.7)), run_row(record("id-vin", 3, 0.6))]
    write_results(old, ["maze15"], tmp_path, "old")
    kept = read_rows(tmp_path / "learning.csv")
    assert [(r["planner"], r["epochs"], r["test_success"]) for r in kept] == [("vin", 3, 0.7), ("id-vin", 3, 0.6)]
    rerun = run_row(record("id-vin", 3, 0.75))
    another_seed = dict(run_row(record("vin", 3, 0.8)), seed=1)
    merged = merge_rows(kept, [rerun, another_seed])
    assert [(r["planner"], r["seed"], r["test_success"]) for r in merged] == [
        ("vin", 0, 0.7),
        ("vin", 1, 0.8),
        ("id-vin", 0, 0.75),
    ]
    # The twin gap pairs seeds: id-vin's seed 0 against vin's seed 0 only, not against vin's mean over two seeds.
    assert "| id-vin | 1 | 3 | 75.0 ± 0.0 | 74.0 ± 0.0 | +5.0 |" in markdown_table(merged, "maze15")


def test_learning_csv_of_another_shape_is_refused(tmp_path):
    (tmp_path / "learning.csv").write_text("task,planner\nmaze15,vin\n")
    with pytest.raises(ValueError, match="not a learning table this benchmark wrote"):
        read_rows(tmp_path / "learning.csv")


def test_bench_view_times_clicks_that_change_the_map():
    from benchmarks.bench_view import time_clicks, value_iteration_policy

    row = time_clicks(value_iteration_policy(15), 15, clicks=3, seed=0)
    assert row["ms_median"] > 0 and row["ms_p90"] >= row["ms_median"] and row["iterations_median"] >= 1


def test_twin_gap_finds_the_implicit_gradient_equal_to_a_long_unroll_and_leaves_the_planner_as_it_was():
    import torch

    from benchmarks.bench_planners import random_maps
    from benchmarks.twin_gap import gradient_agreement
    from idp_agents.planners import make_planner

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    planner = make_planner("id-vin", l_h=8, l_q=8)
    with torch.no_grad():
        planner.step.q_value.normal_(0.0, 0.3, generator=generator)  # a value filter that matters (0 at init)
    maps, labels = random_maps(4, 9, generator)
    optimal = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).bool()
    before = planner.fixed_point
    agreement = gradient_agreement(planner, [(maps, optimal)], k=3, long_k=300)
    cosine, norm_ratio = agreement["implicit"]
    assert cosine > 0.999 and abs(norm_ratio - 1) < 0.01
    assert set(agreement) == {"implicit", "3 steps"}
    assert planner.fixed_point is before and all(p.grad is None for p in planner.parameters())


def test_a_checkpoints_dataset_is_the_one_it_was_trained_on():
    """--data wins over the seed's cache entry; without it, size and cache dir name it; other run keys are ignored."""
    run = {"env": "IDP/GridMaze-v0", "size": 9, "train": 8, "val": 2, "test": 3, "seed": 1, "cache_dir": "cache"}
    assert str(dataset_config(run).dataset_path()) == "cache/IDP_GridMaze-v0-size9-8-2-3-seed1.npz"
    given = dataset_config(run | {"data": "maps/seed0.npz", "a_flag_from_later": 1})
    assert str(given.dataset_path()) == "maps/seed0.npz"


@pytest.mark.parametrize("script", sorted(p.stem for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")))
def test_every_benchmark_script_imports(script):
    """A benchmark is run by hand, rarely: at least its imports of the library must hold as the library changes."""
    importlib.import_module(f"benchmarks.{script}")
