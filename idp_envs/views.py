"""First-person panoramas of grid mazes rendered in 3D with MiniWorld, and an on-disk store of them for datasets.

Every free cell becomes one square MiniWorld room (no gap between rooms, full-width openings between adjacent free
cells, textured walls where a free cell meets an obstacle or the map's edge); a green box marks the goal. From each
free cell's centre four 32x32 views are taken facing N, W, S and E (the action order), each with a 90 degree
field of view so that together they cover the full circle; obstacle cells get black views.

MiniWorld and pyglet are imported on first use only, with pyglet's headless (EGL) option set first, so importing
`idp_envs` never needs a display. A dataset's views (10k 15x15 mazes: ~9M views, 28 GB uncompressed) live in a
compressed store beside it, rendered by worker processes and read lazily: `idp_envs.view_store`.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np

VIEW_SIZE = 32
DIRECTIONS = 4
FIELD_OF_VIEW = 90.0
CELL_METRES = 2.0
CAMERA_HEIGHT = 1.5
WALL_TEXTURE, FLOOR_TEXTURE, CEILING_TEXTURE = "brick_wall", "floor_tiles_bw", "ceiling_tile_noborder"
GOAL_COLOR = "green"
TILES = 16  # views rendered side by side into one frame buffer, TILES x TILES per read-back


def direction_angles() -> np.ndarray:
    """MiniWorld yaw (radians) facing N, W, S, E: yaw 0 looks along +x (east) and grid row r lies at z = r."""
    return np.pi / 2 * (1 + np.arange(DIRECTIONS))


def _import_miniworld() -> SimpleNamespace:
    """MiniWorld's pieces, imported headless (EGL) so that no display or window is needed."""
    import pyglet

    pyglet.options["headless"] = True
    pyglet.options["debug_gl"] = False  # no glGetError after every call: a third of the rendering time
    from miniworld import opengl
    from miniworld.entity import Box
    from miniworld.miniworld import MiniWorldEnv
    from miniworld.params import DEFAULT_PARAMS
    from pyglet import gl

    return SimpleNamespace(gl=gl, opengl=opengl, Box=Box, MiniWorldEnv=MiniWorldEnv, DEFAULT_PARAMS=DEFAULT_PARAMS)


def _upload_texture(mw: SimpleNamespace, path: str):
    """A GL texture from a PNG, like MiniWorld's `Texture.load` but decoded with Pillow: pyglet's pure-Python
    pixel-format conversion takes seconds per texture."""
    from PIL import Image

    gl = mw.gl
    rgba = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGBA"))[::-1])  # GL rows run bottom-up
    h, w = rgba.shape[:2]
    tex_id = gl.GLuint(0)
    gl.glGenTextures(1, tex_id)
    gl.glBindTexture(gl.GL_TEXTURE_2D, tex_id)
    gl.glTexImage2D(
        gl.GL_TEXTURE_2D,
        0,
        gl.GL_RGB,
        w,
        h,
        0,
        gl.GL_RGBA,
        gl.GL_UNSIGNED_BYTE,
        rgba.ctypes.data_as(ctypes.POINTER(gl.GLubyte)),
    )
    gl.glGenerateMipmap(gl.GL_TEXTURE_2D)
    gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MAG_FILTER, gl.GL_LINEAR)
    gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MIN_FILTER, gl.GL_LINEAR_MIPMAP_LINEAR)
    gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
    return SimpleNamespace(target=gl.GL_TEXTURE_2D, id=tex_id.value, width=w, height=h)


def _preload_textures(mw: SimpleNamespace) -> None:
    from miniworld.utils import get_file_path

    for name in (WALL_TEXTURE, FLOOR_TEXTURE, CEILING_TEXTURE):
        path = get_file_path("textures", f"{name}_1", "png")
        if path not in mw.opengl.Texture.tex_cache:
            mw.opengl.Texture.tex_cache[path] = mw.opengl.Texture(_upload_texture(mw, path), name)
        mw.opengl.Texture.tex_paths[name] = [path]  # spares `Texture.get` a file search per room


def _maze_world_class(mw: SimpleNamespace):
    class GoalBox(mw.Box):
        """The goal marker; static, so that it is compiled into the scene's display list with the rooms."""

        @property
        def is_static(self) -> bool:
            return True

    class MazeWorld(mw.MiniWorldEnv):
        """A MiniWorld scene of one occupancy grid: a room per free cell, a box on the goal."""

        def __init__(self, view_size: int):
            self.layout = np.zeros((2, 2), dtype=np.uint8)
            self.goal: tuple[int, int] | None = None
            super().__init__(
                obs_width=view_size,
                obs_height=view_size,
                window_width=view_size,
                window_height=view_size,
                params=mw.DEFAULT_PARAMS.no_random(),
            )

        def reset(self, *, seed=None, options=None):
            _preload_textures(mw)  # MiniWorldEnv.__init__ resets once its GL context exists: load ours first
            return super().reset(seed=seed, options=options)

        def _gen_world(self):
            s = CELL_METRES
            free = np.argwhere(self.layout == 0)
            rooms = {}
            for r, c in free.tolist():
                rooms[r, c] = self.add_rect_room(
                    c * s,
                    (c + 1) * s,
                    r * s,
                    (r + 1) * s,
                    wall_tex=WALL_TEXTURE,
                    floor_tex=FLOOR_TEXTURE,
                    ceil_tex=CEILING_TEXTURE,
                )
            # add_rect_room's edges are 0 = east (x = max), 1 = north (z = min), 2 = west, 3 = south
            for (r, c), room in rooms.items():
                if (r, c + 1) in rooms:
                    room.add_portal(0, start_pos=0, end_pos=s)
                    rooms[r, c + 1].add_portal(2, start_pos=0, end_pos=s)
                if (r + 1, c) in rooms:
                    room.add_portal(3, start_pos=0, end_pos=s)
                    rooms[r + 1, c].add_portal(1, start_pos=0, end_pos=s)
            h, w = self.layout.shape
            self.params.set("light_pos", [w * s / 2, 2.5, h * s / 2])  # over the centre: rotations keep the lighting
            r0, c0 = free[0]
            self.place_agent(pos=np.array([(c0 + 0.5) * s, 0.0, (r0 + 0.5) * s]), dir=0.0)
            if self.goal is not None:
                gr, gc = self.goal
                self.place_entity(
                    GoalBox(GOAL_COLOR, size=0.8), pos=np.array([(gc + 0.5) * s, 0.0, (gr + 0.5) * s]), dir=0.0
                )

        def _render_static(self):
            """MiniWorld's scene display list, with the rooms' floors, ceilings and walls drawn as three batches:
            a maze has hundreds of rooms and software GL pays per draw, so this renders several times faster."""
            gl = mw.gl
            gl.glDeleteLists(1, 1)
            gl.glNewList(1, gl.GL_COMPILE)
            gl.glLightfv(gl.GL_LIGHT0, gl.GL_POSITION, (gl.GLfloat * 4)(*self.light_pos, 1))
            gl.glLightfv(gl.GL_LIGHT0, gl.GL_AMBIENT, (gl.GLfloat * 4)(*self.light_ambient))
            gl.glLightfv(gl.GL_LIGHT0, gl.GL_DIFFUSE, (gl.GLfloat * 4)(*self.light_color))
            gl.glEnable(gl.GL_LIGHTING)
            gl.glEnable(gl.GL_LIGHT0)
            gl.glShadeModel(gl.GL_SMOOTH)
            gl.glEnable(gl.GL_COLOR_MATERIAL)
            gl.glColorMaterial(gl.GL_FRONT_AND_BACK, gl.GL_AMBIENT_AND_DIFFUSE)
            gl.glEnable(gl.GL_TEXTURE_2D)
            gl.glColor3f(1, 1, 1)
            for part in ("floor", "ceil", "wall"):
                getattr(self.rooms[0], f"{part}_tex").bind()
                gl.glBegin(gl.GL_QUADS)
                for room in self.rooms:
                    verts, texcs = getattr(room, f"{part}_verts"), getattr(room, f"{part}_texcs")
                    normals = (
                        room.wall_norms if part == "wall" else np.tile([0, 1 if part == "floor" else -1, 0], (4, 1))
                    )
                    for v, t, n in zip(verts, texcs, normals, strict=True):
                        gl.glNormal3f(*n)
                        gl.glTexCoord2f(*t)
                        gl.glVertex3f(*v)
                gl.glEnd()
            for entity in self.entities:
                if entity.is_static:
                    entity.render()
            gl.glEndList()

    return MazeWorld


class PanoramaRenderer:
    """Renders the four views of every free cell of a maze; one OpenGL context, reused for every map."""

    def __init__(self, view_size: int = VIEW_SIZE, tiles: int = TILES):
        if view_size < 8:
            raise ValueError(f"view_size must be at least 8 pixels, got {view_size}")
        self.view_size, self.tiles = int(view_size), int(tiles)
        self._mw = _import_miniworld()
        with contextlib.redirect_stdout(io.StringIO()):  # MiniWorld prints its multisampling fallbacks
            self._world = _maze_world_class(self._mw)(self.view_size)
            self._tiled = self._mw.opengl.FrameBuffer(self.tiles * self.view_size, self.tiles * self.view_size, 4)

    def render(self, occupancy: np.ndarray, goal: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W, 4, S, S, 3) uint8 views of one maze, indexed [row, col, direction N/W/S/E]."""
        occ = np.asarray(occupancy)
        if occ.ndim != 2 or not np.isin(occ, (0, 1)).all():
            raise ValueError(f"occupancy must be an (H, W) grid of 0 (free) and 1 (obstacle), got shape {occ.shape}")
        free = np.argwhere(occ == 0)
        s = self.view_size
        views = np.zeros((*occ.shape, DIRECTIONS, s, s, 3), dtype=np.uint8)
        if not len(free):
            return views
        if goal is not None:
            goal = (int(goal[0]), int(goal[1]))
            if not (0 <= goal[0] < occ.shape[0] and 0 <= goal[1] < occ.shape[1]) or occ[goal]:
                raise ValueError(f"goal {goal} must be a free cell of the {occ.shape[0]}x{occ.shape[1]} map")
        world = self._world
        world.layout, world.goal = occ.astype(np.uint8), goal
        world.reset()
        jobs = np.repeat(free, DIRECTIONS, axis=0)
        yaws = np.tile(direction_angles(), len(free))
        far = 2 * CELL_METRES * max(occ.shape)  # beyond the longest line of sight in the maze
        rendered = np.concatenate(list(self._render_tiles(jobs, yaws, far)))
        views[jobs[:, 0], jobs[:, 1], np.tile(np.arange(DIRECTIONS), len(free))] = rendered
        return views

    def _render_tiles(self, cells: np.ndarray, yaws: np.ndarray, far: float) -> Iterator[np.ndarray]:
        """Views from the centres of ``cells`` facing ``yaws``, TILES x TILES per frame-buffer read-back."""
        gl, world, fb, t, s = self._mw.gl, self._world, self._tiled, self.tiles, self.view_size
        movers = [e for e in world.entities if not e.is_static and e is not world.agent]
        eye_xz = (cells[:, ::-1] + 0.5) * CELL_METRES
        for start in range(0, len(cells), t * t):
            stop = min(start + t * t, len(cells))
            world.shadow_window.switch_to()
            fb.bind()
            gl.glClearColor(0.0, 0.0, 0.0, 1.0)
            gl.glClearDepth(1.0)
            gl.glClear(gl.GL_COLOR_BUFFER_BIT | gl.GL_DEPTH_BUFFER_BIT)
            gl.glMatrixMode(gl.GL_PROJECTION)
            gl.glLoadIdentity()
            gl.gluPerspective(FIELD_OF_VIEW, 1.0, 0.04, far)
            for k in range(stop - start):
                (x, z), yaw = eye_xz[start + k], yaws[start + k]
                gl.glViewport((k % t) * s, (k // t) * s, s, s)
                gl.glMatrixMode(gl.GL_MODELVIEW)
                gl.glLoadIdentity()
                gl.gluLookAt(x, CAMERA_HEIGHT, z, x + math.cos(yaw), CAMERA_HEIGHT, z - math.sin(yaw), 0.0, 1.0, 0.0)
                gl.glCallList(1)
                for entity in movers:
                    entity.render()
            frame = fb.resolve()[::-1]  # back to GL's bottom-up rows, so tile k sits at row k // t
            tiles = frame.reshape(t, s, t, s, 3).transpose(0, 2, 1, 3, 4).reshape(t * t, s, s, 3)
            yield tiles[: stop - start, ::-1]

    def close(self) -> None:
        self._world.close()


_RENDERERS: dict[tuple[int, int], PanoramaRenderer] = {}


def shared_renderer(view_size: int = VIEW_SIZE) -> PanoramaRenderer:
    """This process's renderer for ``view_size`` (an OpenGL context is costly: one per process is enough; a
    forked child makes its own, since its parent's context does not survive the fork)."""
    key = (os.getpid(), view_size)
    if key not in _RENDERERS:
        _RENDERERS[key] = PanoramaRenderer(view_size)
    return _RENDERERS[key]


def render_panoramas(
    occupancy: np.ndarray, goal: tuple[int, int] | None = None, view_size: int = VIEW_SIZE
) -> np.ndarray:
    """(H, W, 4, S, S, 3) uint8: the N, W, S, E views from every free cell's centre; black for obstacle cells."""
    return shared_renderer(view_size).render(occupancy, goal)


def env_renders_views(env_id: str) -> bool:
    """Whether a registered environment observes rendered views (its datasets then need a view store)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    entry = gym.spec(env_id).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    return bool(getattr(creator, "RENDERS_VIEWS", False))
