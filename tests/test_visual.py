"""VisualMaze: panoramas rendered headless with MiniWorld, the environment, the on-disk view store, the mapper."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from idp_agents.mappers import VisualMapper
from idp_agents.planner_input import PlanningDataset, task_tensors
from idp_envs import datasets, grid, maze_scene, view_store, views
from idp_envs.tasks import PlanningTask

N, W, S, E = range(4)
CORRIDOR = np.ones((7, 7), dtype=np.uint8)
CORRIDOR[3, 1:6] = 0  # one straight east-west corridor


def chromaticity(pixels: np.ndarray) -> np.ndarray:
    x = pixels.reshape(-1, 3).astype(np.float64)
    return x / np.maximum(x.sum(axis=1, keepdims=True), 1)


@pytest.fixture(scope="module")
def corridor_views():
    return views.render_panoramas(CORRIDOR, (3, 1))


@pytest.fixture(scope="module")
def wall_chromaticity(corridor_views):
    from miniworld.utils import get_file_path  # importable once the renderer has set pyglet up headless
    from PIL import Image

    texture = np.asarray(Image.open(get_file_path("textures", f"{views.WALL_TEXTURE}_1", "png")).convert("RGB"))
    return chromaticity(texture).mean(axis=0)


def test_importing_idp_envs_needs_no_renderer_and_no_display():
    code = (
        "import sys, gymnasium as gym, idp_envs\n"
        "gym.make('IDP/VisualMaze-15-v0')\n"
        "assert 'miniworld' not in sys.modules and 'pyglet' not in sys.modules, 'renderer imported eagerly'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "PYGLET_HEADLESS")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_panorama_layout_and_black_obstacles(corridor_views):
    assert corridor_views.shape == (7, 7, 4, views.VIEW_SIZE, views.VIEW_SIZE, 3)
    assert corridor_views.dtype == np.uint8
    assert not corridor_views[CORRIDOR == 1].any()
    assert (corridor_views[CORRIDOR == 0].reshape(5 * 4, -1).max(axis=1) > 0).all()


def test_rendering_is_deterministic(corridor_views):
    assert np.array_equal(views.render_panoramas(CORRIDOR, (3, 1)), corridor_views)
    with_goal_elsewhere = views.render_panoramas(CORRIDOR, (3, 5))
    assert not np.array_equal(with_goal_elsewhere[3, 3, E], corridor_views[3, 3, E])  # the goal box is visible


def test_wall_facing_views_are_wall_coloured_and_corridor_views_are_not(corridor_views, wall_chromaticity):
    def wall_fraction(view):
        return (np.abs(chromaticity(view) - wall_chromaticity).max(axis=1) < 0.03).mean()

    for direction in (N, S):
        assert wall_fraction(corridor_views[3, 3, direction]) > 0.9
    assert wall_fraction(corridor_views[3, 5, E]) > 0.9  # the corridor's east end
    for direction in (W, E):
        assert wall_fraction(corridor_views[3, 3, direction]) < 0.75
    # along the corridor the floor (grey and white tiles) shows below the centre
    q = views.VIEW_SIZE // 4
    assert wall_fraction(corridor_views[3, 3, E, 3 * q :, q + q // 2 : 3 * q - q // 2]) < 0.2


@pytest.mark.parametrize("seed", [0, 1])
def test_rotating_the_maze_permutes_directions_in_action_order(seed):
    occ = grid.generate_mazes(1, 7, np.random.default_rng(seed))[0]
    free = np.argwhere(occ == 0)
    goal = tuple(free[len(free) // 2])
    size = occ.shape[1]
    original = views.render_panoramas(occ, goal).astype(np.float64)
    # np.rot90 turns the map 90 degrees counter-clockwise: cell (r, c) moves to (size - 1 - c, r) and a view that
    # faced direction a now faces a + 1 (N -> W -> S -> E -> N)
    rotated = views.render_panoramas(np.rot90(occ), (size - 1 - goal[1], goal[0])).astype(np.float64)
    r, c = free[:, 0], free[:, 1]

    def error(shift):
        return np.mean([np.abs(rotated[size - 1 - c, r, (a + shift) % 4] - original[r, c, a]).mean() for a in range(4)])

    assert error(1) < 0.6 * min(error(0), error(2), error(3))


def test_renderer_rejects_bad_maps():
    with pytest.raises(ValueError, match="occupancy"):
        views.render_panoramas(np.full((3, 3, 3), 0))
    with pytest.raises(ValueError, match="goal"):
        views.render_panoramas(CORRIDOR, (0, 0))


def test_scene_has_walls_only_where_a_free_cell_meets_an_obstacle_all_facing_its_centre():
    height = 2.74
    geometry = maze_scene.maze_geometry(CORRIDOR, height)
    assert {part: len(arrays[0]) // 4 for part, arrays in geometry.items()} == {"wall": 12, "floor": 5, "ceil": 5}
    for part, (vertices, normals, texcoords) in geometry.items():
        quads = vertices.reshape(-1, 4, 3)
        assert normals.shape == vertices.shape and texcoords.shape == (len(vertices), 2)
        # the cell each quad belongs to: the free cell whose square holds the quad's centre nudged along its normal
        centres = quads.mean(axis=1) + 0.01 * normals.reshape(-1, 4, 3)[:, 0]
        cells = np.floor(centres[:, [2, 0]] / maze_scene.CELL_METRES).astype(int)
        assert (CORRIDOR[cells[:, 0], cells[:, 1]] == 0).all()
        eyes = np.stack([cells[:, 1] + 0.5, np.zeros(len(cells)), cells[:, 0] + 0.5], axis=1) * maze_scene.CELL_METRES
        eyes[:, 1] = views.CAMERA_HEIGHT
        winding = np.cross(quads[:, 1] - quads[:, 0], quads[:, 2] - quads[:, 0])  # counter-clockwise: front
        assert (np.einsum("qi,qi->q", winding, eyes - quads[:, 0]) > 0).all(), f"{part} culled from its own cell"
        assert (np.einsum("qi,qi->q", normals.reshape(-1, 4, 3)[:, 0], eyes - quads[:, 0]) > 0).all()
    walls = geometry["wall"][0].reshape(-1, 4, 3)
    assert np.allclose(walls[:, :, 1].min(axis=1), 0) and np.allclose(walls[:, :, 1].max(axis=1), height)


def test_camera_matrices_put_the_eye_at_the_origin_looking_down_minus_z():
    rng = np.random.default_rng(0)
    eyes, yaws = rng.normal(size=(6, 3)) * 5, rng.uniform(-np.pi, np.pi, 6)
    matrices = maze_scene.look_matrices(eyes, yaws).reshape(-1, 4, 4).transpose(0, 2, 1)  # column-major -> rows
    forward = np.stack([np.cos(yaws), np.zeros(6), -np.sin(yaws)], axis=1)

    def apply(points):
        return np.einsum("nij,nj->ni", matrices, np.concatenate([points, np.ones((6, 1))], axis=1))[:, :3]

    assert np.allclose(apply(eyes), 0, atol=1e-5)
    assert np.allclose(apply(eyes + forward), [0, 0, -1], atol=1e-5)
    assert np.allclose(apply(eyes + [0, 1, 0]), [0, 1, 0], atol=1e-5)


def test_env_observes_views_not_the_map():
    env = gym.make("IDP/VisualMaze-v0", size=7, render_mode="rgb_array")
    obs, info = env.reset(options={"task": PlanningTask(CORRIDOR, (3, 1), (3, 4))})
    assert set(obs) == {"views", "goal", "position"}
    assert np.array_equal(info["occupancy"], CORRIDOR)
    assert np.array_equal(obs["views"], views.render_panoramas(CORRIDOR, (3, 1)))
    assert info["expert_action"] == W
    obs, *_ = env.step(W)
    frame = env.render()
    assert frame.shape[0] >= 7 * 32 and frame.shape[1] > frame.shape[0]
    current = obs["views"][3, 3]  # the panel beside the map shows the agent's four views
    scale = max(1, frame.shape[0] // (4 * (views.VIEW_SIZE + 4)))
    north = frame[scale : scale + views.VIEW_SIZE * scale : scale, -views.VIEW_SIZE * scale - 2 * scale :: scale]
    assert np.array_equal(north[:, : views.VIEW_SIZE], current[N])
    env.close()


def test_env_uses_views_a_task_carries():
    env = gym.make("IDP/VisualMaze-v0", size=7).unwrapped
    given = np.full((7, 7, 4, 32, 32, 3), 7, dtype=np.uint8)
    obs, _ = env.reset(options={"task": PlanningTask(CORRIDOR, (3, 1), (3, 4), extras={"views": given})})
    assert (obs["views"] == 7).all()
    with pytest.raises(ValueError, match="views"):
        env.reset(options={"task": PlanningTask(CORRIDOR, (3, 1), (3, 4), extras={"views": given[:3]})})


def test_only_visual_envs_render_views():
    assert views.env_renders_views("IDP/VisualMaze-15-v0") and not views.env_renders_views("IDP/GridMaze-15-v0")


@pytest.fixture(scope="module")
def view_dataset(tmp_path_factory):
    splits, meta = datasets.generate_splits(
        "IDP/VisualMaze-v0", {"train": 6, "val": 2}, seed=3, env_kwargs={"size": 7}, progress=False
    )
    path = datasets.save_dataset(tmp_path_factory.mktemp("visual") / "mazes.npz", splits, meta)
    view_store.render_dataset_views(path, splits, workers=2, chunk=2, progress=False)
    return path, splits


def test_view_store_is_rendered_by_workers_and_loaded_lazily(view_dataset):
    path, splits = view_dataset
    loaded, _ = datasets.load_dataset(path)
    stored = loaded["train"].extras["views"]
    assert isinstance(stored, view_store.ViewStore) and stored.shape == (6, 7, 7, 4, 32, 32, 3) and len(stored) == 6
    for i in (0, 5):  # rendered in another process, identical to rendering here
        assert np.array_equal(stored[i], views.render_panoramas(splits["train"].occupancy[i], splits["train"].goal[i]))
    batch = stored[np.array([5, 0])]
    assert batch.shape == (2, 7, 7, 4, 32, 32, 3) and np.array_equal(batch[1], stored[0])
    rows = stored[2:4]  # a slice stays on disk, as a memory map's does
    assert isinstance(rows, view_store.ViewStore) and np.array_equal(rows[1], stored[3])
    assert np.array_equal(pickle.loads(pickle.dumps(stored))[5], stored[5])  # for data-loader workers
    item = PlanningDataset(loaded["val"])[1]
    assert item["views"].shape == (7, 7, 4, 32, 32, 3) and item["views"].dtype == torch.uint8
    assert item["maps"].shape == (2, 7, 7)


def test_view_store_keeps_free_cells_only_compressed(view_dataset):
    path, splits = view_dataset
    folder = view_store.views_dir(path)
    train = splits["train"]
    free_bytes = int((train.occupancy == 0).sum()) * 4 * 32 * 32 * 3
    assert (folder / "train.views").stat().st_size < free_bytes / 2  # compressed: Zstandard
    index = np.load(folder / "train.index.npy")
    assert (index[:, 1] > 0).all() and (np.diff(np.sort(index[:, 0])) > 0).all()


def test_interrupted_view_store_resumes_only_missing_maps(view_dataset, tmp_path, monkeypatch):
    path, splits = view_dataset
    copy = tmp_path / "mazes.npz"
    copy.write_bytes(path.read_bytes())
    folder = view_store.views_dir(copy)
    shutil.copytree(view_store.views_dir(path), folder)
    expected = np.asarray(datasets.load_dataset(copy)[0]["train"].extras["views"])
    index = np.load(folder / "train.index.npy")
    index[[1, 4]] = -1  # as if the run stopped before these maps were recorded
    np.save(folder / "train.index.npy", index)
    with open(folder / "train.views", "ab") as f:
        f.write(b"half a map")  # and in the middle of writing one
    with pytest.raises(datasets.DatasetError, match="incomplete"):
        datasets.load_dataset(copy)
    rendered = []
    original = views.PanoramaRenderer.render
    monkeypatch.setattr(
        views.PanoramaRenderer, "render", lambda self, occ, goal=None: rendered.append(1) or original(self, occ, goal)
    )
    view_store.render_dataset_views(copy, splits, workers=0, progress=False)
    assert len(rendered) == 2
    loaded, _ = datasets.load_dataset(copy)
    assert np.array_equal(np.asarray(loaded["train"].extras["views"]), expected)


def test_view_store_of_other_maps_is_not_resumed(view_dataset, tmp_path):
    path, splits = view_dataset
    other, _ = datasets.generate_splits(
        "IDP/VisualMaze-v0", {"train": 6, "val": 2}, seed=4, env_kwargs={"size": 7}, progress=False
    )
    copy = tmp_path / "mazes.npz"
    copy.write_bytes(path.read_bytes())
    shutil.copytree(view_store.views_dir(path), view_store.views_dir(copy))
    datasets.save_dataset(copy, other, {"shape": [7, 7]})
    with pytest.raises(datasets.DatasetError, match="other maps"):
        datasets.load_dataset(copy)
    view_store.render_dataset_views(copy, {"val": other["val"]}, workers=0, progress=False)
    fresh = view_store.load_views(copy, "val", other["val"].occupancy)
    assert np.array_equal(fresh[0], views.render_panoramas(other["val"].occupancy[0], other["val"].goal[0]))


def test_truncated_view_store_is_refused(view_dataset, tmp_path):
    path, _ = view_dataset
    copy = tmp_path / "mazes.npz"
    copy.write_bytes(path.read_bytes())
    shutil.copytree(view_store.views_dir(path), view_store.views_dir(copy))
    blob = view_store.views_dir(copy) / "val.views"
    blob.write_bytes(blob.read_bytes()[:-100])
    with pytest.raises(datasets.DatasetError, match="corrupt"):
        datasets.load_dataset(copy)
    train = view_store.views_dir(copy) / "train.views"
    data = bytearray(train.read_bytes())
    offset, length = np.load(view_store.views_dir(copy) / "train.index.npy")[0]  # workers append in any order
    middle = slice(offset + length // 2, offset + length // 2 + 10)
    data[middle] = bytes(b ^ 0xFF for b in data[middle])  # map 0 damaged: every bit of ten bytes flipped
    train.write_bytes(bytes(data))
    loaded, _ = datasets.read_dataset(copy)
    store = view_store.load_views(copy, "train", loaded["train"].occupancy)
    with pytest.raises(datasets.DatasetError, match="map 0 is corrupt"):
        store[0]


def test_earlier_format_store_is_refused_with_the_way_out_and_converts(view_dataset, tmp_path):
    """A store of format 1 (an uncompressed <split>.npy of every cell, and <split>.done.npy) is named as such, and
    `python -m idp_envs.view_store convert` rewrites it without rendering."""
    path, splits = view_dataset
    copy = tmp_path / "mazes.npz"
    copy.write_bytes(path.read_bytes())
    folder = view_store.views_dir(copy)
    folder.mkdir()
    meta = {"format_version": 1, "view_size": 32, "directions": "N,W,S,E", "splits": {}}
    for name, batch in splits.items():
        full = np.asarray(datasets.load_dataset(path)[0][name].extras["views"])
        np.save(folder / f"{name}.npy", full)
        np.save(folder / f"{name}.done.npy", np.ones(len(batch), dtype=bool))
        meta["splits"][name] = {"fingerprint": view_store.layout_fingerprint(batch.occupancy, batch.goal)}
    (folder / "views.json").write_text(json.dumps(meta))
    with pytest.raises(datasets.DatasetError, match="earlier, uncompressed format.*convert"):
        datasets.load_dataset(copy)
    with pytest.raises(datasets.DatasetError, match="earlier"):
        view_store.render_dataset_views(copy, splits, workers=0, progress=False)
    assert view_store.main(["convert", str(copy)]) == 0
    assert not list(folder.glob("*.done.npy")) and not (folder / "train.npy").exists()
    loaded, _ = datasets.load_dataset(copy)
    original, _ = datasets.load_dataset(path)
    for name in splits:
        assert np.array_equal(np.asarray(loaded[name].extras["views"]), np.asarray(original[name].extras["views"]))


def test_visual_mapper_shapes_loss_and_validation():
    mapper = VisualMapper()
    batch = torch.randint(0, 256, (2, 5, 6, 4, 32, 32, 3), dtype=torch.uint8)
    logits = mapper(batch)
    assert logits.shape == (2, 5, 6)
    occupancy = torch.randint(0, 2, (2, 5, 6))
    loss = VisualMapper.loss(logits, occupancy)
    loss.backward()
    assert all(p.grad is not None for p in mapper.parameters())
    assert VisualMapper.accuracy(torch.where(occupancy.bool(), 3.0, -3.0), occupancy) == 1.0
    maps = VisualMapper.planner_maps(logits.detach(), torch.tensor([[0, 0], [4, 5]]))
    assert maps.shape == (2, 2, 5, 6) and maps[1, 1, 4, 5] == 1
    with pytest.raises(ValueError, match="views must have shape"):
        mapper(batch[..., :2])
    with pytest.raises(ValueError, match="must match"):
        VisualMapper.loss(logits, occupancy[:, :4])


def test_visual_mapper_learns_maps_from_rendered_views(view_dataset):
    path, _ = view_dataset
    loaded, _ = datasets.load_dataset(path)
    split = loaded["train"].subset(slice(0, 3))
    train = task_tensors(split)  # the views stay on disk, read here
    train["views"] = torch.from_numpy(np.asarray(split.extras["views"]))
    torch.manual_seed(0)
    mapper = VisualMapper()
    optimiser = torch.optim.Adam(mapper.parameters(), lr=1e-3)
    occupancy = train["maps"][:, 0]
    for _ in range(25):
        optimiser.zero_grad()
        loss = VisualMapper.loss(mapper(train["views"]), occupancy)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        assert VisualMapper.accuracy(mapper(train["views"]), occupancy) > 0.95
