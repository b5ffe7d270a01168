"""VisualMaze: GridMaze seen through first-person panoramas rendered in 3D, the visual navigation task of GPPN and
the implicit-planning paper. The agent never sees the map; a mapper must rebuild it from the views."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from gymnasium import spaces

from idp_envs import render
from idp_envs.envs.maze import GridMazeEnv
from idp_envs.maze_scene import DIRECTIONS
from idp_envs.views import VIEW_SIZE


class VisualMazeEnv(GridMazeEnv):
    """GridMaze tasks and labels; the observation is ``views`` (H, W, 4, 32, 32, 3) uint8, the N/W/S/E views from
    every cell (black in obstacles), with ``goal`` (H, W) one-hot and ``position``. The occupancy grid, the
    mapper's label, is in ``info["occupancy"]``.

    Views are rendered with MiniWorld on the first observation of a task (about a second for 15x15 on one core),
    unless the task carries them in ``extras["views"]`` (as dataset tasks do).
    """

    RENDERS_VIEWS = True
    CACHED_MAPS = 4  # recently rendered (map, goal) pairs kept: seeded resets often replay one

    def __init__(self, size: int = 15, render_mode: str | None = None, max_steps: int | None = None):
        self._rendered: OrderedDict[tuple, np.ndarray] = OrderedDict()
        super().__init__(size, render_mode, max_steps)

    def make_observation_space(self) -> spaces.Dict:
        h, w = self.shape
        return spaces.Dict(
            {
                "views": spaces.Box(0, 255, (h, w, DIRECTIONS, VIEW_SIZE, VIEW_SIZE, 3), np.uint8),
                "goal": spaces.Box(0, 1, (h, w), np.uint8),
                "position": spaces.Box(0, max(h, w) - 1, (2,), np.int64),
            }
        )

    def views(self) -> np.ndarray:
        """(H, W, 4, 32, 32, 3) uint8 views of the current task (read-only; rendered once per map and goal)."""
        task = self.task
        given = task.extras.get("views")
        if given is not None:
            expected = self.observation_space["views"].shape
            if np.shape(given) != expected or np.asarray(given).dtype != np.uint8:
                raise ValueError(f"task extras['views'] must be uint8 of shape {expected}, got {np.shape(given)}")
            return np.asarray(given)
        key = (task.occupancy.tobytes(), task.goal)
        if key not in self._rendered:
            from idp_envs.views import render_panoramas

            self._rendered[key] = render_panoramas(task.occupancy, task.goal)
            self._rendered[key].setflags(write=False)
            while len(self._rendered) > self.CACHED_MAPS:
                self._rendered.popitem(last=False)
        self._rendered.move_to_end(key)
        return self._rendered[key]

    def observation(self) -> dict[str, np.ndarray]:
        goal = np.zeros(self.shape, dtype=np.uint8)
        goal[self.task.goal] = 1
        return {"views": self.views().copy(), "goal": goal, "position": self.position.copy()}

    def info(self) -> dict:
        return {**super().info(), "occupancy": self.task.occupancy.copy()}

    def render_frame(self) -> np.ndarray:
        """The top-down maze, and beside it the agent's four current views stacked N, W, S, E from the top."""
        maze = super().render_frame()
        r, c = self.position
        current = self.views()[r, c]  # (4, S, S, 3)
        scale = max(1, maze.shape[0] // (DIRECTIONS * (VIEW_SIZE + 4)))
        gap = 2 * scale
        size = VIEW_SIZE * scale
        panel = np.full((max(maze.shape[0], DIRECTIONS * (size + gap)), size + 2 * gap, 3), render.WALL, np.uint8)
        for d in range(DIRECTIONS):
            top = d * (size + gap) + gap // 2
            panel[top : top + size, gap : gap + size] = render.upscale(current[d], scale)
        if panel.shape[0] > maze.shape[0]:
            maze = np.pad(maze, ((0, panel.shape[0] - maze.shape[0]), (0, 0), (0, 0)))
        return np.concatenate([maze, panel], axis=1)
