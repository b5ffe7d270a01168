"""GridMaze: 2D navigation in random mazes, the benchmark of VIN, GPPN and the implicit-planning paper."""

from __future__ import annotations

import warnings

import numpy as np

from idp_envs.envs.base import GridPlanningEnv
from idp_envs.tasks import PEAK_BYTES_PER_CELL, TaskBatch, check_memory, sample_maze_tasks

CARVE_SECONDS_PER_CELL = 4e-5  # per step of generate_mazes' carve for one maze, measured on a busy 2-core CPU


class GridMazeEnv(GridPlanningEnv):
    """Reach the goal in a random ``size`` x ``size`` maze (odd size; depth-first carve, walls opened at random)."""

    def __init__(self, size: int = 15, render_mode: str | None = None, max_steps: int | None = None):
        if not isinstance(size, (int, np.integer)) or size < 5 or size % 2 == 0:
            raise ValueError(f"maze size must be an odd integer >= 5, got {size!r}")
        self.size = int(size)
        check_memory(1, (self.size, self.size), PEAK_BYTES_PER_CELL, f"a GridMaze of size {self.size}")
        seconds = 2 * ((self.size - 1) // 2) ** 2 * CARVE_SECONDS_PER_CELL
        if seconds > 10:  # else a reset of a large maze says nothing for minutes
            warnings.warn(
                f"GridMaze size {self.size}: sampling each maze (a depth-first carve, one cell at a time) takes "
                f"about {seconds:.0f} s on a CPU",
                stacklevel=2,
            )
        super().__init__((self.size, self.size), "plane", render_mode, max_steps)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> TaskBatch:
        return sample_maze_tasks(n, self.size, rng)
