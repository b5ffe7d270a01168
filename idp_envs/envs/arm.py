"""A planar two-link arm among polygon obstacles: planning on its configuration space, a torus of joint angles.

Geometry. The workspace is the square [0, 10] x [0, 10] with x to the east and y to the north; the arm's base
sits at its centre (5, 5). Both links are 2.1 long: the reach, 4.2, keeps the whole arm inside the workspace
(half-width 5) while the elbow circle (radius 2.1) sits midway, so obstacles anywhere in the disc of radius 4.2
can block the arm. Joint angles are counter-clockwise from east, on exact bins ``theta_k = 2 pi k / n``; the
second angle is relative to the first link. A configuration collides when either link intersects an obstacle
polygon or lies inside one, decided exactly by segment-edge intersection and point-in-polygon tests.

C-space grid. Row = first-joint bin, column = second-joint bin, both wrapping around ("torus"): N/S turn the
first joint by -/+ one bin, W/E the second. Workspace images are (96, 96) uint8, row 0 at y = 10 (the top),
a pixel 1 when its centre lies inside an obstacle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

from idp_envs import grid, render
from idp_envs.envs.base import GridPlanningEnv
from idp_envs.tasks import PlanningTask, TaskBatch

LINK_LENGTHS = (2.1, 2.1)
WORKSPACE_EXTENT = 10.0
BASE = np.array([5.0, 5.0])
IMAGE_SIZE = 96
MAX_OBSTACLES = 5
MIN_VERTICES, MAX_VERTICES = 4, 7
BASE_CLEARANCE = 0.25  # every obstacle stays at least this far from the base
EXTRAS = ("workspace", "obstacle_vertices", "obstacle_counts")

ARM_COLOR = np.array([214, 39, 40], dtype=np.float32)
GOAL_ARM_COLOR = np.array([46, 160, 67], dtype=np.float32)
BASE_COLOR = np.array([30, 30, 30], dtype=np.uint8)
REACH_COLOR = np.array([225, 225, 215], dtype=np.uint8)


def joint_angles(bins: int) -> np.ndarray:
    """The ``bins`` exact joint angles 2 pi k / n, k = 0..n-1."""
    return 2 * np.pi * np.arange(bins) / bins


def arm_points(theta1: np.ndarray, theta2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and hand positions (..., 2) of configurations (theta1, theta2) (broadcast; theta2 relative)."""
    theta1, theta2 = np.broadcast_arrays(np.asarray(theta1, dtype=np.float64), np.asarray(theta2, dtype=np.float64))
    elbow = BASE + LINK_LENGTHS[0] * np.stack([np.cos(theta1), np.sin(theta1)], axis=-1)
    hand = elbow + LINK_LENGTHS[1] * np.stack([np.cos(theta1 + theta2), np.sin(theta1 + theta2)], axis=-1)
    return elbow, hand


def check_obstacles(vertices: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate padded polygons: ``vertices`` (N, P, V, 2) float, ``counts`` (N, P) int (0 = no polygon)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    counts = np.asarray(counts)
    if vertices.ndim != 4 or vertices.shape[-1] != 2:
        raise ValueError(f"obstacle vertices must have shape (N, P, V, 2), got {vertices.shape}")
    if counts.shape != vertices.shape[:2] or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"obstacle counts must be integers of shape {vertices.shape[:2]}, got {counts.shape}")
    bad = ((counts != 0) & (counts < 3)) | (counts > vertices.shape[2])
    if bad.any():
        raise ValueError(
            f"each polygon needs 0 (absent) or 3 to {vertices.shape[2]} vertices, got {np.unique(counts[bad])[:5]}"
        )
    if not np.isfinite(vertices).all():
        raise ValueError("obstacle vertices must be finite")
    return vertices, counts.astype(np.int64)


def polygon_edges(vertices: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge starts and ends (N, P, V, 2) and a validity mask (N, P, V): edge k joins vertex k to k+1 mod count."""
    k = np.arange(vertices.shape[2])
    nxt = np.where(k + 1 < counts[..., None], k + 1, 0)
    ends = np.take_along_axis(vertices, nxt[..., None], axis=2)
    return vertices, ends, k < counts[..., None]


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def segments_intersect(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Whether closed segments p1p2 and q1q2 share a point (touching counts); broadcast over leading axes."""
    p1x, p1y, p2x, p2y = p1[..., 0], p1[..., 1], p2[..., 0], p2[..., 1]
    q1x, q1y, q2x, q2y = q1[..., 0], q1[..., 1], q2[..., 0], q2[..., 1]
    ex, ey = q2x - q1x, q2y - q1y
    sx, sy = p2x - p1x, p2y - p1y
    d1 = _cross(ex, ey, p1x - q1x, p1y - q1y)
    d2 = _cross(ex, ey, p2x - q1x, p2y - q1y)
    d3 = _cross(sx, sy, q1x - p1x, q1y - p1y)
    d4 = _cross(sx, sy, q2x - p1x, q2y - p1y)
    hit = np.array((d1 * d2 <= 0) & (d3 * d4 <= 0))
    collinear = hit & (d1 == 0) & (d2 == 0)
    if collinear.any():
        # on one line the straddle tests always pass: the segments meet only if their bounding boxes overlap
        shape = collinear.shape
        p1x, p1y, p2x, p2y, q1x, q1y, q2x, q2y = (
            np.broadcast_to(a, shape)[collinear] for a in (p1x, p1y, p2x, p2y, q1x, q1y, q2x, q2y)
        )
        overlap = (
            (np.minimum(p1x, p2x) <= np.maximum(q1x, q2x))
            & (np.minimum(q1x, q2x) <= np.maximum(p1x, p2x))
            & (np.minimum(p1y, p2y) <= np.maximum(q1y, q2y))
            & (np.minimum(q1y, q2y) <= np.maximum(p1y, p2y))
        )
        hit[collinear] = overlap
    return hit


def _crossing_parity(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Crossing-number point-in-polygon: points (px, py) against the edges a -> b (..., V, 2) of one polygon each,
    reduced over the last (edge) axis; shapes broadcast."""
    ax, ay, bx, by = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    spans = ((ay > py) != (by > py)) & valid
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = ax + (py - ay) * (bx - ax) / (by - ay)
    return np.bitwise_xor.reduce(spans & (px < x_cross), axis=-1)


def points_in_polygons(points: np.ndarray, vertices: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, M, P) bool: whether each of the points (N, M, 2) lies inside each polygon (crossing-number rule)."""
    a, b, valid = (t[:, None] for t in polygon_edges(*check_obstacles(vertices, counts)))  # (N, 1, P, V)
    points = np.asarray(points, dtype=np.float64)[:, :, None, None, :]  # (N, M, 1, 1, 2)
    return _crossing_parity(points[..., 0], points[..., 1], a, b, valid)


def bounding_discs(vertices: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, P, 2) and radii (N, P) of discs containing each polygon; radius -1 for absent polygons."""
    valid = np.arange(vertices.shape[2]) < counts[..., None]
    centre = (vertices * valid[..., None]).sum(2) / np.maximum(counts, 1)[..., None]
    dist = np.linalg.norm(vertices - centre[..., None, :], axis=-1)
    radius = np.where(valid, dist, 0.0).max(axis=2) * (1 + 1e-9) + 1e-12
    return centre, np.where(counts > 0, radius, -1.0)


def segments_near_points(p1: np.ndarray, p2: np.ndarray, c: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Whether points c lie within ``radius`` of closed segments p1p2 (..., 2); shapes broadcast."""
    dx, dy = p2[..., 0] - p1[..., 0], p2[..., 1] - p1[..., 1]
    inv_len2 = 1.0 / np.maximum(dx * dx + dy * dy, 1e-300)
    wx, wy = c[..., 0] - p1[..., 0], c[..., 1] - p1[..., 1]
    t = np.clip((wx * dx + wy * dy) * inv_len2, 0.0, 1.0)
    ex, ey = wx - t * dx, wy - t * dy
    return ex * ex + ey * ey <= radius * np.abs(radius)


def cspace_occupancy(vertices: np.ndarray, counts: np.ndarray, bins: int, chunk_pairs: int = 2_000_000) -> np.ndarray:
    """(N, n, n) uint8 C-space of N scenes: 1 where the arm at (theta1 bin, theta2 bin) hits an obstacle.

    Exact: a link collides with a polygon when it meets one of its edges (closed segments) or its far end lies
    inside it (a link crossing no edge is wholly inside or wholly outside). Only the
    (link, polygon) pairs whose bounding disc the link reaches are tested edge by edge. Vectorised over all
    configurations, polygons and scenes, in chunks of about ``chunk_pairs`` (link, polygon) pairs.
    """
    vertices, counts = check_obstacles(vertices, counts)
    if not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    n, n_scenes, n_poly = int(bins), counts.shape[0], counts.shape[1]
    theta = joint_angles(n)
    elbow1, _ = arm_points(theta, 0.0)
    elbow, hand = arm_points(theta[:, None], theta[None, :])
    # n first links (base -> elbow), then n * n second links (elbow -> hand), row-major over (theta1, theta2)
    near = np.concatenate([np.broadcast_to(BASE, (n, 2)), elbow.reshape(-1, 2)])
    far = np.concatenate([elbow1, hand.reshape(-1, 2)])
    a, b, valid = polygon_edges(vertices, counts)
    centre, radius = bounding_discs(vertices, counts)
    out = np.zeros((n_scenes, n, n), dtype=np.uint8)
    step = max(1, chunk_pairs // max(len(near) * n_poly, 1))
    for lo in range(0, n_scenes, step):
        hi = min(lo + step, n_scenes)
        close = segments_near_points(near[None, :, None], far[None, :, None], centre[lo:hi, None], radius[lo:hi, None])
        scene, link, poly = np.nonzero(close)  # (link, polygon) pairs worth an exact test
        scene += lo
        ea, eb, ev = a[scene, poly], b[scene, poly], valid[scene, poly]  # (K, V, ...)
        p1, p2 = near[link][:, None], far[link][:, None]  # (K, 1, 2)
        crosses = (segments_intersect(p1, p2, ea, eb) & ev).any(-1)
        inside = _crossing_parity(p2[..., 0], p2[..., 1], ea, eb, ev)
        hits = np.zeros((hi - lo, len(near)), dtype=bool)
        hits[scene[crosses | inside] - lo, link[crosses | inside]] = True
        out[lo:hi] = hits[:, :n, None] | hits[:, n:].reshape(-1, n, n)
    return out


def pixel_centres(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Workspace x of each image column and y of each image row (row 0 at the top, y = 10)."""
    coords = (np.arange(size) + 0.5) * WORKSPACE_EXTENT / size
    return coords, WORKSPACE_EXTENT - coords


def rasterise_workspace(
    vertices: np.ndarray, counts: np.ndarray, size: int = IMAGE_SIZE, chunk: int = 64
) -> np.ndarray:
    """(N, size, size) uint8 images: 1 where a pixel centre lies inside an obstacle (crossing-number rule).

    Scanline form of the point-in-polygon test: a pixel is inside a polygon when an odd number of the polygon's
    edge crossings of its row lie east of its centre. Each row meets a closed polygon an even number of times,
    so that parity equals the parity of the crossings west of or at the pixel: a running sum along the row.
    """
    vertices, counts = check_obstacles(vertices, counts)
    if len(counts) > chunk:
        parts = [
            rasterise_workspace(vertices[i : i + chunk], counts[i : i + chunk], size)
            for i in range(0, len(counts), chunk)
        ]
        return np.concatenate(parts)
    n, p = counts.shape
    _, ys = pixel_centres(size)
    a, b, valid = polygon_edges(vertices, counts)
    ax, ay, bx, by = (t[:, None] for t in (a[..., 0], a[..., 1], b[..., 0], b[..., 1]))  # (N, 1, P, V)
    y = ys[None, :, None, None]
    spans = ((ay > y) != (by > y)) & valid[:, None]  # (N, rows, P, V)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = ax + (y - ay) * (bx - ax) / (by - ay)
    # columns whose centre lies strictly west of the crossing: c < x_cross / dx - 0.5
    west = np.clip(np.ceil(np.where(spans, x_cross, 0.0) * size / WORKSPACE_EXTENT - 0.5), 0, size).astype(np.int64)
    cell = np.arange(n * size * p).reshape(n, size, p, 1) * (size + 1) + west
    hist = np.bincount(cell[spans], minlength=n * size * p * (size + 1)).astype(np.uint8)
    west_or_at = hist.reshape(n, size, p, size + 1)[..., :size].cumsum(axis=-1, dtype=np.uint8)
    return (west_or_at & 1).any(axis=2).astype(np.uint8)


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
    """The arm task seen from the workspace: a (96, 96) obstacle image plus goal and current joint bins.

    The true C-space is not observed; it stays available as a label in ``info["cspace"]`` and in datasets
    (``occupancy``), for training a mapper from workspace images to C-spaces.
    """

    def make_observation_space(self) -> spaces.Dict:
        n = self.shape[0]
        return spaces.Dict(
            {
                "workspace": spaces.Box(0, 1, (IMAGE_SIZE, IMAGE_SIZE), np.uint8),
                "goal": spaces.Box(0, n - 1, (2,), np.int64),
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
            "goal": np.array(self.task.goal, dtype=np.int64),
            "position": self.position.copy(),
        }

    def info(self) -> dict:
        return {**super().info(), "cspace": self.task.occupancy.copy()}
