"""Grid algorithms: mazes, BFS distances and optimal-action labels follow shortest paths exactly."""

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idp_envs import grid


def reference_distances(occ: np.ndarray, goal, topology: str) -> np.ndarray:
    """Plain queue-based BFS, one map, the textbook way."""
    h, w = occ.shape
    dist = np.full((h, w), -1)
    if occ[goal]:
        return dist
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in grid.ACTION_DELTAS:
            nr, nc = r + dr, c + dc
            if topology == "torus":
                nr, nc = nr % h, nc % w
            elif not (0 <= nr < h and 0 <= nc < w):
                continue
            if occ[nr, nc] == 0 and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def test_action_order_is_counter_clockwise():
    assert grid.ACTION_NAMES == ("N", "W", "S", "E")
    # rotating a direction vector (dr, dc) by 90 deg counter-clockwise on screen maps action a to a + 1
    for a in range(4):
        dr, dc = grid.ACTION_DELTAS[a]
        assert tuple(grid.ACTION_DELTAS[(a + 1) % 4]) == (-dc, dr)


@pytest.mark.parametrize("size", [5, 9, 15, 27])
def test_mazes_have_solid_border_and_connected_odd_cells(size):
    occ = grid.generate_mazes(64, size, np.random.default_rng(size))
    assert occ.shape == (64, size, size) and occ.dtype == np.uint8
    assert occ[:, 0].all() and occ[:, -1].all() and occ[:, :, 0].all() and occ[:, :, -1].all()
    assert not occ[:, 1::2, 1::2].any()  # every carved cell is free
    dist = grid.bfs_distances(occ, np.ones((64, 2), dtype=np.int64))
    assert (dist[:, 1::2, 1::2] >= 0).all()  # and all of them connect to (1, 1)


def test_maze_generation_is_seeded_and_varied():
    a = grid.generate_mazes(20, 15, np.random.default_rng(7))
    b = grid.generate_mazes(20, 15, np.random.default_rng(7))
    c = grid.generate_mazes(20, 15, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({m.tobytes() for m in a}) == 20
    density = a[:, 1:-1, 1:-1].mean(axis=(1, 2))
    assert density.min() < density.max()  # wall-opening probability differs between mazes


@pytest.mark.parametrize("bad", [4, 3, 16])
def test_maze_size_must_be_odd(bad):
    with pytest.raises(ValueError, match="odd"):
        grid.generate_mazes(1, bad, np.random.default_rng(0))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(2, 12), st.integers(2, 12)),
    density=st.floats(0.0, 0.6),
    topology=st.sampled_from(grid.TOPOLOGIES),
)
def test_bfs_matches_reference_on_random_grids(seed, shape, density, topology):
    rng = np.random.default_rng(seed)
    occ = (rng.random((3, *shape)) < density).astype(np.uint8)
    goals = grid.sample_free_cells(occ == 0, rng)
    goals[goals < 0] = 0  # a full map: goal on an obstacle, nothing reachable
    dist = grid.bfs_distances(occ, goals, topology)
    for i in range(3):
        assert np.array_equal(dist[i], reference_distances(occ[i], tuple(goals[i]), topology))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), size=st.sampled_from([5, 7, 9, 11, 15]), topology=st.sampled_from(grid.TOPOLOGIES)
)
def test_expert_reaches_goal_in_exactly_distance_steps(seed, size, topology):
    rng = np.random.default_rng(seed)
    occ = grid.generate_mazes(4, size, rng)
    if topology == "torus":  # open the border so that wrap-around matters
        border = np.ones(occ.shape[1:], dtype=bool)
        border[1:-1, 1:-1] = False
        occ[:, border] = rng.random((4, int(border.sum()))) < 0.3
    goals = grid.sample_free_cells(occ == 0, rng)
    dist = grid.bfs_distances(occ, goals, topology)
    optimal = grid.optimal_action_mask(dist, topology)
    action = grid.expert_actions(optimal)
    # every reachable cell of every map starts an agent; all walk in lock-step
    m, r, c = np.nonzero(dist > 0)
    pos = np.stack([r, c], axis=1)
    steps = np.zeros(len(m), dtype=int)
    for _ in range(dist.max()):
        moving = dist[m, pos[:, 0], pos[:, 1]] > 0
        pos[moving] = grid.step_positions(
            occ[m[moving]], pos[moving], action[m[moving], pos[moving, 0], pos[moving, 1]], topology
        )
        steps += moving
    assert np.array_equal(pos, goals[m])
    assert np.array_equal(steps, dist[m, r, c])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), topology=st.sampled_from(grid.TOPOLOGIES))
def test_every_optimal_action_decreases_distance_by_one(seed, topology):
    rng = np.random.default_rng(seed)
    occ = (rng.random((5, 10, 13)) < 0.3).astype(np.uint8)
    goals = grid.sample_free_cells(occ == 0, rng)
    dist = grid.bfs_distances(occ, goals, topology)
    optimal = grid.optimal_action_mask(dist, topology)
    for a in range(4):
        m, r, c = np.nonzero(dist >= 0)
        moved = grid.step_positions(occ[m], np.stack([r, c], 1), np.full(len(m), a), topology)
        after = dist[m, moved[:, 0], moved[:, 1]]
        assert np.array_equal(optimal[m, a, r, c], after == dist[m, r, c] - 1)
    # cells with a positive distance always have an optimal action; others never do
    assert np.array_equal(optimal.any(axis=1), dist > 0)


def test_torus_wraps_around_and_plane_does_not():
    occ = np.zeros((1, 5, 7), dtype=np.uint8)
    goal = np.array([[0, 0]])
    plane = grid.bfs_distances(occ, goal, "plane")[0]
    torus = grid.bfs_distances(occ, goal, "torus")[0]
    assert plane[4, 6] == 10 and torus[4, 6] == 2
    assert torus[0, 6] == 1 and plane[0, 6] == 6
    # from (0, 6) the optimal torus move is E, wrapping to column 0
    assert grid.optimal_action_mask(torus[None], "torus")[0, :, 0, 6].tolist() == [False, False, False, True]
    moved = grid.step_positions(occ, np.array([[0, 6]]), np.array([3]), "torus")
    assert moved.tolist() == [[0, 0]]
    assert grid.step_positions(occ, np.array([[0, 6]]), np.array([3]), "plane").tolist() == [[0, 6]]


def test_moves_into_walls_and_off_the_plane_stay_put():
    occ = np.array([[[0, 1], [0, 0]]], dtype=np.uint8)
    pos = np.array([[0, 0]] * 4)
    moved = grid.step_positions(np.repeat(occ, 4, 0), pos, np.arange(4), "plane")
    assert moved.tolist() == [[0, 0], [0, 0], [1, 0], [0, 0]]


def test_unreachable_cells_get_minus_one():
    occ = np.array([[[0, 1, 0], [0, 1, 0], [0, 1, 0]]], dtype=np.uint8)
    dist = grid.bfs_distances(occ, np.array([[0, 0]]))[0]
    assert (dist[:, 2] == -1).all() and (dist[:, 1] == -1).all() and dist[2, 0] == 2
    assert grid.expert_actions(grid.optimal_action_mask(dist[None]))[0, :, 2].tolist() == [-1, -1, -1]


def test_sample_free_cells_is_uniform_over_free_cells():
    mask = np.zeros((20000, 3, 3), dtype=bool)
    mask[:, 0, 0] = mask[:, 2, 1] = True
    cells = grid.sample_free_cells(mask, np.random.default_rng(0))
    assert set(map(tuple, cells.tolist())) == {(0, 0), (2, 1)}
    assert abs((cells[:, 0] == 0).mean() - 0.5) < 0.02
