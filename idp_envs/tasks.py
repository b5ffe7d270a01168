"""Planning tasks: one grid, a goal and a start on a plane or a torus, with their BFS expert labels.

`PlanningTask` is one task a user hands to an environment (validated on construction); `TaskBatch` holds N
labelled tasks as stacked arrays, the form samplers produce and datasets store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from idp_envs import grid


def _cell(value, name: str) -> tuple[int, int]:
    arr = np.asarray(value)
    if arr.shape != (2,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be two integers (row, col), got {value!r}")
    return int(arr[0]), int(arr[1])


@dataclass(frozen=True, eq=False)
class PlanningTask:
    """A grid (1 = obstacle), a goal and a start cell, and the grid's topology ("plane" or "torus").

    Construction validates everything an environment relies on and raises ``ValueError`` naming the problem.
    ``extras`` carries raw observations tied to the task (a workspace image, panoramic views).
    """

    occupancy: np.ndarray
    goal: tuple[int, int]
    start: tuple[int, int]
    topology: str = "plane"
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        occ = np.asarray(self.occupancy)
        if occ.ndim != 2:
            raise ValueError(f"occupancy must be a 2-D (H, W) array, got shape {occ.shape}")
        if min(occ.shape) < 2:
            raise ValueError(f"occupancy must be at least 2x2, got shape {occ.shape}")
        if not (np.issubdtype(occ.dtype, np.integer) or occ.dtype == bool):
            raise ValueError(f"occupancy must have an integer or bool dtype, got {occ.dtype}")
        if not np.isin(occ, (0, 1)).all():
            bad = np.unique(occ[~np.isin(occ, (0, 1))])[:5]
            raise ValueError(f"occupancy values must be 0 (free) or 1 (obstacle), found {bad.tolist()}")
        grid.check_topology(self.topology)
        occ = occ.astype(np.uint8)
        goal, start = _cell(self.goal, "goal"), _cell(self.start, "start")
        h, w = occ.shape
        for name, (r, c) in (("goal", goal), ("start", start)):
            if not (0 <= r < h and 0 <= c < w):
                raise ValueError(f"{name} {(r, c)} is outside the {h}x{w} map")
            if occ[r, c]:
                raise ValueError(f"{name} {(r, c)} is inside an obstacle")
        if goal == start:
            raise ValueError(f"start {start} is the goal: a task needs at least one step")
        object.__setattr__(self, "occupancy", occ)
        object.__setattr__(self, "goal", goal)
        object.__setattr__(self, "start", start)
        if self.distances()[start] < 0:
            raise ValueError(f"goal {goal} is unreachable from start {start}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.occupancy.shape

    def distances(self) -> np.ndarray:
        """(H, W) BFS steps to the goal, -1 where unreachable (cached)."""
        cached = self.__dict__.get("_distances")
        if cached is None:
            cached = grid.bfs_distances(self.occupancy[None], np.array([self.goal]), self.topology)[0]
            cached.setflags(write=False)
            self.__dict__["_distances"] = cached
        return cached

    def optimal_actions(self) -> np.ndarray:
        """(4, H, W) bool: every action that moves one step closer to the goal."""
        return grid.optimal_action_mask(self.distances()[None], self.topology)[0]


@dataclass
class TaskBatch:
    """N labelled tasks of one size and topology as stacked arrays (the form datasets store)."""

    occupancy: np.ndarray  # (N, H, W) uint8, 1 = obstacle
    goal: np.ndarray  # (N, 2) int64
    start: np.ndarray  # (N, 2) int64
    distances: np.ndarray  # (N, H, W) int32, -1 unreachable
    optimal_actions: np.ndarray  # (N, 4, H, W) bool
    topology: str = "plane"
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    ARRAYS = ("occupancy", "goal", "start", "distances", "optimal_actions")

    def __len__(self) -> int:
        return len(self.occupancy)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first array whose shape, dtype or values no task batch can have: what
        a file from elsewhere must pass before it is trained on. Labels are not recomputed."""
        grid.check_topology(self.topology)
        occupancy = np.asarray(self.occupancy)
        if occupancy.ndim != 3 or min(occupancy.shape[1:], default=0) < 2:
            raise ValueError(f"occupancy must be (N, H, W) maps of at least 2x2, got shape {occupancy.shape}")
        if not (np.issubdtype(occupancy.dtype, np.integer) or occupancy.dtype == bool):
            raise ValueError(f"occupancy must have an integer or bool dtype, got {occupancy.dtype}")
        if not ((occupancy == 0) | (occupancy == 1)).all():
            raise ValueError("occupancy values must be 0 (free) or 1 (obstacle)")
        n, h, w = occupancy.shape
        expected = {"distances": (n, h, w), "optimal_actions": (n, 4, h, w)}
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} to match occupancy, got {np.shape(getattr(self, name))}"
                )
        if np.asarray(self.optimal_actions).dtype != bool:
            raise ValueError(f"optimal_actions must be bool, got {np.asarray(self.optimal_actions).dtype}")
        if not np.issubdtype(np.asarray(self.distances).dtype, np.integer):
            raise ValueError(f"distances must be integers, got {np.asarray(self.distances).dtype}")
        rows = np.arange(n)
        for name in ("goal", "start"):
            cells = np.asarray(getattr(self, name))
            if cells.shape != (n, 2) or not np.issubdtype(cells.dtype, np.integer):
                raise ValueError(f"{name} must be (N, 2) integer cells (row, col), got {cells.dtype} {cells.shape}")
            outside = (cells < 0) | (cells >= np.array([h, w]))
            if outside.any():
                i = int(np.flatnonzero(outside.any(axis=1))[0])
                raise ValueError(f"{name} {cells[i].tolist()} of task {i} is outside the {h}x{w} map")
            blocked = occupancy[rows, cells[:, 0], cells[:, 1]] != 0
            if blocked.any():
                i = int(np.flatnonzero(blocked)[0])
                raise ValueError(f"{name} {cells[i].tolist()} of task {i} is inside an obstacle")
        at_goal = np.asarray(self.distances)[rows, self.goal[:, 0], self.goal[:, 1]]
        if (at_goal != 0).any():
            i = int(np.flatnonzero(at_goal != 0)[0])
            raise ValueError(f"distances of task {i} are not 0 at its goal: labels for another goal")

    def subset(self, index) -> TaskBatch:
        return TaskBatch(
            *(getattr(self, k)[index] for k in self.ARRAYS),
            topology=self.topology,
            extras={k: v[index] for k, v in self.extras.items()},
        )

    def task(self, i: int) -> PlanningTask:
        return PlanningTask(
            self.occupancy[i],
            tuple(self.goal[i]),
            tuple(self.start[i]),
            self.topology,
            {k: v[i] for k, v in self.extras.items()},
        )

    @classmethod
    def concatenate(cls, batches: list[TaskBatch]) -> TaskBatch:
        first = batches[0]
        return cls(
            *(np.concatenate([getattr(b, k) for b in batches]) for k in cls.ARRAYS),
            topology=first.topology,
            extras={k: np.concatenate([b.extras[k] for b in batches]) for k in first.extras},
        )


# Bytes per map cell: while a batch of tasks is sampled and labelled (maze carve stack, BFS wave, distances, action
# masks; measured peak about 40), and as a labelled task is kept (occupancy 1 + distances 4 + action masks 4).
PEAK_BYTES_PER_CELL = 48
STORED_BYTES_PER_CELL = 9


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(n_tasks: int, shape: tuple[int, int], bytes_per_cell: int, what: str) -> None:
    """``ValueError`` when ``n_tasks`` maps of ``shape`` at ``bytes_per_cell`` would not fit in physical memory:
    a clear refusal instead of an allocation of hundreds of GiB."""
    total = physical_memory_bytes()
    needed = int(n_tasks) * int(shape[0]) * int(shape[1]) * bytes_per_cell
    if total is not None and needed > total:
        raise ValueError(
            f"{what} needs about {needed / 2**30:,.1f} GiB of memory ({n_tasks} maps of {shape[0]}x{shape[1]}), "
            f"more than this machine's {total / 2**30:,.1f} GiB; use smaller maps or fewer of them"
        )


def label_tasks(
    occupancy: np.ndarray, goal: np.ndarray, start: np.ndarray, topology: str = "plane", extras=None
) -> TaskBatch:
    """Compute BFS distances and optimal-action masks for N (map, goal, start) triples."""
    distances = grid.bfs_distances(occupancy, goal, topology)
    return TaskBatch(
        np.asarray(occupancy, dtype=np.uint8),
        np.asarray(goal, dtype=np.int64),
        np.asarray(start, dtype=np.int64),
        distances,
        grid.optimal_action_mask(distances, topology),
        topology,
        dict(extras or {}),
    )


def sample_goals_and_starts(
    occupancy: np.ndarray, rng: np.random.Generator, topology: str = "plane", max_tries: int = 100
) -> TaskBatch:
    """Label N maps with a uniformly random free goal and a start drawn among the cells that reach it.

    A goal from which no other cell is reachable (an isolated free cell) is redrawn; a map where every goal
    is isolated raises ``ValueError``.
    """
    occupancy = np.asarray(occupancy, dtype=np.uint8)
    n = len(occupancy)
    free = occupancy == 0
    goal = grid.sample_free_cells(free, rng)
    distances = np.full(occupancy.shape, grid.UNREACHABLE, dtype=np.int32)
    todo = np.arange(n)
    for _ in range(max_tries):
        if (goal[todo] < 0).any():
            raise ValueError("a map has no free cell to put a goal in")
        distances[todo] = grid.bfs_distances(occupancy[todo], goal[todo], topology)
        isolated = (distances[todo] > 0).sum(axis=(1, 2)) == 0
        todo = todo[isolated]
        if not len(todo):
            break
        goal[todo] = grid.sample_free_cells(free[todo], rng)
    else:
        raise ValueError(f"{len(todo)} map(s) have no two connected free cells for a goal and a start")
    start = grid.sample_free_cells(distances > 0, rng)
    optimal = grid.optimal_action_mask(distances, topology)
    return TaskBatch(occupancy, goal, start, distances, optimal, topology)


def sample_maze_tasks(n: int, size: int, rng: np.random.Generator) -> TaskBatch:
    """N random maze tasks of odd ``size`` on a plane, with expert labels."""
    return sample_goals_and_starts(grid.generate_mazes(n, size, rng), rng, "plane")
