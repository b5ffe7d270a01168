"""A planar two-link arm among polygon obstacles, as geometry: its links, collisions with polygons, its
configuration space (C-space) occupancy and the workspace image. Pure numpy; the environments, samplers and
drawing are in `idp_envs.envs.arm`, and the learned workspace mapper imports this module, not the env.

Geometry. The workspace is the square [0, 10] x [0, 10] with x to the east and y to the north; the arm's base
sits at its centre (5, 5). Both links are 2.1 long: the reach, 4.2, keeps the whole arm inside the workspace
(half-width 5) while the elbow circle (radius 2.1) sits midway, so obstacles anywhere in the disc of radius 4.2
can block the arm. Joint angles are counter-clockwise from east, on exact bins ``theta_k = 2 pi k / n``; the
second angle is relative to the first link. A configuration collides when either link intersects an obstacle
polygon or lies inside one, decided exactly by segment-edge intersection and point-in-polygon tests.

C-space grid. Row = first-joint bin, column = second-joint bin, both wrapping around ("torus"). Workspace images are
(96, 96) uint8, row 0 at y = 10 (the top), a pixel 1 when its centre lies inside an obstacle.
"""

from __future__ import annotations

import numpy as np

LINK_LENGTHS = (2.1, 2.1)
WORKSPACE_EXTENT = 10.0
BASE = np.array([5.0, 5.0])
IMAGE_SIZE = 96


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
