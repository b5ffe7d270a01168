"""A planar two-link arm among polygon obstacles: planning on its configuration space, a torus of joint angles; the
samplers of its tasks and the drawing of its workspace. The geometry (links, collisions, C-space occupancy, the
workspace image) is `idp_envs.arm_geometry`.

C-space grid. Row = first-joint bin, column = second-joint bin, both wrapping around ("torus"): N/S turn the
first joint by -/+ one bin, W/E the second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

from idp_envs import grid, render
from idp_envs.arm_geometry import (
    BASE,
    IMAGE_SIZE,
    LINK_LENGTHS,
    WORKSPACE_EXTENT,
    arm_points,
    cspace_occupancy,
    joint_angles,
    points_in_polygons,
    rasterise_workspace,
)
from idp_envs.envs.base import GridPlanningEnv
from idp_envs.tasks import PlanningTask, TaskBatch

MAX_OBSTACLES = 5
MIN_VERTICES, MAX_VERTICES = 4, 7
BASE_CLEARANCE = 0.25  # every obstacle stays at least this far from the base
EXTRAS = ("workspace", "obstacle_vertices", "obstacle_counts")

ARM_COLOR = np.array([214, 39, 40], dtype=np.float32)
GOAL_ARM_COLOR = np.array([46, 160, 67], dtype=np.float32)
BASE_COLOR = np.array([30, 30, 30], dtype=np.uint8)
REACH_COLOR = np.array([225, 225, 215], dtype=np.uint8)


def sample_obstacles(
    n: int, rng: np.random.Generator, max_obstacles: int = MAX_OBSTACLES
) -> tuple[np.ndarray, np.ndarray]:
    """N scenes of 0 to ``max_obstacles`` random star-shaped polygons (4 to 7 vertices) that avoid the base.

    A polygon is drawn around a centre c with jittered, evenly spaced angles (every gap under pi, so c sees all
    vertices) and radii at most R; R stays ``BASE_CLEARANCE`` short of the base, which is never covered.
    Returns vertices (N, max_obstacles, 7, 2) padded with the first vertex, and counts (N, max_obstacles).
    """
    if n < 0 or max_obstacles < 0:
        raise ValueError(f"n and max_obstacles must be non-negative, got {n} and {max_obstacles}")
    shape = (n, max_obstacles)
    present = np.arange(max_obstacles) < rng.integers(0, max_obstacles + 1, size=(n, 1))
    nverts = rng.integers(MIN_VERTICES, MAX_VERTICES + 1, size=shape)
    centre = np.empty((*shape, 2))
    todo = np.ones(shape, dtype=bool)
    while todo.any():  # centres at least 0.8 from the base: a few redraws of a small fraction
        centre[todo] = rng.uniform(0.5, WORKSPACE_EXTENT - 0.5, size=(int(todo.sum()), 2))
        todo = np.linalg.norm(centre - BASE, axis=-1) < 0.8
    room = np.linalg.norm(centre - BASE, axis=-1) - BASE_CLEARANCE
    reach = np.minimum(rng.uniform(0.5, 1.5, size=shape), room)
    k = np.arange(MAX_VERTICES)
    angles = (k + rng.uniform(0.2, 0.8, size=(*shape, MAX_VERTICES))) * (2 * np.pi / nverts[..., None])
    angles += rng.uniform(0, 2 * np.pi, size=(*shape, 1))
    radii = reach[..., None] * rng.uniform(0.4, 1.0, size=(*shape, MAX_VERTICES))
    vertices = centre[..., None, :] + radii[..., None] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    vertices = np.where((k < nverts[..., None])[..., None], vertices, vertices[..., :1, :])
    return vertices, np.where(present, nverts, 0).astype(np.int64)


def _has_free_neighbour(free: np.ndarray) -> np.ndarray:
    return free & grid.neighbour_values(free, "torus", False).any(axis=1)


def label_arm_scenes(
    vertices: np.ndarray, counts: np.ndarray, occupancy: np.ndarray, rng: np.random.Generator
) -> TaskBatch:
    """Label scenes with a goal (a free configuration with a free neighbour) and a distinct start that reaches it."""
    goal = grid.sample_free_cells(_has_free_neighbour(occupancy == 0), rng)
    if (goal < 0).any():
        raise ValueError("a C-space has no two adjacent free configurations for a goal and a start")
    distances = grid.bfs_distances(occupancy, goal, "torus")
    start = grid.sample_free_cells(distances > 0, rng)
    extras = {
        "workspace": rasterise_workspace(vertices, counts),
        "obstacle_vertices": vertices,
        "obstacle_counts": counts.astype(np.int64),
    }
    optimal = grid.optimal_action_mask(distances, "torus")
    return TaskBatch(occupancy.astype(np.uint8), goal, start, distances, optimal, "torus", extras)


def sample_arm_tasks(n: int, bins: int, rng: np.random.Generator, max_obstacles: int = MAX_OBSTACLES) -> TaskBatch:
    """N labelled arm tasks on an n x n C-space; ``extras`` hold workspace images and the obstacle polygons.

    Scenes whose C-space has no two adjacent free configurations (the arm boxed in) are redrawn.
    """
    vertices, counts = sample_obstacles(n, rng, max_obstacles)
    occupancy = cspace_occupancy(vertices, counts, bins)
    bad = ~_has_free_neighbour(occupancy == 0).any(axis=(1, 2))
    for _ in range(100):
        if not bad.any():
            break
        idx = np.flatnonzero(bad)
        vertices[idx], counts[idx] = sample_obstacles(len(idx), rng, max_obstacles)
        occupancy[idx] = cspace_occupancy(vertices[idx], counts[idx], bins)
        bad[idx] = ~_has_free_neighbour(occupancy[idx] == 0).any(axis=(1, 2))
    else:
        raise ValueError("could not draw scenes with a free C-space after 100 redraws")
    return label_arm_scenes(vertices, counts, occupancy, rng)


def pad_polygons(polygons: Sequence[np.ndarray], max_vertices: int = MAX_VERTICES) -> tuple[np.ndarray, np.ndarray]:
    """One scene's list of (k, 2) polygons as padded vertices (1, P, V, 2) and counts (1, P)."""
    polygons = [np.asarray(poly, dtype=np.float64) for poly in polygons]
    width = max([max_vertices] + [len(poly) for poly in polygons])
    vertices = np.zeros((1, max(len(polygons), 1), width, 2))
    counts = np.zeros((1, max(len(polygons), 1)), dtype=np.int64)
    for i, poly in enumerate(polygons):
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise ValueError(f"polygon {i} must be an array of at least 3 (x, y) vertices, got shape {poly.shape}")
        vertices[0, i, : len(poly)] = poly
        vertices[0, i, len(poly) :] = poly[0]
        counts[0, i] = len(poly)
    return vertices, counts


def arm_task(
    polygons: Sequence[np.ndarray], goal: tuple[int, int], start: tuple[int, int], bins: int = 18
) -> PlanningTask:
    """A `PlanningTask` for user-given obstacles ((k, 2) workspace polygons) and goal/start joint bins."""
    vertices, counts = pad_polygons(polygons)
    base_inside = points_in_polygons(BASE[None, None], vertices, counts)
    if base_inside.any():
        raise ValueError("an obstacle covers the arm's base at (5, 5): every configuration would collide")
    occupancy = cspace_occupancy(vertices, counts, bins)[0]
    extras = {
        "workspace": rasterise_workspace(vertices, counts)[0],
        "obstacle_vertices": vertices[0],
        "obstacle_counts": counts[0],
    }
    return PlanningTask(occupancy, goal, start, "torus", extras)


def _to_pixels(points: np.ndarray, size: int) -> np.ndarray:
    """Workspace (x, y) -> continuous (row, col) pixel coordinates of a size x size panel."""
    scale = size / WORKSPACE_EXTENT
    return np.stack([(WORKSPACE_EXTENT - points[..., 1]) * scale, points[..., 0] * scale], axis=-1)


def _segment_mask(size: int, a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    """(size, size) bool: pixels within ``width`` pixels of the segment from a to b (pixel coordinates)."""
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    d = b - a
    t = np.clip(((rows - a[0]) * d[0] + (cols - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0, 1)
    return (rows - a[0] - t * d[0]) ** 2 + (cols - a[1] - t * d[1]) ** 2 <= width**2


def draw_workspace(
    workspace: np.ndarray | None,
    bins: int,
    configuration: tuple[int, int],
    goal: tuple[int, int] | None = None,
    size: int = 480,
) -> np.ndarray:
    """A (size, size, 3) frame: the obstacle image, the arm's reach, the goal pose faint and the arm at its pose."""
    rows = (np.arange(size) + 0.5) * IMAGE_SIZE / size
    idx = np.clip(rows.astype(np.int64), 0, IMAGE_SIZE - 1)
    occ = np.zeros((size, size), bool) if workspace is None else np.asarray(workspace, bool)[idx][:, idx]
    centre = _to_pixels(BASE, size)
    rr, cc = np.mgrid[0:size, 0:size] + 0.5
    reach = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= (sum(LINK_LENGTHS) * size / WORKSPACE_EXTENT) ** 2
    frame = np.where(occ[..., None], render.WALL, np.where(reach[..., None], REACH_COLOR, render.FREE))
    width = max(1.5, size / 120)
    theta = joint_angles(bins)
    for pose, color, alpha in ((goal, GOAL_ARM_COLOR, 0.45), (configuration, ARM_COLOR, 1.0)):
        if pose is None:
            continue
        elbow, hand = arm_points(theta[int(pose[0])], theta[int(pose[1])])
        base_px, elbow_px, hand_px = _to_pixels(np.stack([BASE, elbow, hand]), size)
        mask = _segment_mask(size, base_px, elbow_px, width) | _segment_mask(size, elbow_px, hand_px, width)
        frame[mask] = ((1 - alpha) * frame[mask] + alpha * color).astype(np.uint8)
    frame[(rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= (2 * width) ** 2] = BASE_COLOR
    return frame


class ArmCSpaceEnv(GridPlanningEnv):
    """Move a two-link arm between joint configurations on its ``bins`` x ``bins`` C-space (a torus).

    Observations are those of GridMaze with the C-space as ``occupancy``; task extras carry the workspace image
    and the obstacle polygons, so datasets include them. Many scenes share a C-space (every obstacle out of
    reach gives the all-free one), so datasets keep (C-space, goal) pairs distinct rather than C-spaces.
    """

    DISTINCT_BY = "task"

    def __init__(
        self,
        bins: int = 18,
        max_obstacles: int = MAX_OBSTACLES,
        render_mode: str | None = None,
        max_steps: int | None = None,
    ):
        if not isinstance(bins, (int, np.integer)) or bins < 4:
            raise ValueError(f"bins must be an integer >= 4, got {bins!r}")
        if not isinstance(max_obstacles, (int, np.integer)) or max_obstacles < 0:
            raise ValueError(f"max_obstacles must be a non-negative integer, got {max_obstacles!r}")
        self.bins, self.max_obstacles = int(bins), int(max_obstacles)
        super().__init__((self.bins, self.bins), "torus", render_mode, max_steps)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> TaskBatch:
        return sample_arm_tasks(n, self.bins, rng, self.max_obstacles)

    def workspace_image(self) -> np.ndarray | None:
        """The current task's (96, 96) workspace image, rasterised from its polygons if only those are given (once
        per task: the env keeps it, the task is left as it was given)."""
        extras = self.task.extras
        if "workspace" in extras:
            return np.asarray(extras["workspace"], dtype=np.uint8)
        if "obstacle_vertices" not in extras or "obstacle_counts" not in extras:
            return None
        task, image = getattr(self, "_rasterised", (None, None))
        if task is not self.task:
            image = rasterise_workspace(extras["obstacle_vertices"][None], extras["obstacle_counts"][None])[0]
            self._rasterised = (self.task, image)
        return image

    def render_frame(self) -> np.ndarray:
        """The workspace (the arm, its goal pose faint, the obstacles) beside the C-space, whose margin shows what
        lies across each edge of the torus."""
        px = render.default_cell_pixels(self.shape)
        cspace = render.draw_grid(
            self.task.occupancy, self.task.goal, self.position, np.array(self.path), cell_pixels=px, **self.overlay
        )
        cspace = render.wrap_margin(cspace, self._band(px))
        size = cspace.shape[0]
        workspace = draw_workspace(self.workspace_image(), self.bins, tuple(self.position), self.task.goal, size)
        gap = np.full((size, self._band(px), 3), 255, dtype=np.uint8)
        return np.concatenate([workspace, gap, cspace], axis=1)

    @staticmethod
    def _band(px: int) -> int:
        """The gap between the panels and the width of the C-space's wrapped margin."""
        return max(4, px // 2)

    def grid_panel(self) -> tuple[int, int, int]:
        px = render.default_cell_pixels(self.shape)
        band = self._band(px)
        size = self.shape[0] * px + 2 * band  # the workspace image is as high as the C-space with its margin
        return band, size + band + band, px


class ArmWorkspaceEnv(ArmCSpaceEnv):
    """The arm task seen from the workspace: a (96, 96) obstacle image, the goal (a one-hot map over the C-space's
    joint bins, as every IDP env gives it) and the current joint bins.

    The true C-space is not observed; it stays available as a label in ``info["cspace"]`` and in datasets
    (``occupancy``), for training a mapper from workspace images to C-spaces.
    """

    def make_observation_space(self) -> spaces.Dict:
        n = self.shape[0]
        return spaces.Dict(
            {
                "workspace": spaces.Box(0, 1, (IMAGE_SIZE, IMAGE_SIZE), np.uint8),
                "goal": spaces.Box(0, 1, (n, n), np.uint8),
                "position": spaces.Box(0, n - 1, (2,), np.int64),
            }
        )

    def coerce_task(self, task) -> PlanningTask:
        task = super().coerce_task(task)
        extras = task.extras
        if "workspace" not in extras and not {"obstacle_vertices", "obstacle_counts"} <= set(extras):
            raise ValueError(
                "a workspace task needs extras['workspace'] (a (96, 96) image) or the obstacle polygons "
                "(extras 'obstacle_vertices', 'obstacle_counts'); build one with idp_envs.envs.arm.arm_task"
            )
        if "workspace" in extras:
            image = np.asarray(extras["workspace"])
            if image.shape != (IMAGE_SIZE, IMAGE_SIZE) or not np.isin(image, (0, 1)).all():
                raise ValueError(f"extras['workspace'] must be a (96, 96) array of 0/1, got shape {image.shape}")
        return task

    def observation(self) -> dict[str, np.ndarray]:
        return {
            "workspace": self.workspace_image().copy(),
            "goal": self.goal_map(),
            "position": self.position.copy(),
        }

    def info(self) -> dict:
        return {**super().info(), "cspace": self.task.occupancy.copy()}
