"""The 3D scene of a grid maze as MiniWorld builds it, in numpy for the whole maze at once: the quads of its rooms
(one square room per free cell, full-width openings between free neighbours, walls where a free cell meets an
obstacle or the map's edge) and the cameras that look from each free cell's centre in the four action directions.
No OpenGL here: `idp_envs.views` draws it."""

from __future__ import annotations

import numpy as np

DIRECTIONS = 4
CELL_METRES = 2.0


def direction_angles() -> np.ndarray:
    """MiniWorld yaw (radians) facing N, W, S, E: yaw 0 looks along +x (east) and grid row r lies at z = r."""
    return np.pi / 2 * (1 + np.arange(DIRECTIONS))


# A free cell's four edges in MiniWorld's room order (east, north, west, south), each as the neighbouring cell's
# (row, col) offset and the edge's two outline corners, counter-clockwise seen from above; (1, 1) is the cell's
# (max x, max z) corner, x running with columns and z with rows.
EDGE_NEIGHBOURS = np.array([[0, 1], [-1, 0], [0, -1], [1, 0]])
OUTLINE = np.array([[1, 1], [1, 0], [0, 0], [0, 1]])  # (x, z) corners in cells: east edge from OUTLINE[0] to [1]


def maze_geometry(occupancy: np.ndarray, wall_height: float) -> dict[str, tuple[np.ndarray, ...]]:
    """The quads MiniWorld builds for a maze of square rooms, one per free cell with full-width openings between
    free neighbours: ``{"wall" | "floor" | "ceil": (vertices (4n, 3), normals (4n, 3), texture coordinates (4n, 2))}``
    in metres, float32, walls first. Walls stand where a free cell meets an obstacle or the map's edge, facing into
    the cell; textures are mapped as MiniWorld maps them: floors and ceilings by (x, z), each wall quad from (0, 0)
    to (its width, its height)."""
    occ = np.asarray(occupancy)
    free = np.argwhere(occ == 0)
    outline = (free[:, None, ::-1] + OUTLINE) * CELL_METRES  # (n, 4, [x, z])

    def lift(xz: np.ndarray, y: float | np.ndarray) -> np.ndarray:
        y = np.broadcast_to(y, xz.shape[:-1])
        return np.stack([xz[..., 0], y, xz[..., 1]], axis=-1).reshape(-1, 3).astype(np.float32)

    def level(vertices: np.ndarray, normal: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
        normals = np.tile(np.asarray(normal, dtype=np.float32), (len(vertices), 1))
        return vertices, normals, np.ascontiguousarray(vertices[:, [0, 2]])

    neighbour = free[:, None] + EDGE_NEIGHBOURS  # (n, 4, 2)
    inside = ((neighbour >= 0) & (neighbour < occ.shape)).all(axis=-1)
    walled = ~inside
    walled[inside] = occ[neighbour[inside][:, 0], neighbour[inside][:, 1]] != 0
    cell, edge = np.nonzero(walled)
    p0, p1 = outline[cell, edge], outline[cell, (edge + 1) % 4]  # (m, [x, z])
    wall = lift(np.stack([p0, p0, p1, p1], axis=1), np.array([0.0, wall_height, wall_height, 0.0]))
    d = (p1 - p0) / CELL_METRES
    inward = np.stack([d[:, 1], np.zeros(len(d)), -d[:, 0]], axis=-1).astype(np.float32)  # -(edge x up)
    wall_uv = np.array([[0.0, 0.0], [0.0, wall_height], [CELL_METRES, wall_height], [CELL_METRES, 0.0]])
    return {
        "wall": (wall, np.repeat(inward, 4, axis=0), np.tile(wall_uv, (len(cell), 1)).astype(np.float32)),
        "floor": level(lift(outline, 0.0), (0, 1, 0)),
        "ceil": level(lift(outline[:, ::-1], wall_height), (0, -1, 0)),  # reversed: the ceiling faces down
    }


def facing(yaws: np.ndarray) -> np.ndarray:
    """(..., 3) unit vectors a level camera at MiniWorld yaw ``yaws`` looks along: (cos yaw, 0, -sin yaw)."""
    yaws = np.asarray(yaws, dtype=np.float64)
    return np.stack([np.cos(yaws), np.zeros_like(yaws), -np.sin(yaws)], axis=-1)


def look_matrices(eyes: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """(n, 16) float32 column-major model-view matrices of level cameras at ``eyes`` (n, 3) facing ``yaws``: what
    ``gluLookAt(eye, eye + (cos yaw, 0, -sin yaw), up = y)`` loads, computed for all views at once."""
    forward = facing(yaws)
    side = np.stack([np.sin(yaws), np.zeros_like(yaws), np.cos(yaws)], axis=-1)  # forward x up
    up = np.broadcast_to([0.0, 1.0, 0.0], forward.shape)
    rotation = np.stack([side, up, -forward], axis=1)  # rows
    m = np.zeros((len(eyes), 4, 4))
    m[:, :3, :3] = rotation
    m[:, :3, 3] = -np.einsum("nij,nj->ni", rotation, eyes)
    m[:, 3, 3] = 1.0
    return np.ascontiguousarray(m.transpose(0, 2, 1), dtype=np.float32).reshape(len(eyes), 16)
