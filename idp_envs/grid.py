"""Pure-numpy grid algorithms, batched over N maps: maze generation, BFS distances, optimal-action labels.

Conventions (docs/design.md): arrays are ``[row, col]`` with row 0 at the top; occupancy 1 = obstacle; actions
``0 = N (row-1)``, ``1 = W (col-1)``, ``2 = S (row+1)``, ``3 = E (col+1)``. On a "plane" a move off the edge or
into an obstacle leaves the agent in place; on a "torus" moves wrap around.
"""

from __future__ import annotations

import numpy as np

ACTION_NAMES = ("N", "W", "S", "E")
ACTION_DELTAS = np.array([[-1, 0], [0, -1], [1, 0], [0, 1]], dtype=np.int64)
TOPOLOGIES = ("plane", "torus")
UNREACHABLE = -1


def check_topology(topology: str) -> str:
    """``topology`` itself if it is "plane" or "torus", else a ValueError naming both."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES}, got {topology!r}")
    return topology


def shift_from_neighbour(x: np.ndarray, action: int, topology: str, fill) -> np.ndarray:
    """``out[..., r, c] = x[..., (r, c) + delta(action)]``: each cell sees its neighbour in direction ``action``.

    On a plane, neighbours beyond the edge read ``fill``; on a torus they wrap around.
    """
    dr, dc = ACTION_DELTAS[action]
    if topology == "torus":
        return np.roll(x, shift=(-dr, -dc), axis=(-2, -1))
    out = np.full_like(x, fill)
    h, w = x.shape[-2:]
    src_r = slice(max(dr, 0), h + min(dr, 0))
    dst_r = slice(max(-dr, 0), h + min(-dr, 0))
    src_c = slice(max(dc, 0), w + min(dc, 0))
    dst_c = slice(max(-dc, 0), w + min(-dc, 0))
    out[..., dst_r, dst_c] = x[..., src_r, src_c]
    return out


def generate_mazes(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random mazes of odd ``size``, as in the published 2D navigation benchmarks (VIN, GPPN).

    A randomized depth-first carve over the odd cells from (1, 1), the border kept solid, then every interior
    wall cell opened with a probability p drawn once per maze from U(0, 1). All ``n`` carves run in lock-step:
    a depth-first backtracker over c cells takes exactly 2c - 1 pushes and pops, whatever the maze.
    Returns (n, size, size) uint8 occupancy, 1 = obstacle.
    """
    if size < 5 or size % 2 == 0:
        raise ValueError(f"maze size must be odd and at least 5, got {size}")
    if n < 0:
        raise ValueError(f"number of mazes must be non-negative, got {n}")
    m = (size - 1) // 2  # odd cells per side
    cells = m * m
    visited = np.zeros((n, m, m), dtype=bool)
    # open_south[i, a, b]: passage between cell (a, b) and (a+1, b); open_east: between (a, b) and (a, b+1)
    open_south = np.zeros((n, m, m), dtype=bool)
    open_east = np.zeros((n, m, m), dtype=bool)
    stack = np.zeros((n, cells, 2), dtype=np.int64)
    depth = np.ones(n, dtype=np.int64)  # stack height; cell (0, 0) starts on it
    visited[:, 0, 0] = True
    rows = np.arange(n)
    deltas = ACTION_DELTAS  # neighbour directions in cell units
    for _ in range(2 * cells - 1):
        top = stack[rows, depth - 1]  # (n, 2)
        nb = top[:, None, :] + deltas[None, :, :]  # (n, 4, 2)
        inside = ((nb >= 0) & (nb < m)).all(-1)
        nbc = np.clip(nb, 0, m - 1)
        free_nb = inside & ~visited[rows[:, None], nbc[..., 0], nbc[..., 1]]
        # a uniformly random unvisited neighbour: argmax of iid uniforms over the allowed ones
        choice = np.argmax(rng.random((n, 4)) * free_nb, axis=1)
        can_push = free_nb.any(axis=1)
        push = rows[can_push]
        a = choice[can_push]
        src = top[can_push]
        dst = nbc[push, a]
        visited[push, dst[:, 0], dst[:, 1]] = True
        lo = np.minimum(src, dst)
        south = a % 2 == 0  # N or S moves open a south passage of the upper cell
        open_south[push[south], lo[south, 0], lo[south, 1]] = True
        open_east[push[~south], lo[~south, 0], lo[~south, 1]] = True
        stack[push, depth[push]] = dst
        depth[can_push] += 1
        depth[~can_push] -= 1
    occ = np.ones((n, size, size), dtype=np.uint8)
    occ[:, 1:-1:2, 1:-1:2] = 0
    occ[:, 2:-1:2, 1:-1:2] = ~open_south[:, :-1, :]
    occ[:, 1:-1:2, 2:-1:2] = ~open_east[:, :, :-1]
    p = rng.random(n)[:, None, None]
    interior = occ[:, 1:-1, 1:-1]
    opened = rng.random(interior.shape) < p
    interior[opened] = 0
    return occ


def bfs_distances(occupancy: np.ndarray, goals: np.ndarray, topology: str = "plane") -> np.ndarray:
    """Shortest-path step counts from every cell to the goal, 4-neighbourhood; -1 where unreachable.

    ``occupancy`` (N, H, W) with 1 = obstacle, ``goals`` (N, 2) as (row, col). Moves are reversible, so the
    distance from a cell to the goal equals the distance from the goal to it: one breadth-first wave per map,
    all maps advanced together. Obstacles get -1.
    """
    check_topology(topology)
    occupancy = np.asarray(occupancy)
    goals = np.asarray(goals, dtype=np.int64)
    n, h, w = occupancy.shape
    dist = np.full(occupancy.shape, UNREACHABLE, dtype=np.int32)
    # The wave lives inside a one-cell border that stays False, so a plane needs no per-step padding; on a
    # torus the border is refreshed with the opposite edges before each step. Every few steps the maps whose
    # wave has died out are dropped, so a batch costs what its maps need, not N times its longest map.
    active = np.arange(n)
    free = occupancy == 0
    frontier = np.zeros((n, h + 2, w + 2), dtype=bool)
    inner = frontier[:, 1:-1, 1:-1]
    inner[active, goals[:, 0], goals[:, 1]] = True
    inner &= free
    sub_dist = dist.copy()
    sub_dist[inner] = 0
    reached = inner.copy()
    d = 0
    while len(active):
        for _ in range(8):
            d += 1
            if topology == "torus":
                frontier[:, 0, 1:-1] = inner[:, -1]
                frontier[:, -1, 1:-1] = inner[:, 0]
                frontier[:, 1:-1, 0] = inner[:, :, -1]
                frontier[:, 1:-1, -1] = inner[:, :, 0]
            grown = frontier[:, :-2, 1:-1] | frontier[:, 2:, 1:-1]
            grown |= frontier[:, 1:-1, :-2]
            grown |= frontier[:, 1:-1, 2:]
            grown &= free
            grown &= ~reached
            inner[...] = grown
            reached |= grown
            sub_dist[grown] = d
        alive = inner.any(axis=(1, 2))
        if not alive.all():
            dist[active[~alive]] = sub_dist[~alive]
            active, frontier, free, reached, sub_dist = (a[alive] for a in (active, frontier, free, reached, sub_dist))
            inner = frontier[:, 1:-1, 1:-1]
    return dist


def neighbour_values(x: np.ndarray, topology: str, fill) -> np.ndarray:
    """(N, 4, H, W): for each action, the value of ``x`` (N, H, W) at the cell that action moves to."""
    return np.stack([shift_from_neighbour(x, a, topology, fill) for a in range(4)], axis=1)


def optimal_action_mask(distances: np.ndarray, topology: str = "plane") -> np.ndarray:
    """Multi-hot (N, 4, H, W) of all optimal actions: those that move one step closer to the goal.

    False everywhere at the goal, on obstacles and on cells from which the goal is unreachable.
    """
    check_topology(topology)
    distances = np.asarray(distances)
    nb = neighbour_values(distances, topology, UNREACHABLE)
    here = distances[:, None]
    return (here > 0) & (nb >= 0) & (nb == here - 1)


def expert_actions(optimal: np.ndarray) -> np.ndarray:
    """One optimal action per cell, (N, H, W) int64: the lowest-numbered optimal one; -1 where there is none."""
    action = np.argmax(optimal, axis=1).astype(np.int64)
    action[~optimal.any(axis=1)] = -1
    return action


def goal_cells(goal_maps: np.ndarray) -> np.ndarray:
    """(N, 2) cells of (N, H, W) one-hot goal maps; ValueError when a map is not one-hot."""
    goal_maps = np.asarray(goal_maps)
    flat = goal_maps.reshape(len(goal_maps), -1)
    if goal_maps.ndim != 3 or not np.all((flat != 0).sum(axis=1) == 1):
        raise ValueError(f"goal maps must be (N, H, W) with exactly one nonzero cell each, got shape {goal_maps.shape}")
    index = flat.argmax(axis=1)
    return np.stack([index // goal_maps.shape[2], index % goal_maps.shape[2]], axis=1).astype(np.int64)


def step_positions(
    occupancy: np.ndarray, positions: np.ndarray, actions: np.ndarray, topology: str = "plane"
) -> np.ndarray:
    """Move agents at ``positions`` (N, 2) by ``actions`` (N,) on maps (N, H, W); blocked moves stay put."""
    occupancy = np.asarray(occupancy)
    positions = np.asarray(positions, dtype=np.int64)
    h, w = occupancy.shape[-2:]
    target = positions + ACTION_DELTAS[np.asarray(actions, dtype=np.int64)]
    if topology == "torus":
        target %= np.array([h, w])
        inside = np.ones(len(target), dtype=bool)
    else:
        inside = (target[:, 0] >= 0) & (target[:, 0] < h) & (target[:, 1] >= 0) & (target[:, 1] < w)
    tr = np.clip(target[:, 0], 0, h - 1)
    tc = np.clip(target[:, 1], 0, w - 1)
    ok = inside & (occupancy[np.arange(len(target)), tr, tc] == 0)
    return np.where(ok[:, None], np.stack([tr, tc], axis=1), positions)


def sample_free_cells(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One cell per map, uniformly among the True cells of ``mask`` (N, H, W); returns (N, 2) (row, col).

    Maps with no True cell get (-1, -1).
    """
    n, h, w = mask.shape
    flat = mask.reshape(n, -1)
    idx = np.argmax(rng.random(flat.shape) * flat, axis=1)
    cells = np.stack([idx // w, idx % w], axis=1).astype(np.int64)
    cells[~flat.any(axis=1)] = -1
    return cells
