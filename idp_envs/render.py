"""Drawing grids, agents, paths, value and policy maps as numpy RGB frames; a pygame window for ``human`` mode."""

from __future__ import annotations

import functools
import os

import numpy as np

FREE = np.array([245, 245, 240], dtype=np.uint8)
WALL = np.array([40, 42, 54], dtype=np.uint8)
GOAL = np.array([46, 160, 67], dtype=np.uint8)
AGENT = np.array([214, 39, 40], dtype=np.uint8)
PATH = np.array([120, 170, 230], dtype=np.uint8)
ARROW = np.array([30, 30, 30], dtype=np.uint8)
MARK = np.array([230, 85, 13], dtype=np.uint8)  # outlines cells flagged by ``marks`` (e.g. a policy's mistakes)
# endpoints of a two-colour ramp (dark blue -> yellow) for value maps
VALUE_LOW = np.array([49, 54, 149], dtype=np.float32)
VALUE_HIGH = np.array([254, 224, 100], dtype=np.float32)


@functools.lru_cache(maxsize=8)
def font(size: int):
    """A PIL font of about ``size`` pixels for captions: Pillow's scalable default, or its small bitmap font where
    Pillow predates 10.1 or lacks FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def default_cell_pixels(shape: tuple[int, int], target: int = 480) -> int:
    """Pixels per cell so that the frame is about ``target`` pixels on its long side (4 to 32)."""
    return int(np.clip(target // max(shape), 4, 32))


def upscale(image: np.ndarray, px: int) -> np.ndarray:
    """Repeat each cell of an (H, W, ...) array into a px x px block."""
    return np.repeat(np.repeat(image, px, axis=0), px, axis=1)


def _disc(px: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:px, 0:px] + 0.5
    return (yy - px / 2) ** 2 + (xx - px / 2) ** 2 <= (radius * px) ** 2


def _outline(px: int) -> np.ndarray:
    """(px, px) bool: a cell's border, about an eighth of the cell thick."""
    edge = max(1, px // 8)
    stamp = np.ones((px, px), dtype=bool)
    stamp[edge:-edge, edge:-edge] = False
    return stamp


def _arrow_stamps(px: int) -> np.ndarray:
    """(4, px, px) bool: a line from the cell centre towards N, W, S, E (the action order)."""
    stamps = np.zeros((4, px, px), dtype=bool)
    c, half = px // 2, max(1, px // 16)
    tip = max(1, px // 8)
    stamps[0, tip : c + 1, c - half : c + half + 1] = True
    stamps[1, c - half : c + half + 1, tip : c + 1] = True
    stamps[2, c : px - tip, c - half : c + half + 1] = True
    stamps[3, c - half : c + half + 1, c : px - tip] = True
    return stamps


def value_ramp(t: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours of ``t`` in [0, 1] on the value ramp (0 = low, 1 = high): maps and their keys."""
    t = np.clip(np.asarray(t, dtype=np.float32), 0, 1)
    return (VALUE_LOW + t[..., None] * (VALUE_HIGH - VALUE_LOW)).astype(np.uint8)


def value_range(value: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The lowest and highest of ``value`` over the cells in ``mask`` (all cells if none): the ends of its ramp."""
    v = np.asarray(value, dtype=np.float32)
    shown = v[mask] if mask.any() else v.ravel()
    return float(np.nanmin(shown)), float(np.nanmax(shown))


def value_colors(value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours of ``value`` normalised over the cells in ``mask`` (`value_range`)."""
    v = np.asarray(value, dtype=np.float32)
    lo, hi = value_range(v, mask)
    return value_ramp((v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5))


def draw_grid(
    occupancy: np.ndarray,
    goal: tuple[int, int] | None = None,
    position: tuple[int, int] | None = None,
    path: np.ndarray | None = None,
    value: np.ndarray | None = None,
    policy: np.ndarray | None = None,
    marks: np.ndarray | None = None,
    cell_pixels: int | None = None,
) -> np.ndarray:
    """An (H*px, W*px, 3) uint8 frame: walls, an optional value map on free cells, the path so far, the goal,
    the agent, optional policy arrows (``policy`` as (H, W) actions or (4, H, W) scores, argmax taken) and
    optional ``marks`` ((H, W) bool: cells outlined, such as where a policy leaves the optimal actions).
    """
    occ = np.asarray(occupancy).astype(bool)
    h, w = occ.shape
    px = cell_pixels or default_cell_pixels((h, w))
    cells = np.where(occ[..., None], WALL, FREE)
    if value is not None:
        cells = np.where(occ[..., None], WALL, value_colors(value, ~occ))
    frame = upscale(cells, px)
    if path is not None and len(path):
        path = np.asarray(path, dtype=np.int64).reshape(-1, 2)
        visited = np.zeros((h, w), dtype=bool)
        visited[path[:, 0], path[:, 1]] = True
        frame[upscale(visited, px) & np.tile(_disc(px, 0.18), (h, w))] = PATH
    if policy is not None:
        policy = np.asarray(policy)
        actions = policy.argmax(axis=0) if policy.ndim == 3 else policy
        stamps = _arrow_stamps(px)[np.clip(actions, 0, 3)]  # (H, W, px, px)
        stamps &= (~occ & (actions >= 0))[..., None, None]
        frame[stamps.transpose(0, 2, 1, 3).reshape(h * px, w * px)] = ARROW
    if marks is not None:
        frame[upscale(np.asarray(marks, dtype=bool), px) & np.tile(_outline(px), (h, w))] = MARK
    for cell, color, radius in ((goal, GOAL, 0.42), (position, AGENT, 0.34)):
        if cell is not None:
            r, c = int(cell[0]), int(cell[1])
            block = frame[r * px : (r + 1) * px, c * px : (c + 1) * px]
            block[_disc(px, radius)] = color
    return frame


def wrap_margin(frame: np.ndarray, band: int, fade: float = 0.55) -> np.ndarray:
    """A torus's frame with a margin of ``band`` pixels on every side showing, faded towards white, what lies across
    the opposite edge: a path that leaves on the right is seen to come back on the left."""
    wrapped = np.pad(frame, ((band, band), (band, band), (0, 0)), mode="wrap")
    margin = np.ones(wrapped.shape[:2], dtype=bool)
    margin[band : band + frame.shape[0], band : band + frame.shape[1]] = False
    wrapped[margin] = (wrapped[margin] * (1 - fade) + 255 * fade).astype(np.uint8)
    return wrapped


class PygameWindow:
    """A window that shows numpy frames; opened lazily so that importing needs no display."""

    def __init__(self, title: str = "IDP", fps: int = 8):
        self.title, self.fps = title, fps
        self._screen = None
        self._clock = None

    def show(self, frame: np.ndarray) -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        if self._screen is None:
            pygame.display.init()  # display only: the audio mixer would probe sound cards
            pygame.display.set_caption(self.title)
            self._screen = pygame.display.set_mode((frame.shape[1], frame.shape[0]))
            self._clock = pygame.time.Clock()
        pygame.event.pump()
        surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self._screen.blit(surface, (0, 0))
        pygame.display.flip()
        self._clock.tick(self.fps)

    def close(self) -> None:
        if self._screen is not None:
            import pygame

            pygame.display.quit()
            self._screen = None
