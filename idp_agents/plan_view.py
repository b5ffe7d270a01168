"""What the interactive viewer shows: a task being edited, the planner's answer to it, and the frame of both.

No pygame here. ``python -m idp_agents.view`` turns mouse and key events into these calls and shows `PlanView.frame`;
tests make the same calls, directly or through synthetic events. The map panel is the environment's own
``rgb_array`` frame with the plan as its overlay (`GridPlanningEnv.set_overlay`), so the window, a saved PNG and a GIF
frame draw a state with the same code.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from idp_agents.planners import PlannerTrace
from idp_agents.policy import PlannerPolicy, batched_observation
from idp_envs import render
from idp_envs.tasks import PlanningTask
from rollouts.metrics import PlanningMetrics, policy_metrics

BAR_WIDTH, SIDE_WIDTH, MIN_WIDTH, LINE_HEIGHT = 18, 220, 760, 17
BACKGROUND, TEXT, FAINT = (255, 255, 255), (20, 20, 20), (110, 110, 110)
KEYS = (
    "mouse: click toggles a wall, right-click moves the goal, shift-click moves the start",
    "keys: space steps, r resets, n new map, [ ] fewer / more iterations, f watch the solve, s save PNG, q quit",
)
PANELS = {  # what the panels left to right show, where there is more than the map
    "workspace": "the workspace image, the true C-space with the plan, the mapper's C-space (what the planner sees)",
    "views": "the true maze with the plan, the agent's four views, the mapper's maze (what the planner sees)",
}


@dataclass
class Plan:
    """The planner's answer to the current task."""

    logits: np.ndarray  # (4, H, W)
    value: np.ndarray  # (H, W)
    iterations: int  # the forward solve's iterations (K for an unrolled planner)
    residual: float  # relative residual of the returned state: ||f(z) - z|| / ||f(z)||
    converged: bool | None  # met the forward tolerance (None: the planner has none, e.g. unrolled)
    metrics: PlanningMetrics  # the argmax policy from every start cell of this map, on the true map
    wrong: np.ndarray  # (H, W) bool: reachable cells whose argmax action is not one of the optimal ones
    mapped: np.ndarray | None  # (H, W) the mapper's obstacle probabilities, for envs observed through images
    milliseconds: float  # from the edit to the plan and its scores


class PlanView:
    """A task on an environment made with ``render_mode="rgb_array"``, a policy's plan of it, and edits to both.

    Every edit builds a new `PlanningTask`, so an invalid one (a wall on the goal, a goal cut off from the start) is
    refused with the task's own message in `message` and nothing changes. An edit plays the edited task from its
    start. Walls can be edited only where the planner reads the map itself; where a mapper reads images of it (the
    arm's workspace, visual mazes), the goal and start still move.
    """

    MAX_ITERATIONS = 5000

    def __init__(self, env, policy: PlannerPolicy, seed: int = 0, title: str = ""):
        if getattr(env, "render_mode", None) != "rgb_array":
            raise ValueError("PlanView draws with the environment's frames: make it with render_mode='rgb_array'")
        self.env, self.inner, self.policy = env, env.unwrapped, policy
        self.title = title or type(self.inner).__name__
        self.seed, self.maps_drawn = seed, 0
        self.message = ""
        self.trace: PlannerTrace | None = None  # the watched solve of the current map, as numpy arrays
        self.trace_index = 0
        self.plan: Plan | None = None
        self.new_map()

    # ----- the task and the agent -----

    @property
    def task(self) -> PlanningTask:
        return self.inner.task

    @property
    def position(self) -> tuple[int, int]:
        return int(self.inner.position[0]), int(self.inner.position[1])

    @property
    def iterations(self) -> int:
        return self.policy.planner.fixed_point.k_fwd

    def new_map(self) -> None:
        """Draw the next task from the environment (seeded: the n-th map of a session is always the same)."""
        self.env.reset(seed=self.seed + self.maps_drawn)
        self.maps_drawn += 1
        self.message = f"map {self.maps_drawn} of seed {self.seed}"
        self.replan()

    def play(self, task: PlanningTask) -> None:
        """Play a given task (a map of the environment's shape and topology) from its start, and plan it."""
        self.env.reset(options={"task": task})
        self.replan()

    def reset(self) -> None:
        """The agent back at the start of the current task."""
        self.env.reset(options={"task": self.task})
        self._show_overlay()
        self.message = "agent back at the start"

    def toggle_wall(self, cell: tuple[int, int]) -> bool:
        if self.policy.mapper is not None:
            return self._refuse(
                f"walls cannot be edited here: the planner's map comes from the {self.policy.mapper_input} "
                "through its mapper; move the goal or the start, or press n for a new map"
            )
        occupancy = self.task.occupancy.copy()
        occupancy[cell] ^= 1
        added = "added" if occupancy[cell] else "removed"
        return self._edit(occupancy=occupancy) and self._say(f"wall {added} at {cell}")

    def move_goal(self, cell: tuple[int, int]) -> bool:
        return self._edit(goal=cell) and self._say(f"goal moved to {cell}")

    def move_start(self, cell: tuple[int, int]) -> bool:
        return self._edit(start=cell) and self._say(f"start moved to {cell}")

    def step(self) -> None:
        """One step of the agent along the plan's argmax action at its cell."""
        if self.position == self.task.goal:
            self.message = "already at the goal: r resets, n draws a new map"
            return
        r, c = self.position
        action = int(self.plan.logits[:, r, c].argmax())
        _, _, terminated, truncated, _ = self.env.step(action)
        steps = self.inner.steps
        if terminated:
            self.message = f"reached the goal in {steps} steps (shortest: {self.task.distances()[self.task.start]})"
        elif truncated:
            self.message = f"gave up after {steps} steps"
        else:
            self.message = f"step {steps}: {'NWSE'[action]} to {self.position}"
        self._show_overlay()

    # ----- the solve -----

    def set_iterations(self, k: int) -> None:
        """The forward solve's iteration budget (K steps for an unrolled planner, the cap for an implicit one), set
        on the policy's planner."""
        k = int(np.clip(k, 1, self.MAX_ITERATIONS))
        planner = self.policy.planner
        planner.fixed_point = dataclasses.replace(planner.fixed_point, k_fwd=k)
        self.message = f"{k} solver iterations"
        self.replan()

    def replan(self) -> None:
        """Plan the current task: one forward solve, then the policy's scores from every start of the true map."""
        self.trace = None
        begin = time.perf_counter()
        obs, _ = batched_observation(self.inner.observation())
        planner = self.policy.planner
        with torch.inference_mode():
            maps = self.policy.planner_maps(obs)
            if planner.fixed_point.mode == "unrolled":  # its forward is the plain iteration: trace its last step
                out = planner.trace(maps, self.iterations, every=False)
                logits, value = out.logits[-1, 0], out.values[-1, 0]
                residual = float(out.residuals[-1, 0]) if len(out.residuals) else float("nan")
                iterations, converged = self.iterations, None
            else:
                out = planner(maps)
                logits, value, forward = out.logits[0], out.value[0], out.info.forward
                residual, iterations = float(forward.final_residual[0]), forward.iterations
                converged = None if planner.fixed_point.tol_fwd is None else bool(forward.converged[0])
        logits, value = logits.float().cpu().numpy(), value.float().cpu().numpy()
        metrics, wrong = self._score(logits.argmax(axis=0))
        mapped = maps[0, 0].float().cpu().numpy() if self.policy.mapper is not None else None
        ms = 1000 * (time.perf_counter() - begin)
        self.plan = Plan(logits, value, iterations, residual, converged, metrics, wrong, mapped, ms)
        self._show_overlay()

    def watch_solve(self) -> None:
        """Start showing the forward solve iteration by iteration (`advance` moves it on), or stop showing it."""
        if self.trace is not None:
            self.trace = None
            self.message = "back to the solved plan"
            self._show_overlay()
            return
        obs, _ = batched_observation(self.inner.observation())
        with torch.inference_mode():
            out = self.policy.planner.trace(self.policy.planner_maps(obs), self.iterations)
        self.trace = PlannerTrace(*(x[:, 0].float().cpu().numpy() for x in (out.values, out.logits, out.residuals)))
        self.trace_index = 0
        self.message = f"the step applied {self.iterations} times from its initial state (f: back)"
        self._show_overlay()

    def advance(self, steps: int = 1) -> bool:
        """Move a watched solve on by ``steps`` iterations; False when there is none or it has ended."""
        if self.trace is None or self.trace_index >= len(self.trace.residuals):
            return False
        self.trace_index = min(self.trace_index + steps, len(self.trace.residuals))
        self._show_overlay()
        return True

    # ----- drawing -----

    def cell_at(self, x: int, y: int) -> tuple[int, int] | None:
        """The grid cell under frame pixel (x, y), or None outside the grid."""
        top, left, px = self.inner.grid_panel()
        r, c = (y - top) // px, (x - left) // px
        h, w = self.task.shape
        return (int(r), int(c)) if y >= top and x >= left and r < h and c < w else None

    def frame(self) -> np.ndarray:
        """The viewer's picture: the environment's frame with the plan, the value key (and the watched solve's
        residuals), and the status lines."""
        from PIL import Image, ImageDraw

        env_frame = self.env.render()
        panels = [env_frame]
        if self.plan.mapped is not None:
            px = self.inner.grid_panel()[2]
            mapped = render.draw_grid(
                (self.plan.mapped > 0.5).astype(np.uint8), self.task.goal, self.position, cell_pixels=px
            )
            panels.append(np.full((env_frame.shape[0], 6, 3), 255, np.uint8))
            panels.append(
                np.pad(mapped, ((0, env_frame.shape[0] - mapped.shape[0]), (0, 0), (0, 0)), constant_values=255)
            )
        maps = np.concatenate(panels, axis=1)
        h, w = maps.shape[:2]
        lines = self.status_lines()
        canvas = Image.new(
            "RGB", (max(w + SIDE_WIDTH, MIN_WIDTH), max(h, 260) + len(lines) * LINE_HEIGHT + 8), BACKGROUND
        )
        canvas.paste(Image.fromarray(maps), (0, 0))
        draw = ImageDraw.Draw(canvas)
        small = render.font(12)
        value = self.trace.values[self.trace_index] if self.trace is not None else self.plan.value
        lo, hi = render.value_range(value, self.task.occupancy == 0)
        bar = render.value_ramp(np.linspace(1, 0, 160))[:, None].repeat(BAR_WIDTH, axis=1)
        canvas.paste(Image.fromarray(bar), (w + 10, 22))
        draw.text((w + 10, 4), "value", fill=TEXT, font=small)
        draw.text((w + 14 + BAR_WIDTH, 22), f"{hi:.3g}", fill=TEXT, font=small)
        draw.text((w + 14 + BAR_WIDTH, 170), f"{lo:.3g}", fill=TEXT, font=small)
        if self.trace is not None:
            self._draw_residuals(draw, (w + 10, 200, w + SIDE_WIDTH - 10, 250), small)
        y = max(h, 260) + 4
        for i, line in enumerate(lines):
            draw.text((6, y + i * LINE_HEIGHT), line, fill=TEXT if i < len(lines) - len(KEYS) else FAINT, font=small)
        return np.asarray(canvas)

    def status_lines(self) -> list[str]:
        plan, planner = self.plan, self.policy.planner
        mode = planner.fixed_point.mode
        if self.trace is not None:
            k = self.trace_index
            residual = f"{self.trace.residuals[k - 1]:.1e}" if k else "-"
            solve = f"watching the solve: iteration {k} of {len(self.trace.residuals)}, relative residual {residual}"
        elif mode == "unrolled":
            solve = f"unrolled, K = {plan.iterations} steps; last step's relative change {plan.residual:.1e}"
        else:
            state = {True: "converged", False: "NOT converged", None: "no tolerance"}[plan.converged]
            solve = (
                f"{mode} ({planner.fixed_point.solver_fwd}): {plan.iterations} iterations of at most "
                f"{self.iterations}, residual {plan.residual:.1e}, {state}"
            )
        m = plan.metrics
        scores = (
            f"this map, every start: %Success {100 * m.success:.1f}  %Optimal {100 * m.optimal:.1f}  "
            f"({int(plan.wrong.sum())} cells leave the optimal actions, outlined); plan {plan.milliseconds:.0f} ms"
        )
        lines = [f"{self.title}   agent {self.position}  goal {self.task.goal}", solve, scores, self.message]
        if self.policy.mapper is not None:
            lines.insert(1, f"panels: {PANELS[self.policy.mapper_input]}")
        return lines + list(KEYS)

    # ----- helpers -----

    def _draw_residuals(self, draw, box: tuple[int, int, int, int], font) -> None:
        """log10 of the watched solve's relative residuals against the iteration, up to the current one."""
        residuals = np.log10(np.maximum(self.trace.residuals, 1e-12))
        x0, y0, x1, y1 = box
        draw.rectangle(box, outline=FAINT)
        draw.text((x0, y0 - 16), "log10 residual", fill=TEXT, font=font)
        if not len(residuals):
            return
        lo, hi = min(residuals.min(), -4.0), max(residuals.max(), 0.0)
        xs = x0 + (x1 - x0) * np.arange(len(residuals)) / max(1, len(residuals) - 1)
        ys = y1 - (y1 - y0) * (residuals - lo) / (hi - lo)
        shown = max(1, self.trace_index)
        draw.line(list(zip(xs[:shown].tolist(), ys[:shown].tolist(), strict=True)), fill=(49, 54, 149), width=2)
        draw.text((x0, y1 + 2), f"{lo:.0f} .. {hi:.0f}", fill=FAINT, font=font)

    def _score(self, actions: np.ndarray) -> tuple[PlanningMetrics, np.ndarray]:
        task = self.task
        distances = task.distances()
        metrics = policy_metrics(
            torch.from_numpy(actions[None]),
            torch.from_numpy(task.occupancy[None]),
            torch.tensor([task.goal]),
            torch.from_numpy(distances[None].astype(np.int64)),
            task.topology,
            self.inner.max_steps,
        )
        optimal = task.optimal_actions()
        chosen = np.take_along_axis(optimal, actions[None], axis=0)[0]
        return metrics, (distances > 0) & ~chosen

    def _show_overlay(self) -> None:
        if self.trace is not None:
            k = self.trace_index
            self.inner.set_overlay(self.trace.values[k], self.trace.logits[k])
        else:
            self.inner.set_overlay(self.plan.value, self.plan.logits, self.plan.wrong)

    def _edit(self, **change) -> bool:
        task = self.task
        fields = {"occupancy": task.occupancy, "goal": task.goal, "start": task.start} | change
        extras = {k: v for k, v in task.extras.items() if not ("goal" in change and k == "views")}
        try:
            edited = PlanningTask(fields["occupancy"], fields["goal"], fields["start"], task.topology, extras)
        except ValueError as exc:
            return self._refuse(str(exc))
        self.play(edited)
        return True

    def _refuse(self, why: str) -> bool:
        self.message = f"refused: {why}"
        return False

    def _say(self, message: str) -> bool:
        self.message = message
        return True
