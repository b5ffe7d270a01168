"""Render an episode to frames and save them as a GIF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from idp_envs.files import atomic_write


def record_episode(env, policy, seed: int | None = None, overlay: Callable | None = None, options=None) -> list:
    """Play one episode with ``policy.predict`` in an env made with ``render_mode="rgb_array"``; return its frames.

    ``overlay(obs) -> (value (H, W) or None, policy (H, W) or (4, H, W) or None)`` is drawn on every frame
    through the env's ``set_overlay``, e.g. a planner's value map.
    """
    obs, _ = env.reset(seed=seed, options=options)
    inner = env.unwrapped
    if overlay is not None:
        inner.set_overlay(*overlay(obs))
    frames, done = [env.render()], False
    while not done:
        action, _ = policy.predict(obs, deterministic=True)
        obs, _, terminated, truncated, _ = env.step(int(np.asarray(action).reshape(-1)[0]))
        frames.append(env.render())
        done = terminated or truncated
    return frames


def save_gif(frames: list[np.ndarray], path: str | Path, fps: int = 8) -> Path:
    """Write frames as a looping GIF, atomically."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to save")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    path = Path(path)
    with atomic_write(path) as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
