"""Datasets: generated splits share no layout, round-trip through disk atomically, and GPPN files import."""

import zipfile

import numpy as np
import pytest
import torch

from idp_agents.planner_input import PlanningDataset
from idp_envs import datasets, grid


@pytest.fixture(scope="module")
def small_splits():
    return datasets.generate_splits(
        "IDP/GridMaze-v0", {"train": 60, "val": 20, "test": 20}, seed=5, env_kwargs={"size": 7}, progress=False
    )


def test_splits_have_the_asked_sizes_and_no_shared_layout(small_splits):
    splits, meta = small_splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "val": 20, "test": 20}
    keys = {name: {m.tobytes() for m in s.occupancy} for name, s in splits.items()}
    assert sum(len(k) for k in keys.values()) == 100  # all distinct, so none shared across splits
    assert meta["shape"] == [7, 7] and meta["seed"] == 5


def test_labels_are_consistent(small_splits):
    splits, _ = small_splits
    s = splits["train"]
    dist = grid.bfs_distances(s.occupancy, s.goal)
    assert np.array_equal(dist, s.distances)
    assert np.array_equal(grid.optimal_action_mask(dist), s.optimal_actions)
    assert (s.distances[np.arange(len(s)), s.start[:, 0], s.start[:, 1]] > 0).all()


def test_round_trip_and_planning_dataset(tmp_path, small_splits):
    splits, meta = small_splits
    path = datasets.save_dataset(tmp_path / "d.npz", splits, meta)
    loaded, meta2 = datasets.load_dataset(path)
    assert meta2["counts"] == meta["counts"] and meta2["format_version"] == datasets.FORMAT_VERSION
    for name in splits:
        for key in splits[name].ARRAYS:
            assert np.array_equal(getattr(loaded[name], key), getattr(splits[name], key))
    ds = PlanningDataset(loaded["val"])
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 20
    item = ds[3]
    assert item["maps"].shape == (2, 7, 7) and item["optimal_actions"].shape == (4, 7, 7)
    goal = loaded["val"].goal[3]
    assert item["maps"][1, goal[0], goal[1]] == 1 and item["maps"][1].sum() == 1
    assert torch.equal(item["maps"][0], torch.from_numpy(loaded["val"].occupancy[3]).float())
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temporary file left behind


def test_generation_is_seeded():
    a, _ = datasets.generate_splits("IDP/GridMaze-v0", {"x": 10}, seed=1, env_kwargs={"size": 9}, progress=False)
    b, _ = datasets.generate_splits("IDP/GridMaze-v0", {"x": 10}, seed=1, env_kwargs={"size": 9}, progress=False)
    assert np.array_equal(a["x"].occupancy, b["x"].occupancy) and np.array_equal(a["x"].start, b["x"].start)


def test_too_many_layouts_asked_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct layouts"):
        datasets.generate_splits(
            "IDP/GridMaze-v0", {"train": 10**6}, seed=0, env_kwargs={"size": 5}, progress=False, max_chunks=3
        )


def test_truncated_and_foreign_files_raise_dataset_error(tmp_path, small_splits):
    path = datasets.save_dataset(tmp_path / "d.npz", *small_splits)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(datasets.DatasetError, match="truncated"):
        datasets.load_dataset(tmp_path / "cut.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(datasets.DatasetError):
        datasets.load_dataset(tmp_path / "text.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(datasets.DatasetError, match="not an IDP dataset"):
        datasets.load_dataset(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        datasets.load_dataset(tmp_path / "missing.npz")


def test_failed_write_keeps_the_old_file(tmp_path, small_splits, monkeypatch):
    path = datasets.save_dataset(tmp_path / "d.npz", *small_splits)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        datasets.save_dataset(path, *small_splits)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]


def write_gppn_file(path, splits):
    """Write splits in the published GPPN layout: 1 = free, orientation axis of size 1, one-hot policies."""
    arrays = []
    for s in splits:
        n, h, w = s.occupancy.shape
        goal_map = np.zeros((n, 1, h, w), dtype=np.float32)
        goal_map[np.arange(n), 0, s.goal[:, 0], s.goal[:, 1]] = 1
        policy = np.zeros((n, 4, 1, h, w), dtype=np.float32)
        action = grid.expert_actions(s.optimal_actions)
        m, r, c = np.nonzero(action >= 0)
        policy[m, action[m, r, c], 0, r, c] = 1
        arrays += [1 - s.occupancy, goal_map, policy]
    np.savez_compressed(path, *arrays)


def test_gppn_import(tmp_path, small_splits):
    splits, _ = small_splits
    write_gppn_file(tmp_path / "gppn.npz", [splits["train"], splits["val"], splits["test"]])
    imported, meta = datasets.import_gppn(tmp_path / "gppn.npz")
    assert meta["counts"] == {"train": 60, "val": 20, "test": 20}
    for name in ("train", "val", "test"):
        assert np.array_equal(imported[name].occupancy, splits[name].occupancy)
        assert np.array_equal(imported[name].goal, splits[name].goal)
        assert np.array_equal(imported[name].optimal_actions, splits[name].optimal_actions)
    # through the command line, into our own format
    datasets.main(["--from-gppn", str(tmp_path / "gppn.npz"), "--out", str(tmp_path / "ours.npz")])
    loaded, meta = datasets.load_dataset(tmp_path / "ours.npz")
    assert meta["source"] == "gppn:gppn.npz" and len(loaded["test"]) == 20


def test_gppn_import_detects_a_wrong_action_order(tmp_path, small_splits):
    splits, _ = small_splits
    write_gppn_file(tmp_path / "gppn.npz", [splits["train"], splits["val"], splits["test"]])
    with np.load(tmp_path / "gppn.npz") as data:
        arrays = [data[f"arr_{i}"] for i in range(9)]
    arrays[2] = arrays[2][:, [0, 3, 2, 1]]  # N, E, S, W
    np.savez(tmp_path / "swapped.npz", *arrays)
    with pytest.raises(datasets.DatasetError, match="action order"):
        datasets.import_gppn(tmp_path / "swapped.npz")
    with zipfile.ZipFile(tmp_path / "partial.npz", "w") as z:
        z.writestr("arr_0.npy", b"")
    with pytest.raises(datasets.DatasetError, match="GPPN"):
        datasets.import_gppn(tmp_path / "partial.npz")


def test_command_line(tmp_path, capsys):
    datasets.main(
        ["--env", "GridMaze-15", "--train", "30", "--val", "5", "--test", "5", "--out", str(tmp_path / "m.npz")]
    )
    assert "train 30, val 5, test 5" in capsys.readouterr().out
    splits, meta = datasets.load_dataset(tmp_path / "m.npz")
    assert meta["env_id"] == "IDP/GridMaze-15-v0" and splits["train"].occupancy.shape == (30, 15, 15)


def test_command_line_size(tmp_path):
    datasets.main(
        [
            "--env",
            "GridMaze-v0",
            "--size",
            "9",
            "--train",
            "6",
            "--val",
            "2",
            "--test",
            "2",
            "--out",
            str(tmp_path / "m.npz"),
        ]
    )
    splits, meta = datasets.load_dataset(tmp_path / "m.npz")
    assert meta["env_kwargs"] == {"size": 9} and splits["train"].occupancy.shape == (6, 9, 9)
