"""The environment every IDP task shares: an agent moving N/W/S/E on a grid towards a goal, with expert labels."""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from idp_envs import grid, render
from idp_envs.tasks import PlanningTask, TaskBatch


class GridPlanningEnv(gym.Env):
    """Planning on an (H, W) grid: reach the goal; +1 on arrival, -0.01 for every other step.

    Subclasses say how tasks are sampled (`sample_tasks`, batched, also used to build datasets) and may add
    observation keys (`observation_space` / `observation`). ``reset(options={"task": task})`` plays a given
    `PlanningTask` (or a mapping with ``occupancy``, ``goal``, ``start``) instead of a sampled one.

    The episode terminates at the goal and is truncated after ``max_steps`` steps, by default H * W: more than
    any shortest path on the grid, so an expert always arrives in time.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 8}
    GOAL_REWARD = 1.0
    STEP_REWARD = -0.01
    # what no two tasks of a dataset may share across splits: the map ("layout") or the map and goal ("task")
    DISTINCT_BY = "layout"

    def __init__(
        self,
        shape: tuple[int, int],
        topology: str = "plane",
        render_mode: str | None = None,
        max_steps: int | None = None,
    ):
        grid.check_topology(topology)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.topology = topology
        self.render_mode = render_mode
        self.max_steps = int(max_steps) if max_steps is not None else self.shape[0] * self.shape[1]
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.action_space = spaces.Discrete(4)
        self.observation_space = self.make_observation_space()
        self.task: PlanningTask | None = None
        self.position = np.zeros(2, dtype=np.int64)
        self.path: list[tuple[int, int]] = []
        self.steps = 0
        self.overlay: dict[str, np.ndarray | None] = {"value": None, "policy": None, "marks": None}
        self._window: render.PygameWindow | None = None

    def sample_tasks(self, n: int, rng: np.random.Generator) -> TaskBatch:
        """N labelled tasks drawn from this environment's distribution."""
        raise NotImplementedError

    def make_observation_space(self) -> spaces.Dict:
        h, w = self.shape
        return spaces.Dict(
            {
                "occupancy": spaces.Box(0, 1, (h, w), np.uint8),
                "goal": spaces.Box(0, 1, (h, w), np.uint8),
                "position": spaces.Box(0, max(h, w) - 1, (2,), np.int64),
            }
        )

    def goal_map(self) -> np.ndarray:
        """The goal as every IDP env observes it: an (H, W) uint8 one-hot map."""
        goal = np.zeros(self.shape, dtype=np.uint8)
        goal[self.task.goal] = 1
        return goal

    def observation(self) -> dict[str, np.ndarray]:
        return {"occupancy": self.task.occupancy.copy(), "goal": self.goal_map(), "position": self.position.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"task"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the only option is 'task'")
        if "task" in options:
            self.task = self.coerce_task(options["task"])
        else:
            self.task = self.sample_tasks(1, self.np_random).task(0)
        self.position = np.array(self.task.start, dtype=np.int64)
        self.path = [self.task.start]
        self.steps = 0
        self.overlay = {"value": None, "policy": None, "marks": None}
        return self.observation(), self.info()

    def step(self, action):
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an integer in [0, 4) (N, W, S, E), got {action!r}")
        self.position = grid.step_positions(
            self.task.occupancy[None], self.position[None], np.array([int(action)]), self.topology
        )[0]
        self.steps += 1
        self.path.append((int(self.position[0]), int(self.position[1])))
        terminated = bool(tuple(self.position) == self.task.goal)
        truncated = not terminated and self.steps >= self.max_steps
        reward = self.GOAL_REWARD if terminated else self.STEP_REWARD
        if self.render_mode == "human":
            self.render()
        return self.observation(), reward, terminated, truncated, self.info()

    def info(self) -> dict:
        r, c = self.position
        optimal = self.task.optimal_actions()[:, r, c]
        return {
            "expert_action": int(grid.expert_actions(optimal[None, :, None, None])[0, 0, 0]),
            "optimal_actions": optimal.copy(),
            "distance": int(self.task.distances()[r, c]),
        }

    def expert_policy(self) -> np.ndarray:
        """(4, H, W) bool: all optimal actions at every cell of the current task."""
        return self.task.optimal_actions().copy()

    def distances(self) -> np.ndarray:
        """(H, W) BFS distances to the goal of the current task, -1 where unreachable."""
        return self.task.distances().copy()

    def coerce_task(self, task) -> PlanningTask:
        if isinstance(task, Mapping):
            missing = {"occupancy", "goal", "start"} - set(task)
            if missing:
                raise ValueError(f"a task needs the keys occupancy, goal and start; missing {sorted(missing)}")
            task = PlanningTask(
                task["occupancy"],
                task["goal"],
                task["start"],
                task.get("topology", self.topology),
                dict(task.get("extras", {})),
            )
        if not isinstance(task, PlanningTask):
            raise ValueError(f"options['task'] must be a PlanningTask or a mapping, got {type(task).__name__}")
        if task.shape != self.shape:
            raise ValueError(
                f"task map has shape {task.shape} but this environment plays {self.shape} maps "
                "(IDP/GridMaze-v0 takes size=)"
            )
        if task.topology != self.topology:
            raise ValueError(f"task topology {task.topology!r} does not match the environment's {self.topology!r}")
        return task

    def set_overlay(
        self, value: np.ndarray | None = None, policy: np.ndarray | None = None, marks: np.ndarray | None = None
    ) -> None:
        """Show a value map (H, W), a policy map ((H, W) actions or (4, H, W) scores) and/or marked cells ((H, W)
        bool, outlined) in rendered frames."""
        for name, arr, shapes in (
            ("value", value, [self.shape]),
            ("policy", policy, [self.shape, (4, *self.shape)]),
            ("marks", marks, [self.shape]),
        ):
            if arr is not None and np.shape(arr) not in shapes:
                raise ValueError(f"{name} overlay must have shape {' or '.join(map(str, shapes))}, got {np.shape(arr)}")
        self.overlay = {"value": value, "policy": policy, "marks": marks}

    def grid_panel(self) -> tuple[int, int, int]:
        """Where `render_frame` draws the grid: (top, left) pixel of its first cell and pixels per cell, so that a
        click on a frame can be turned into a cell."""
        return 0, 0, render.default_cell_pixels(self.shape)

    def render_frame(self) -> np.ndarray:
        return render.draw_grid(self.task.occupancy, self.task.goal, self.position, np.array(self.path), **self.overlay)

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        if self.task is None:
            raise RuntimeError("call reset() before render()")
        frame = self.render_frame()
        if self.render_mode == "rgb_array":
            return frame
        if self._window is None:
            self._window = render.PygameWindow(type(self).__name__, self.metadata["render_fps"])
        self._window.show(frame)
        return None

    def close(self):
        if self._window is not None:
            self._window.close()
            self._window = None
