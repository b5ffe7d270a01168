"""The two-link arm: exact collision geometry, workspace rasters, C-space tasks on the torus, the three envs."""

import gymnasium as gym
import numpy as np
import pytest
from matplotlib.path import Path

from idp_envs import arm_geometry as geometry
from idp_envs import render
from idp_envs.datasets import generate_splits, load_dataset, save_dataset
from idp_envs.envs import arm


def scenes(n: int, seed: int, max_obstacles: int = 5):
    return arm.sample_obstacles(n, np.random.default_rng(seed), max_obstacles)


def dense_collisions(vertices, counts, theta1, theta2, samples: int = 600) -> np.ndarray:
    """Brute force: (N, C) whether any of ``samples`` points along either link lies inside a polygon."""
    elbow, hand = geometry.arm_points(theta1, theta2)  # (C, 2)
    t = np.linspace(0, 1, samples)[:, None, None]
    points = np.concatenate([geometry.BASE + t * (elbow - geometry.BASE), elbow + t * (hand - elbow)])  # (2S, C, 2)
    flat = points.reshape(-1, 2)
    out = np.zeros((len(counts), len(theta1)), dtype=bool)
    for i in range(len(counts)):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                inside = Path(vertices[i, j, : counts[i, j]]).contains_points(flat)
                out[i] |= inside.reshape(points.shape[:2]).any(axis=0)
    return out


def grid_configurations(bins: int) -> tuple[np.ndarray, np.ndarray]:
    theta = geometry.joint_angles(bins)
    t1, t2 = np.meshgrid(theta, theta, indexing="ij")
    return t1.ravel(), t2.ravel()


def test_collision_check_agrees_with_dense_points_along_the_links():
    vertices, counts = scenes(24, seed=1)
    exact = geometry.cspace_occupancy(vertices, counts, 18).reshape(24, -1).astype(bool)
    brute = dense_collisions(vertices, counts, *grid_configurations(18))
    assert exact.any() and (~exact).any()
    assert not (brute & ~exact).any(), "a sampled point lies inside an obstacle but the exact check says free"
    # the exact check may only add grazing contacts that 600 points per link miss: confirm them 30x denser
    missed = np.argwhere(exact & ~brute)
    assert len(missed) <= 0.01 * exact.sum()
    t1, t2 = grid_configurations(18)
    for scene, config in missed:
        finer = dense_collisions(
            vertices[scene : scene + 1], counts[scene : scene + 1], t1[[config]], t2[[config]], 18000
        )
        assert finer.all()


def test_dense_check_on_36_bins_and_one_obstacle_per_scene():
    vertices, counts = scenes(8, seed=2, max_obstacles=1)
    exact = geometry.cspace_occupancy(vertices, counts, 36).reshape(8, -1).astype(bool)
    brute = dense_collisions(vertices, counts, *grid_configurations(36))
    assert not (brute & ~exact).any()
    assert (exact & ~brute).sum() <= 0.01 * exact.sum()


@pytest.mark.parametrize(
    "p1, p2, q1, q2, expected",
    [
        ((0, 0), (2, 2), (0, 2), (2, 0), True),  # crossing
        ((0, 0), (1, 1), (1, 1), (2, 0), True),  # touching at an endpoint
        ((0, 0), (2, 0), (1, 0), (3, 0), True),  # collinear, overlapping
        ((0, 0), (1, 0), (2, 0), (3, 0), False),  # collinear, disjoint
        ((0, 0), (1, 0), (0, 1), (1, 1), False),  # parallel
        ((0, 0), (1, 0), (0.5, 0), (0.5, 0), True),  # a degenerate edge on the segment
        ((0, 0), (1, 1), (1, 0), (2, -1), False),  # lines cross outside both segments
    ],
)
def test_segments_intersect_cases(p1, p2, q1, q2, expected):
    args = [np.array(p, dtype=float) for p in (p1, p2, q1, q2)]
    assert bool(geometry.segments_intersect(*args)) is expected
    assert bool(geometry.segments_intersect(args[2], args[3], args[0], args[1])) is expected


def test_an_arm_wholly_inside_an_obstacle_collides():
    hand_box = np.array([[7.5, 4.0], [9.9, 4.0], [9.9, 6.0], [7.5, 6.0]])  # holds the outstretched arm's hand
    elbow, hand = geometry.arm_points(0.0, 0.0)
    assert Path(hand_box).contains_point(hand) and not Path(hand_box).contains_point(elbow)
    assert arm.arm_task([hand_box], goal=(9, 0), start=(8, 0)).occupancy[0, 0] == 1
    # no edge crossings at all: only the point-in-polygon part of the check can see this one
    everything = np.array([[0.2, 0.2], [9.8, 0.2], [9.8, 9.8], [0.2, 9.8]])
    assert geometry.cspace_occupancy(*arm.pad_polygons([everything]), 18).all()


def test_wrap_around_configurations_match_negative_angles():
    vertices, counts = scenes(12, seed=3)
    bins = 18
    exact = geometry.cspace_occupancy(vertices, counts, bins).astype(bool)
    step = 2 * np.pi / bins
    cols = np.arange(bins)
    t1 = np.concatenate([np.full(bins, -step), cols * step])
    t2 = np.concatenate([cols * step, np.full(bins, -step)])
    brute = dense_collisions(vertices, counts, t1, t2, samples=2000)
    expected = np.concatenate([exact[:, -1, :], exact[:, :, -1]], axis=1)
    assert not (brute & ~expected).any()
    assert (expected & ~brute).sum() <= 2


def test_moves_wrap_around_the_torus():
    task = arm.arm_task([], goal=(0, 0), start=(17, 17))
    assert task.topology == "torus" and task.occupancy.sum() == 0
    assert task.distances()[17, 17] == 2 and task.distances()[9, 9] == 18
    env = gym.make("IDP/Arm2DOF-CSpace-18-v0").unwrapped
    env.reset(options={"task": task})
    env.step(2)  # S: first joint + one bin, 17 -> 0
    assert env.position.tolist() == [0, 17]
    _, reward, terminated, _, _ = env.step(3)  # E: second joint + one bin, 17 -> 0
    assert env.position.tolist() == [0, 0] and terminated and reward == 1.0
    env.reset(options={"task": arm.arm_task([], goal=(5, 5), start=(0, 0))})
    env.step(0)  # N: first joint - one bin, 0 -> 17
    env.step(1)  # W: second joint - one bin, 0 -> 17
    assert env.position.tolist() == [17, 17]


def test_sampled_obstacles_never_cover_the_base():
    vertices, counts = scenes(3000, seed=4)
    assert (counts == 0).any() and (counts == 5).any()
    present = counts > 0
    assert set(np.unique(counts[present])) == {4, 5, 6, 7}
    assert not geometry.points_in_polygons(np.broadcast_to(geometry.BASE, (3000, 1, 2)), vertices, counts).any()
    a, b, valid = geometry.polygon_edges(vertices, counts)
    assert not geometry.segments_near_points(a, b, geometry.BASE, np.full(valid.shape, arm.BASE_CLEARANCE - 1e-9))[
        valid
    ].any()
    # star-shaped about the vertex mean: every polygon contains the mean of its vertices
    centre, _ = geometry.bounding_discs(vertices, counts)
    inside = geometry.points_in_polygons(centre.reshape(3000, 5, 2), vertices, counts)
    assert np.diagonal(inside, axis1=1, axis2=2)[present].all()


def test_obstacle_covering_the_base_is_rejected():
    with pytest.raises(ValueError, match="base"):
        arm.arm_task([np.array([[4.0, 4.0], [6.0, 4.0], [5.0, 6.0]])], goal=(0, 0), start=(1, 1))


@pytest.mark.parametrize("shift", [1, 5, -3])
def test_rotating_obstacles_about_the_base_shifts_the_first_joint_axis(shift):
    vertices, counts = scenes(40, seed=5)
    bins = 18
    angle = 2 * np.pi * shift / bins
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rotated = geometry.BASE + (vertices - geometry.BASE) @ rot.T
    before = geometry.cspace_occupancy(vertices, counts, bins)
    after = geometry.cspace_occupancy(rotated, counts, bins)
    assert before.any()
    assert np.array_equal(after, np.roll(before, shift, axis=1))


def test_workspace_raster_matches_point_in_polygon_on_pixel_centres():
    vertices, counts = scenes(30, seed=6)
    images = geometry.rasterise_workspace(vertices, counts, chunk=7)
    xs, ys = geometry.pixel_centres()
    centres = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)  # row-major: row = y, col = x
    assert images.shape == (30, 96, 96) and images.dtype == np.uint8 and images.any()
    for i in range(30):
        expected = np.zeros(len(centres), dtype=bool)
        for j in range(5):
            if counts[i, j]:
                expected |= Path(vertices[i, j, : counts[i, j]]).contains_points(centres)
        assert np.array_equal(images[i].ravel().astype(bool), expected)
    ours = geometry.points_in_polygons(np.broadcast_to(centres, (30, len(centres), 2)), vertices, counts).any(-1)
    assert np.array_equal(ours.reshape(30, 96, 96), images.astype(bool))


def test_raster_orientation_row_zero_is_north():
    square = np.array([[0.0, 9.0], [1.0, 9.0], [1.0, 10.0], [0.0, 10.0]])  # the top-left corner of the workspace
    image = arm.arm_task([square], goal=(0, 0), start=(0, 1)).extras["workspace"]
    assert image[:10, :10].all() and image.sum() == 100  # pixel centres 0.052 .. 0.99 lie inside, 9.6 px per unit


def test_sampled_tasks_are_labelled_on_the_torus():
    batch = arm.sample_arm_tasks(200, 18, np.random.default_rng(7))
    n = np.arange(len(batch))
    assert batch.topology == "torus" and batch.occupancy.shape == (200, 18, 18)
    assert (batch.goal != batch.start).any(axis=1).all()
    assert (batch.occupancy[n, batch.goal[:, 0], batch.goal[:, 1]] == 0).all()
    assert (batch.distances[n, batch.start[:, 0], batch.start[:, 1]] > 0).all()
    assert np.array_equal(
        batch.occupancy,
        geometry.cspace_occupancy(batch.extras["obstacle_vertices"], batch.extras["obstacle_counts"], 18),
    )
    assert np.array_equal(
        batch.extras["workspace"],
        geometry.rasterise_workspace(batch.extras["obstacle_vertices"], batch.extras["obstacle_counts"]),
    )
    assert 0.02 < batch.occupancy.mean() < 0.5
    task = batch.task(0)
    assert np.array_equal(task.distances(), batch.distances[0])


def test_bad_geometry_input_is_rejected():
    vertices, counts = scenes(2, seed=8)
    with pytest.raises(ValueError, match="vertices"):
        geometry.cspace_occupancy(vertices[..., :1], counts, 18)
    with pytest.raises(ValueError, match="counts"):
        geometry.cspace_occupancy(vertices, counts[:, :2], 18)
    with pytest.raises(ValueError, match="bins"):
        geometry.cspace_occupancy(vertices, counts, 1)
    with pytest.raises(ValueError, match="at least 3"):
        arm.arm_task([np.zeros((2, 2))], goal=(0, 0), start=(0, 1))
    with pytest.raises(ValueError, match="bins"):
        gym.make("IDP/Arm2DOF-CSpace-18-v0", bins=3)


def test_workspace_env_hides_the_cspace_but_labels_it():
    env = gym.make("IDP/Arm2DOF-Workspace-v0").unwrapped
    obs, info = env.reset(seed=0)
    assert set(obs) == {"workspace", "goal", "position"}
    assert obs["workspace"].shape == (96, 96) and obs["workspace"].dtype == np.uint8
    assert obs["goal"].shape == (18, 18) and obs["goal"].dtype == np.uint8 and obs["goal"].sum() == 1
    assert obs["goal"][env.task.goal] == 1  # the goal a one-hot map, as every env gives it
    assert np.array_equal(info["cspace"], env.task.occupancy)
    assert np.array_equal(obs["workspace"], env.task.extras["workspace"])
    assert env.observation_space.contains(obs)


def test_workspace_env_plays_user_tasks_and_rejects_tasks_without_a_workspace():
    env = gym.make("IDP/Arm2DOF-Workspace-v0").unwrapped
    square = np.array([[7.0, 4.5], [8.0, 4.5], [8.0, 5.5], [7.0, 5.5]])
    task = arm.arm_task([square], goal=(9, 0), start=(3, 0))
    obs, info = env.reset(options={"task": task})
    assert obs["workspace"].sum() > 0 and info["cspace"][0, 0] == 1
    no_image = {"occupancy": task.occupancy, "goal": (9, 0), "start": (3, 0)}
    with pytest.raises(ValueError, match="workspace"):
        env.reset(options={"task": no_image})
    polygons_only = dict(no_image, extras={k: task.extras[k] for k in ("obstacle_vertices", "obstacle_counts")})
    obs, _ = env.reset(options={"task": polygons_only})
    assert np.array_equal(obs["workspace"], task.extras["workspace"])
    assert "workspace" not in env.task.extras  # rasterised for the env, the task left as it was given
    env.step(0)
    assert np.array_equal(env.observation()["workspace"], task.extras["workspace"])


def test_rendering_shows_arm_beside_cspace():
    env = gym.make("IDP/Arm2DOF-CSpace-18-v0", render_mode="rgb_array")
    obs, info = env.reset(seed=2)
    env.step(info["expert_action"])
    frame = env.render()
    inner = env.unwrapped
    px = render.default_cell_pixels((18, 18))
    cspace = render.draw_grid(
        inner.task.occupancy, inner.task.goal, inner.position, np.array(inner.path), cell_pixels=px
    )
    top, left, _ = inner.grid_panel()
    h, w = cspace.shape[:2]
    np.testing.assert_array_equal(frame[top : top + h, left : left + w], cspace)
    assert frame.shape[0] == h + 2 * top and frame.shape[1] == left + w + top
    # the margin shows the torus's opposite edge, faded: the column left of the C-space is its last column, lighter
    np.testing.assert_array_equal(frame[top : top + h, left - 1] >= cspace[:, -1], True)
    assert (frame[top : top + h, left - 1] > cspace[:, -1]).any()
    workspace = frame[:, : frame.shape[0]]
    assert (workspace == arm.ARM_COLOR.astype(np.uint8)).all(-1).sum() > 50
    # the goal pose is drawn faint: a blend, never the full goal colour
    assert not (workspace == arm.GOAL_ARM_COLOR.astype(np.uint8)).all(-1).any()
    assert inner.task.extras["workspace"].any() and (workspace == render.WALL).all(-1).any()


def test_datasets_store_workspace_images(tmp_path):
    splits, meta = generate_splits(
        "IDP/Arm2DOF-CSpace-18-v0", {"train": 30, "val": 5, "test": 5}, seed=0, progress=False
    )
    assert meta["topology"] == "torus"
    path = save_dataset(tmp_path / "arm.npz", splits, meta)
    loaded, _ = load_dataset(path)
    for name, batch in splits.items():
        assert loaded[name].extras["workspace"].shape == (len(batch), 96, 96)
        for key in arm.EXTRAS:
            assert np.array_equal(loaded[name].extras[key], batch.extras[key])
        assert np.array_equal(loaded[name].occupancy, batch.occupancy)
