"""First-person panoramas of grid mazes rendered in 3D with MiniWorld (the scene itself: `idp_envs.maze_scene`).

Every free cell is one square MiniWorld room (no gap between rooms, full-width openings between adjacent free
cells, textured walls where a free cell meets an obstacle or the map's edge); a green box marks the goal. From each
free cell's centre four 32x32 views are taken facing N, W, S and E (the action order), each with a 90 degree
field of view so that together they cover the full circle; obstacle cells get black views.

The scene is MiniWorld's (its room quads, texture mapping, textures, wall height, lighting and box), but its quads
are built in numpy for the whole maze at once (`maze_geometry`) instead of by MiniWorld's per-room Python, and drawn
as three array draws: the same pictures (within one intensity level but for a few edge pixels) at twice the speed.
MiniWorld and pyglet are imported on first use only, with pyglet's headless (EGL) option set first, so importing
`idp_envs` never needs a display. A dataset's views (10k 15x15 mazes: ~9M views, 28 GB uncompressed) live in a
compressed store beside it, rendered by worker processes and read lazily: `idp_envs.view_store`.
"""

from __future__ import annotations

import ctypes
import os
from types import SimpleNamespace

import numpy as np

from idp_envs.maze_scene import CELL_METRES, DIRECTIONS, direction_angles, facing, look_matrices, maze_geometry

VIEW_SIZE = 32
FIELD_OF_VIEW = 90.0
CAMERA_HEIGHT = 1.5
WALL_TEXTURE, FLOOR_TEXTURE, CEILING_TEXTURE = "brick_wall", "floor_tiles_bw", "ceiling_tile_noborder"
GOAL_COLOR, GOAL_SIZE = "green", 0.8  # a MiniWorld box, in metres
TILES = 16  # views rendered side by side into one frame buffer, TILES x TILES per read-back


def _import_gl() -> SimpleNamespace:
    """pyglet's GL and MiniWorld's scene assets and constants, imported headless (EGL): no display or window."""
    import pyglet

    pyglet.options["headless"] = True
    pyglet.options["debug_gl"] = False  # no glGetError after every call: a third of the rendering time
    from miniworld.entity import COLORS
    from miniworld.miniworld import DEFAULT_WALL_HEIGHT, TEX_DENSITY
    from miniworld.opengl import drawBox
    from miniworld.params import DEFAULT_PARAMS
    from miniworld.utils import get_file_path
    from pyglet import gl

    params = DEFAULT_PARAMS.no_random()
    return SimpleNamespace(
        pyglet=pyglet,
        gl=gl,
        draw_box=drawBox,
        texture_path=lambda name: get_file_path("textures", f"{name}_1", "png"),
        wall_height=DEFAULT_WALL_HEIGHT,
        texels_per_metre=TEX_DENSITY,
        goal_rgb=np.clip(COLORS[GOAL_COLOR] + params.sample(None, "obj_color_bias"), 0, 1),
        light_color=params.sample(None, "light_color"),
        light_ambient=params.sample(None, "light_ambient"),
    )


def _upload_texture(gl, path: str) -> tuple[int, int, int]:
    """(GL id, width, height) of a mipmapped, trilinear-filtered texture from a PNG, as MiniWorld loads its own but
    decoded with Pillow: pyglet's pure-Python pixel-format conversion takes seconds per texture."""
    from PIL import Image

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
    return tex_id.value, w, h


class _TiledFrameBuffer:
    """An RGBA8 frame buffer with 4x multisampling (MiniWorld renders into RGBA32F: 8 bits hold what is read back),
    resolved into a single-sample one and read back as RGB."""

    SAMPLES = 4

    def __init__(self, gl, side: int):
        self.gl, self.side = gl, side
        self.rgb = np.zeros((side, side, 3), dtype=np.uint8)
        self.multi = self._framebuffer(self.SAMPLES)
        self.single = self._framebuffer(1)

    def _framebuffer(self, samples: int) -> int:
        gl, side = self.gl, self.side
        fbo = gl.GLuint(0)
        gl.glGenFramebuffers(1, ctypes.byref(fbo))
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo)
        for attachment, fmt in (
            (gl.GL_COLOR_ATTACHMENT0, gl.GL_RGBA8),
            (gl.GL_DEPTH_ATTACHMENT, gl.GL_DEPTH_COMPONENT16),
        ):
            buffer = gl.GLuint(0)
            gl.glGenRenderbuffers(1, ctypes.byref(buffer))
            gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, buffer)
            gl.glRenderbufferStorageMultisample(gl.GL_RENDERBUFFER, samples if samples > 1 else 0, fmt, side, side)
            gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, attachment, gl.GL_RENDERBUFFER, buffer)
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            raise RuntimeError(f"OpenGL frame buffer of {side}x{side} with {samples} samples incomplete: {status:#x}")
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        return fbo.value

    def bind(self) -> None:
        self.gl.glEnable(self.gl.GL_MULTISAMPLE)
        self.gl.glBindFramebuffer(self.gl.GL_FRAMEBUFFER, self.multi)

    def read(self) -> np.ndarray:
        """(side, side, 3) uint8 in GL's row order, bottom row first; the buffer is reused by the next read."""
        gl, side = self.gl, self.side
        gl.glBindFramebuffer(gl.GL_READ_FRAMEBUFFER, self.multi)
        gl.glBindFramebuffer(gl.GL_DRAW_FRAMEBUFFER, self.single)
        gl.glBlitFramebuffer(0, 0, side, side, 0, 0, side, side, gl.GL_COLOR_BUFFER_BIT, gl.GL_LINEAR)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.single)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        pixels = self.rgb.ctypes.data_as(ctypes.POINTER(gl.GLubyte))
        gl.glReadPixels(0, 0, side, side, gl.GL_RGB, gl.GL_UNSIGNED_BYTE, pixels)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        return self.rgb


class PanoramaRenderer:
    """Renders the four views of every free cell of a maze; one OpenGL context, reused for every map.

    Per map the scene is built in numpy (`maze_geometry`) and compiled into display lists; per view only the
    viewport, a precomputed camera matrix and the list change, TILES x TILES views to a frame-buffer read-back."""

    SCENE = 1  # the first of the display lists holding the current map's scene, one per view direction

    def __init__(self, view_size: int = VIEW_SIZE, tiles: int = TILES):
        if view_size < 8:
            raise ValueError(f"view_size must be at least 8 pixels, got {view_size}")
        self.view_size, self.tiles = int(view_size), int(tiles)
        self._gl = _import_gl()
        gl = self._gl.gl
        self._context = self._gl.pyglet.window.Window(width=1, height=1, visible=False)  # headless: an EGL context
        gl.glEnable(gl.GL_DEPTH_TEST)
        gl.glEnable(gl.GL_CULL_FACE)
        self._textures = {}
        for part, name in (("floor", FLOOR_TEXTURE), ("ceil", CEILING_TEXTURE), ("wall", WALL_TEXTURE)):
            self._textures[part] = _upload_texture(gl, self._gl.texture_path(name))
        self._frame = _TiledFrameBuffer(gl, self.tiles * self.view_size)

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
        self._context.switch_to()
        self._compile_scene(occ, goal)
        cells = np.repeat(free, DIRECTIONS, axis=0)
        yaws = np.tile(direction_angles(), len(free))
        eyes = np.stack([cells[:, 1] + 0.5, np.zeros(len(cells)), cells[:, 0] + 0.5], axis=-1) * CELL_METRES
        eyes[:, 1] = CAMERA_HEIGHT
        far = 2 * CELL_METRES * max(occ.shape)  # beyond the longest line of sight in the maze
        directions = np.tile(np.arange(DIRECTIONS), len(free))
        rendered = self._render_views(look_matrices(eyes, yaws), directions, far)
        views[cells[:, 0], cells[:, 1], directions] = rendered
        return views

    def _compile_scene(self, occ: np.ndarray, goal: tuple[int, int] | None) -> None:
        """Display lists `SCENE` + d, one per view direction d: the maze's lights, textured walls, floors and
        ceilings (three array draws) and goal box, as MiniWorld's scene of one room per free cell draws them.

        Walls go first and, in direction d's list, nearest first along d: the software rasteriser then rejects
        most hidden fragments by depth before texturing them (the same picture, 1.5x faster on a 15x15 maze)."""
        g = self._gl
        gl = g.gl
        h, w = occ.shape
        light_pos = (w * CELL_METRES / 2, 2.5, h * CELL_METRES / 2, 1.0)  # over the centre: rotations keep the lighting
        geometry = maze_geometry(occ, g.wall_height)
        wall_centres = geometry["wall"][0].reshape(-1, 4, 3).mean(axis=1)
        for d, forward in enumerate(facing(direction_angles())):
            near_first = np.argsort(wall_centres @ forward, kind="stable")
            quads = (4 * near_first[:, None] + np.arange(4)).ravel()
            gl.glDeleteLists(self.SCENE + d, 1)
            gl.glNewList(self.SCENE + d, gl.GL_COMPILE)
            gl.glLightfv(gl.GL_LIGHT0, gl.GL_POSITION, (gl.GLfloat * 4)(*light_pos))
            gl.glLightfv(gl.GL_LIGHT0, gl.GL_AMBIENT, (gl.GLfloat * 4)(*g.light_ambient, 1.0))
            gl.glLightfv(gl.GL_LIGHT0, gl.GL_DIFFUSE, (gl.GLfloat * 4)(*g.light_color, 1.0))
            gl.glEnable(gl.GL_LIGHTING)
            gl.glEnable(gl.GL_LIGHT0)
            gl.glShadeModel(gl.GL_SMOOTH)
            gl.glEnable(gl.GL_COLOR_MATERIAL)
            gl.glColorMaterial(gl.GL_FRONT_AND_BACK, gl.GL_AMBIENT_AND_DIFFUSE)
            gl.glEnable(gl.GL_TEXTURE_2D)
            gl.glColor3f(1, 1, 1)
            for part, arrays in geometry.items():
                self._draw_quads(self._textures[part], *(a[quads] if part == "wall" else a for a in arrays))
            if goal is not None:
                gl.glDisable(gl.GL_TEXTURE_2D)
                gl.glColor3f(*g.goal_rgb)
                gl.glPushMatrix()
                gl.glTranslatef((goal[1] + 0.5) * CELL_METRES, 0.0, (goal[0] + 0.5) * CELL_METRES)
                half = GOAL_SIZE / 2
                g.draw_box(x_min=-half, x_max=half, y_min=0, y_max=GOAL_SIZE, z_min=-half, z_max=half)
                gl.glPopMatrix()
            gl.glEndList()

    def _draw_quads(self, texture: tuple[int, int, int], vertices, normals, texcoords_m) -> None:
        """One textured array draw; in a display list being compiled, GL copies the arrays."""
        gl = self._gl.gl
        tex_id, tex_w, tex_h = texture
        texels = self._gl.texels_per_metre
        texcoords = np.ascontiguousarray(texcoords_m * np.array([texels / tex_w, texels / tex_h], dtype=np.float32))
        vertices, normals = np.ascontiguousarray(vertices), np.ascontiguousarray(normals)
        gl.glBindTexture(gl.GL_TEXTURE_2D, tex_id)
        arrays = (gl.GL_VERTEX_ARRAY, gl.GL_NORMAL_ARRAY, gl.GL_TEXTURE_COORD_ARRAY)
        for state in arrays:
            gl.glEnableClientState(state)
        gl.glVertexPointer(3, gl.GL_FLOAT, 0, vertices.ctypes.data)
        gl.glNormalPointer(gl.GL_FLOAT, 0, normals.ctypes.data)
        gl.glTexCoordPointer(2, gl.GL_FLOAT, 0, texcoords.ctypes.data)
        gl.glDrawArrays(gl.GL_QUADS, 0, len(vertices))
        for state in arrays:
            gl.glDisableClientState(state)

    def _render_views(self, matrices: np.ndarray, directions: np.ndarray, far: float) -> np.ndarray:
        """(n, S, S, 3) uint8: one view per model-view matrix and direction index (which scene list draws it),
        TILES x TILES per frame-buffer read-back."""
        gl, fb, t, s = self._gl.gl, self._frame, self.tiles, self.view_size
        out = np.empty((len(matrices), s, s, 3), dtype=np.uint8)
        for start in range(0, len(matrices), t * t):
            stop = min(start + t * t, len(matrices))
            fb.bind()
            gl.glClearColor(0.0, 0.0, 0.0, 1.0)
            gl.glClearDepth(1.0)
            gl.glClear(gl.GL_COLOR_BUFFER_BIT | gl.GL_DEPTH_BUFFER_BIT)
            gl.glMatrixMode(gl.GL_PROJECTION)
            gl.glLoadIdentity()
            gl.gluPerspective(FIELD_OF_VIEW, 1.0, 0.04, far)
            gl.glMatrixMode(gl.GL_MODELVIEW)
            for k in range(stop - start):
                gl.glViewport((k % t) * s, (k // t) * s, s, s)  # tile k: column k % t, row k // t from the bottom
                gl.glLoadMatrixf(matrices[start + k].ctypes.data_as(ctypes.POINTER(gl.GLfloat)))
                gl.glCallList(self.SCENE + int(directions[start + k]))
            tiles = fb.read().reshape(t, s, t, s, 3).transpose(0, 2, 1, 3, 4).reshape(t * t, s, s, 3)
            out[start:stop] = tiles[: stop - start, ::-1]  # each view's rows top first
        return out

    def close(self) -> None:
        self._context.close()


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
